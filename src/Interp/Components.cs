using System.Numerics.Tensors;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// Dense access to the weights that the component-level methods need (neuron output vectors, neuron input rows, head
/// output columns), widened to float whatever the stored layout and dtype.
/// </summary>
public static class DenseWeights
{
    /// <summary>W as [Out, In] row-major (row o = the weights producing output o).</summary>
    public static float[] Rows(Linear w)
    {
        var dst = new float[(long)w.Out * w.In];
        if (!w.InputMajor) { w.W.Widen(0, dst); return dst; }
        var stored = new float[w.In];                       // stored [In, Out]: transpose
        var row = new float[w.Out];
        for (int i = 0; i < w.In; i++)
        {
            w.W.Widen((long)i * w.Out, row);
            for (int o = 0; o < w.Out; o++) dst[(long)o * w.In + i] = row[o];
        }
        return dst;
    }

    /// <summary>Wᵀ as [In, Out] row-major (row i = the column of input i: e.g. the output vector of MLP neuron i).</summary>
    public static float[] Columns(Linear w)
    {
        var dst = new float[(long)w.Out * w.In];
        if (w.InputMajor) { w.W.Widen(0, dst); return dst; }
        var row = new float[w.In];
        for (int o = 0; o < w.Out; o++)
        {
            w.W.Widen((long)o * w.In, row);
            for (int i = 0; i < w.In; i++) dst[(long)i * w.Out + o] = row[i];
        }
        return dst;
    }

    /// <summary>Row o of W ([In] values).</summary>
    public static float[] Row(Linear w, int o)
    {
        var dst = new float[w.In];
        if (!w.InputMajor) w.W.Widen((long)o * w.In, dst);
        else for (int i = 0; i < w.In; i++) dst[i] = w.W.Get((long)i * w.Out + o);
        return dst;
    }

    /// <summary>
    /// Each head's output at one position: head[h] = z[h, :] @ W_O[:, h·d:(h+1)·d]ᵀ (no bias), in double. <paramref name="oColumns"/>
    /// is <see cref="Columns"/> of W_O ([H·d, D]).
    /// </summary>
    public static double[][] HeadVectors(ReadOnlySpan<float> zRow, float[] oColumns, int heads, int headDim, int dModel)
    {
        var r = new double[heads][];
        for (int h = 0; h < heads; h++)
        {
            var v = r[h] = new double[dModel];
            for (int j = 0; j < headDim; j++)
            {
                double zj = zRow[h * headDim + j];
                if (zj == 0) continue;
                var col = oColumns.AsSpan((h * headDim + j) * dModel, dModel);
                for (int i = 0; i < dModel; i++) v[i] += zj * col[i];
            }
        }
        return r;
    }

    public static double[] ToDouble(ReadOnlySpan<float> x)
    {
        var r = new double[x.Length];
        for (int i = 0; i < x.Length; i++) r[i] = x[i];
        return r;
    }

    public static double Dot(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }
}

/// <summary>
/// The final norm with its scale FROZEN to one real run's value s (SPEC DLA and neuron attribution): a linear map
/// f(x) = (x − mean x)/s · w (LayerNorm), x/s · w (RMSNorm), x/s · (1 + w) (Gemma), without the bias. Logits of a residual
/// vector through it are unembed(f(x)) (+ unembed(b) when asked).
/// </summary>
public sealed class FrozenFinalNorm
{
    readonly Session _session;
    public int DModel { get; }
    /// <summary>The frozen scale s = ln_final.hook_scale of the real run at the chosen position.</summary>
    public double Scale { get; }
    /// <summary>LayerNorm centres its input; RMSNorm does not.</summary>
    public bool Centered { get; }
    /// <summary>The effective per-dimension weight (offset + w).</summary>
    public double[] Weight { get; }
    public float[]? Bias { get; }

    public FrozenFinalNorm(Session session, double scale)
    {
        _session = session;
        var c = session.Config;
        DModel = c.DModel;
        Scale = scale;
        Centered = c.Norm == NormKind.LayerNorm;
        var w = session.Model.Weights.FinalNormWeight;
        Weight = new double[DModel];
        for (int i = 0; i < DModel; i++) Weight[i] = c.NormWeightOffset + (double)w[i];
        Bias = session.Model.Weights.FinalNormBias;
    }

    /// <summary>y = f(x), in double.</summary>
    public void Apply(ReadOnlySpan<double> x, Span<double> y)
    {
        double mean = 0;
        if (Centered) { for (int i = 0; i < DModel; i++) mean += x[i]; mean /= DModel; }
        for (int i = 0; i < DModel; i++) y[i] = (x[i] - mean) / Scale * Weight[i];
    }

    /// <summary>The linear functional x ↦ f(x)·u as a vector g with f(x)·u = x·g (centring folded in).</summary>
    public double[] Functional(ReadOnlySpan<double> u)
    {
        var g = new double[DModel];
        double sum = 0;
        for (int i = 0; i < DModel; i++) { g[i] = Weight[i] * u[i] / Scale; sum += g[i]; }
        if (Centered) for (int i = 0; i < DModel; i++) g[i] -= sum / DModel;
        return g;
    }

    /// <summary>b·u: the final-norm bias's constant contribution to a logit (0 without a bias).</summary>
    public double BiasTerm(ReadOnlySpan<double> u)
    {
        if (Bias == null) return 0;
        double s = 0;
        for (int i = 0; i < DModel; i++) s += Bias[i] * u[i];
        return s;
    }

    /// <summary>Full-vocabulary logits unembed(f(x)) (+ the bias term when <paramref name="withBias"/>), in double.</summary>
    public double[] Logits(ReadOnlySpan<double> x, bool withBias = false)
    {
        var y = new double[DModel];
        Apply(x, y);
        if (withBias && Bias != null) for (int i = 0; i < DModel; i++) y[i] += Bias[i];
        var u = _session.Model.Weights.Unembed;
        int V = u.Out;
        var logits = new double[V];
        var row = new float[DModel];
        for (int v = 0; v < V; v++)
        {
            if (!u.InputMajor) u.W.Widen((long)v * DModel, row);
            else for (int i = 0; i < DModel; i++) row[i] = u.W.Get((long)i * V + v);
            double acc = 0;
            for (int i = 0; i < DModel; i++) acc += row[i] * y[i];
            logits[v] = acc;
        }
        return logits;
    }

    /// <summary>
    /// unembed(f(row)) for n rows [n, D] at once (float, through the session's matmul kernel): logits [n, V].
    /// </summary>
    public void BatchLogits(ReadOnlySpan<float> rows, int n, Span<float> logits)
    {
        var y = new float[n * DModel];
        var x = new double[DModel];
        var fy = new double[DModel];
        for (int r = 0; r < n; r++)
        {
            for (int i = 0; i < DModel; i++) x[i] = rows[r * DModel + i];
            Apply(x, fy);
            for (int i = 0; i < DModel; i++) y[r * DModel + i] = (float)fy[i];
        }
        _session.Kernels.MatMul(y, n, _session.Model.Weights.Unembed, logits[..(n * _session.Config.VocabSize)]);
    }
}

/// <summary>
/// Yu &amp; Ananiadou's importance of a vector v added to a residual state h, for a target token w:
/// Imp(v) = log p(w | v + h) − log p(w | h), p(·|x) = softmax(unembed(f(x))) with <see cref="FrozenFinalNorm"/> f (no bias).
/// Uses linearity: logits(h + v) = logits(h) + unembed(f(v)), so a zero vector has importance exactly 0.
/// </summary>
public sealed class LogProbIncrease
{
    readonly FrozenFinalNorm _norm;
    readonly double[] _base;
    readonly int _target;
    public double BaseLogProb { get; }

    public LogProbIncrease(FrozenFinalNorm norm, ReadOnlySpan<double> h, int target)
    {
        _norm = norm;
        _target = target;
        _base = norm.Logits(h);
        BaseLogProb = LogProb(_base, ReadOnlySpan<float>.Empty, target);
    }

    /// <summary>log softmax(base + delta)[target] in double (delta null = 0).</summary>
    static double LogProb(double[] baseLogits, ReadOnlySpan<float> delta, int target, double[]? buffer = null)
    {
        int V = baseLogits.Length;
        var row = buffer ?? new double[V];
        if (delta.IsEmpty) baseLogits.CopyTo(row, 0);
        else for (int v = 0; v < V; v++) row[v] = baseLogits[v] + delta[v];
        double at = row[target];
        double max = TensorPrimitives.Max(row);
        TensorPrimitives.Subtract(row, max, row);
        TensorPrimitives.Exp(row, row);
        return at - max - Math.Log(TensorPrimitives.Sum(row));
    }

    static double LogProbSum(double[] baseLogits, double[] delta, int target)
    {
        var row = new double[baseLogits.Length];
        for (int v = 0; v < row.Length; v++) row[v] = baseLogits[v] + delta[v];
        double at = row[target];
        double max = TensorPrimitives.Max(row);
        TensorPrimitives.Subtract(row, max, row);
        TensorPrimitives.Exp(row, row);
        return at - max - Math.Log(TensorPrimitives.Sum(row));
    }

    /// <summary>Imp of one vector, computed in double throughout.</summary>
    public double Of(ReadOnlySpan<double> v)
    {
        bool zero = true;
        foreach (var x in v) if (x != 0) { zero = false; break; }
        if (zero) return 0;
        return LogProbSum(_base, _norm.Logits(v), _target) - BaseLogProb;
    }

    /// <summary>Imp of n vectors [n, D] (float rows), in chunks through the matmul kernel. Zero rows give exactly 0.</summary>
    public double[] Of(ReadOnlySpan<float> rows, int n, Action<int, int>? progress = null)
    {
        int D = _norm.DModel, V = _base.Length;
        var result = new double[n];
        int chunk = Math.Max(1, Math.Min(n, (8 << 20) / V));
        var logits = new float[chunk * V];
        var rowsArr = rows.ToArray();
        for (int start = 0; start < n; start += chunk)
        {
            int m = Math.Min(chunk, n - start);
            _norm.BatchLogits(rowsArr.AsSpan(start * D, m * D), m, logits);
            Parallel.For(0, m, () => new double[V], (r, _, buf) =>
            {
                var src = rowsArr.AsSpan((start + r) * D, D);
                bool zero = true;
                foreach (var x in src) if (x != 0) { zero = false; break; }
                result[start + r] = zero ? 0 : LogProb(_base, logits.AsSpan(r * V, V), _target, buf) - BaseLogProb;
                return buf;
            }, _ => { });
            progress?.Invoke(start + m, n);
        }
        return result;
    }
}

/// <summary>A ranked item of a component-level method (a head, a neuron, ...) and its score.</summary>
public sealed record ScoredComponent(string Label, int Layer, int Index, double Score);

public static class Ranking
{
    /// <summary>The n highest scores (descending; ties: lower layer, then lower index).</summary>
    public static List<ScoredComponent> Top(IEnumerable<ScoredComponent> items, int n) =>
        items.Where(x => !double.IsNaN(x.Score)).OrderByDescending(x => x.Score).ThenBy(x => x.Layer).ThenBy(x => x.Index).Take(n).ToList();

    /// <summary>The n lowest scores (ascending).</summary>
    public static List<ScoredComponent> Bottom(IEnumerable<ScoredComponent> items, int n) =>
        items.Where(x => !double.IsNaN(x.Score)).OrderBy(x => x.Score).ThenBy(x => x.Layer).ThenBy(x => x.Index).Take(n).ToList();

    /// <summary>The n largest |score| (descending).</summary>
    public static List<ScoredComponent> TopAbs(IEnumerable<ScoredComponent> items, int n) =>
        items.Where(x => !double.IsNaN(x.Score)).OrderByDescending(x => Math.Abs(x.Score)).ThenBy(x => x.Layer).ThenBy(x => x.Index).Take(n).ToList();
}
