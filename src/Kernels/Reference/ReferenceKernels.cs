using Engine.Loader;

namespace Engine.Kernels.Reference;

/// <summary>
/// "cpu-ref": the oracle of every other backend. Scalar loops, one thread, double accumulation,
/// nonlinearities in double; only the stored results are rounded to float. Written to be obviously correct, not fast.
/// </summary>
public sealed class ReferenceKernels : IKernels
{
    public string Name => "cpu-ref";

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        int d = (int)table.Shape[1];
        for (int t = 0; t < ids.Length; t++)
            for (int i = 0; i < d; i++)
                dst[t * d + i] = table.Get((long)ids[t] * d + i);
    }

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        int n = w.Out, k = w.In;
        var wv = w.W;
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < n; o++)
            {
                double acc = w.Bias != null ? w.Bias[o] : 0.0;
                for (int i = 0; i < k; i++)
                {
                    long idx = w.InputMajor ? (long)i * n + o : (long)o * k + i;
                    acc += (double)x[r * k + i] * wv.Get(idx);
                }
                y[r * n + o] = (float)acc;
            }
    }

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * dim, dim);
            double mean = 0;
            for (int i = 0; i < dim; i++) mean += row[i];
            mean /= dim;
            double var = 0;
            for (int i = 0; i < dim; i++) { double c = row[i] - mean; var += c * c; }
            var /= dim;
            double s = Math.Sqrt(var + eps);
            scale[r] = (float)s;
            for (int i = 0; i < dim; i++)
                y[r * dim + i] = (float)((row[i] - mean) / s * weight[i] + (bias.IsEmpty ? 0.0 : bias[i]));
        }
    }

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
    {
        for (int r = 0; r < rows; r++)
        {
            var row = x.Slice(r * dim, dim);
            double ms = 0;
            for (int i = 0; i < dim; i++) ms += (double)row[i] * row[i];
            ms /= dim;
            double s = Math.Sqrt(ms + eps);
            scale[r] = (float)s;
            for (int i = 0; i < dim; i++)
                y[r * dim + i] = (float)(row[i] / s * ((double)weightOffset + weight[i]));
        }
    }

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        int half = rope.RotaryDim / 2;
        for (int t = 0; t < rows; t++)
        {
            int p = pos0 + t;
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((t * heads + h) * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    double a = p * rope.InverseFrequencies[i];
                    double c = Math.Cos(a), s = Math.Sin(a);
                    double x1 = v[i], x2 = v[i + half];
                    v[i] = (float)(x1 * c - x2 * s);
                    v[i + half] = (float)(x2 * c + x1 * s);
                }
            }
        }
    }

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores)
    {
        int d = s.HeadDim, tk = s.Keys;
        for (int h = 0; h < s.Heads; h++)
            for (int t = 0; t < s.Rows; t++)
            {
                int kvh = h / s.Group;
                var dst = scores.Slice((h * s.Rows + t) * tk, tk);
                for (int j = 0; j < tk; j++)
                {
                    if (j > s.Pos0 + t) { dst[j] = float.NegativeInfinity; continue; }
                    double acc = 0;
                    for (int i = 0; i < d; i++) acc += (double)q[(t * s.Heads + h) * d + i] * k[(j * s.KvHeads + kvh) * d + i];
                    dst[j] = (float)(acc * s.Scale);
                }
            }
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern)
    {
        int tk = s.Keys;
        for (int h = 0; h < s.Heads; h++)
            for (int t = 0; t < s.Rows; t++)
            {
                int off = (h * s.Rows + t) * tk, n = s.Pos0 + t + 1;
                double max = double.NegativeInfinity;
                for (int j = 0; j < n; j++) max = Math.Max(max, scores[off + j]);
                double sum = 0;
                for (int j = 0; j < n; j++) sum += Math.Exp(scores[off + j] - max);
                for (int j = 0; j < tk; j++) pattern[off + j] = j < n ? (float)(Math.Exp(scores[off + j] - max) / sum) : 0f;
            }
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        int d = s.HeadDim, tk = s.Keys;
        for (int t = 0; t < s.Rows; t++)
            for (int h = 0; h < s.Heads; h++)
            {
                int kvh = h / s.Group, n = s.Pos0 + t + 1, off = (h * s.Rows + t) * tk;
                for (int i = 0; i < d; i++)
                {
                    double acc = 0;
                    for (int j = 0; j < n; j++) acc += (double)pattern[off + j] * v[(j * s.KvHeads + kvh) * d + i];
                    z[(t * s.Heads + h) * d + i] = (float)acc;
                }
            }
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        // The reference simply materialises: that is the definition the fused paths of other backends must match.
        var scores = new float[s.Heads * s.Rows * s.Keys];
        var pattern = new float[scores.Length];
        AttentionScores(q, k, s, scores);
        AttentionSoftmax(scores, s, pattern);
        AttentionMix(pattern, v, s, z);
    }

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = (float)ScalarMath.Apply(kind, (double)x[i]);
    }

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        for (int i = 0; i < gate.Length; i++) y[i] = (float)(ScalarMath.Apply(kind, (double)gate[i]) * up[i]);
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        for (int i = 0; i < x.Length; i++) acc[i] = (float)((double)acc[i] + x[i]);
    }

    public void ScaleInPlace(Span<float> x, float s)
    {
        for (int i = 0; i < x.Length; i++) x[i] = (float)((double)x[i] * s);
    }
}
