using System.Numerics;
using System.Numerics.Tensors;
using Engine.Kernels;
using Engine.Loader;

namespace Engine.Training;

/// <summary>
/// Forward and backward of every op of the transformer, in any precision (float for training, double for the
/// reference gradient checks). Row-major spans; a backward adds into its input gradients (so several consumers of one
/// tensor can each add their share) unless said otherwise. Reductions over rows (norm weight gradients) run in a fixed
/// order, so results never depend on the thread count.
/// </summary>
public static class Ops<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    static T C(double v) => T.CreateTruncating(v);
    static double D(T v) => double.CreateTruncating(v);

    // ------------------------------------------------------------------ norms

    /// <summary>LayerNorm per row: xhat = (x − mean)·rstd, rstd = 1/sqrt(biased var + eps); y = xhat·w + b.</summary>
    public static void LayerNorm(ReadOnlySpan<T> x, int rows, int dim, ReadOnlySpan<T> w, ReadOnlySpan<T> b, double eps, Span<T> y, Span<T> xhat, Span<T> rstd)
    {
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * dim, dim);
            double mean = 0;
            for (int i = 0; i < dim; i++) mean += D(xr[i]);
            mean /= dim;
            double var = 0;
            for (int i = 0; i < dim; i++) { double c = D(xr[i]) - mean; var += c * c; }
            var /= dim;
            double rs = 1.0 / Math.Sqrt(var + eps);
            rstd[r] = C(rs);
            var xh = xhat.Slice(r * dim, dim);
            var yr = y.Slice(r * dim, dim);
            for (int i = 0; i < dim; i++)
            {
                xh[i] = C((D(xr[i]) - mean) * rs);
                yr[i] = xh[i] * w[i] + (b.Length > 0 ? b[i] : T.Zero);
            }
        }
    }

    /// <summary>dx += rstd·(g − mean g − xhat·mean(g·xhat)) with g = dy·w; dw += Σ dy·xhat; db += Σ dy (when not empty).</summary>
    public static void LayerNormBackward(ReadOnlySpan<T> dy, ReadOnlySpan<T> xhat, ReadOnlySpan<T> rstd, int rows, int dim, ReadOnlySpan<T> w,
                                        Span<T> dx, Span<T> dw, Span<T> db)
    {
        for (int r = 0; r < rows; r++)
        {
            var dyr = dy.Slice(r * dim, dim);
            var xh = xhat.Slice(r * dim, dim);
            double mg = 0, mgx = 0;
            for (int i = 0; i < dim; i++) { double g = D(dyr[i] * w[i]); mg += g; mgx += g * D(xh[i]); }
            mg /= dim; mgx /= dim;
            double rs = D(rstd[r]);
            var dxr = dx.Slice(r * dim, dim);
            for (int i = 0; i < dim; i++)
                dxr[i] += C(rs * (D(dyr[i] * w[i]) - mg - D(xh[i]) * mgx));
            if (dw.Length > 0)
                for (int i = 0; i < dim; i++) dw[i] += dyr[i] * xh[i];
            if (db.Length > 0)
                for (int i = 0; i < dim; i++) db[i] += dyr[i];
        }
    }

    /// <summary>RMSNorm per row: xhat = x·rstd, rstd = 1/sqrt(mean(x²) + eps); y = xhat·(offset + w).</summary>
    public static void RmsNorm(ReadOnlySpan<T> x, int rows, int dim, ReadOnlySpan<T> w, double offset, double eps, Span<T> y, Span<T> xhat, Span<T> rstd)
    {
        T off = C(offset);
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * dim, dim);
            double ss = 0;
            for (int i = 0; i < dim; i++) { double v = D(xr[i]); ss += v * v; }
            double rs = 1.0 / Math.Sqrt(ss / dim + eps);
            rstd[r] = C(rs);
            var xh = xhat.Slice(r * dim, dim);
            var yr = y.Slice(r * dim, dim);
            for (int i = 0; i < dim; i++)
            {
                xh[i] = C(D(xr[i]) * rs);
                yr[i] = xh[i] * (off + w[i]);
            }
        }
    }

    /// <summary>dx += rstd·(g − xhat·mean(g·xhat)) with g = dy·(offset + w); dw += Σ dy·xhat.</summary>
    public static void RmsNormBackward(ReadOnlySpan<T> dy, ReadOnlySpan<T> xhat, ReadOnlySpan<T> rstd, int rows, int dim, ReadOnlySpan<T> w, double offset,
                                      Span<T> dx, Span<T> dw)
    {
        T off = C(offset);
        for (int r = 0; r < rows; r++)
        {
            var dyr = dy.Slice(r * dim, dim);
            var xh = xhat.Slice(r * dim, dim);
            double mgx = 0;
            for (int i = 0; i < dim; i++) mgx += D(dyr[i] * (off + w[i])) * D(xh[i]);
            mgx /= dim;
            double rs = D(rstd[r]);
            var dxr = dx.Slice(r * dim, dim);
            for (int i = 0; i < dim; i++)
                dxr[i] += C(rs * (D(dyr[i] * (off + w[i])) - D(xh[i]) * mgx));
            if (dw.Length > 0)
                for (int i = 0; i < dim; i++) dw[i] += dyr[i] * xh[i];
        }
    }

    // ------------------------------------------------------------------ rotary positions

    /// <summary>
    /// rotate_half RoPE in place on x [rows, heads, headDim], row r at position r mod seqLen; pairs (i, i + rot/2).
    /// cos/sin [positions, rot/2]. <paramref name="inverse"/> applies the transpose rotation (the backward).
    /// </summary>
    public static void Rope(Span<T> x, int rows, int heads, int headDim, int rotaryDim, int seqLen, ReadOnlySpan<T> cos, ReadOnlySpan<T> sin, bool inverse)
    {
        int half = rotaryDim / 2;
        for (int r = 0; r < rows; r++)
        {
            int p = r % seqLen;
            var c = cos.Slice(p * half, half);
            var s = sin.Slice(p * half, half);
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((r * heads + h) * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    T a = v[i], b = v[i + half];
                    if (!inverse) { v[i] = a * c[i] - b * s[i]; v[i + half] = b * c[i] + a * s[i]; }
                    else { v[i] = a * c[i] + b * s[i]; v[i + half] = b * c[i] - a * s[i]; }
                }
            }
        }
    }

    // ------------------------------------------------------------------ attention

    /// <summary>
    /// Causal attention of one sequence and one query head h (KV head h / group): q [S, H, d], k/v [S, K, d] (rows of
    /// this sequence), pattern [S, S] (this head's map; 0 above the diagonal), z [S, H, d].
    /// </summary>
    public static void AttentionHead(ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, int seqLen, int heads, int kvHeads, int headDim, int h, double scale,
                                     Span<T> pattern, Span<T> z)
    {
        int kvh = h / (heads / kvHeads);
        int qs = heads * headDim, ks = kvHeads * headDim;
        T sc = C(scale);
        for (int i = 0; i < seqLen; i++)
        {
            var qi = q.Slice(i * qs + h * headDim, headDim);
            var prow = pattern.Slice(i * seqLen, seqLen);
            T max = T.NegativeInfinity;
            for (int j = 0; j <= i; j++)
            {
                T sv = TensorPrimitives.Dot(qi, k.Slice(j * ks + kvh * headDim, headDim)) * sc;
                prow[j] = sv;
                if (sv > max) max = sv;
            }
            T sum = T.Zero;
            for (int j = 0; j <= i; j++) { T e = T.Exp(prow[j] - max); prow[j] = e; sum += e; }
            T inv = T.One / sum;
            for (int j = 0; j <= i; j++) prow[j] *= inv;
            prow[(i + 1)..].Clear();
            var zi = z.Slice(i * qs + h * headDim, headDim);
            zi.Clear();
            for (int j = 0; j <= i; j++) TensorPrimitives.MultiplyAdd(v.Slice(j * ks + kvh * headDim, headDim), prow[j], zi, zi);
        }
    }

    /// <summary>z[i, h] = Σ_j pattern[i, j]·v[j, h / group] for one sequence and head (all j, as the pattern gives them).</summary>
    public static void AttentionMix(ReadOnlySpan<T> pattern, ReadOnlySpan<T> v, int seqLen, int heads, int kvHeads, int headDim, int h, Span<T> z)
    {
        int kvh = h / (heads / kvHeads);
        int qs = heads * headDim, ks = kvHeads * headDim;
        for (int i = 0; i < seqLen; i++)
        {
            var zi = z.Slice(i * qs + h * headDim, headDim);
            zi.Clear();
            for (int j = 0; j < seqLen; j++)
            {
                T p = pattern[i * seqLen + j];
                if (p != T.Zero) TensorPrimitives.MultiplyAdd(v.Slice(j * ks + kvh * headDim, headDim), p, zi, zi);
            }
        }
    }

    /// <summary>
    /// Backward of <see cref="AttentionHead"/> for head h: dq (this head's columns) += ; dk, dv (its KV head's columns) +=.
    /// dPattern [S, S] receives ∂/∂pattern (scratch, overwritten). Rows past the diagonal are 0.
    /// </summary>
    public static void AttentionHeadBackward(ReadOnlySpan<T> q, ReadOnlySpan<T> k, ReadOnlySpan<T> v, ReadOnlySpan<T> pattern, ReadOnlySpan<T> dz,
                                             int seqLen, int heads, int kvHeads, int headDim, int h, double scale,
                                             Span<T> dq, Span<T> dk, Span<T> dv, Span<T> dPattern)
    {
        int kvh = h / (heads / kvHeads);
        int qs = heads * headDim, ks = kvHeads * headDim;
        T sc = C(scale);
        for (int i = 0; i < seqLen; i++)
        {
            var dzi = dz.Slice(i * qs + h * headDim, headDim);
            var prow = pattern.Slice(i * seqLen, seqLen);
            var dprow = dPattern.Slice(i * seqLen, seqLen);
            T dot = T.Zero;
            for (int j = 0; j <= i; j++)
            {
                T dp = TensorPrimitives.Dot(dzi, v.Slice(j * ks + kvh * headDim, headDim));
                dprow[j] = dp;
                dot += dp * prow[j];
                var dvj = dv.Slice(j * ks + kvh * headDim, headDim);
                TensorPrimitives.MultiplyAdd(dzi, prow[j], dvj, dvj);
            }
            dprow[(i + 1)..].Clear();
            var qi = q.Slice(i * qs + h * headDim, headDim);
            var dqi = dq.Slice(i * qs + h * headDim, headDim);
            for (int j = 0; j <= i; j++)
            {
                T ds = prow[j] * (dprow[j] - dot) * sc;     // d score (before the scale) · scale
                if (ds == T.Zero) continue;
                TensorPrimitives.MultiplyAdd(k.Slice(j * ks + kvh * headDim, headDim), ds, dqi, dqi);
                var dkj = dk.Slice(j * ks + kvh * headDim, headDim);
                TensorPrimitives.MultiplyAdd(qi, ds, dkj, dkj);
            }
        }
    }

    // ------------------------------------------------------------------ activations

    /// <summary>act(x) and act'(x) in double (ScalarMath's definitions).</summary>
    public static (double Y, double Dy) Act(ActivationKind kind, double x)
    {
        switch (kind)
        {
            case ActivationKind.GeluTanh:
            {
                double u = ScalarMath.Sqrt2OverPi * (x + ScalarMath.GeluCoeff * x * x * x);
                double t = Math.Tanh(u);
                double du = ScalarMath.Sqrt2OverPi * (1 + 3 * ScalarMath.GeluCoeff * x * x);
                return (0.5 * x * (1 + t), 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du);
            }
            case ActivationKind.GeluErf:
            {
                double cdf = 0.5 * (1 + ScalarMath.Erf(x * ScalarMath.InvSqrt2));
                double pdf = Math.Exp(-0.5 * x * x) * 0.3989422804014327;
                return (x * cdf, cdf + x * pdf);
            }
            case ActivationKind.Silu:
            {
                double s = 1 / (1 + Math.Exp(-x));
                return (x * s, s * (1 + x * (1 - s)));
            }
            case ActivationKind.Relu:
                return (x > 0 ? x : 0, x > 0 ? 1 : 0);
            case ActivationKind.QuickGelu:
            {
                double s = 1 / (1 + Math.Exp(-1.702 * x));
                return (x * s, s + 1.702 * x * s * (1 - s));
            }
            default: throw new ArgumentOutOfRangeException(nameof(kind));
        }
    }

    /// <summary>y = act(x).</summary>
    public static void Activation(ActivationKind kind, ReadOnlySpan<T> x, Span<T> y)
    {
        if (typeof(T) == typeof(float) && kind is ActivationKind.GeluTanh or ActivationKind.Silu)
        {
            FloatActivation(kind, System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(x), System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(y));
            return;
        }
        for (int i = 0; i < x.Length; i++) y[i] = C(Act(kind, D(x[i])).Y);
    }

    /// <summary>dx += dy·act'(x).</summary>
    public static void ActivationBackward(ActivationKind kind, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++) dx[i] += dy[i] * C(Act(kind, D(x[i])).Dy);
    }

    /// <summary>y = act(gate)·up.</summary>
    public static void Gated(ActivationKind kind, ReadOnlySpan<T> gate, ReadOnlySpan<T> up, Span<T> y)
    {
        Activation(kind, gate, y);
        for (int i = 0; i < y.Length; i++) y[i] *= up[i];
    }

    /// <summary>dgate += dy·up·act'(gate); dup += dy·act(gate).</summary>
    public static void GatedBackward(ActivationKind kind, ReadOnlySpan<T> gate, ReadOnlySpan<T> up, ReadOnlySpan<T> dy, Span<T> dgate, Span<T> dup)
    {
        for (int i = 0; i < gate.Length; i++)
        {
            var (a, da) = Act(kind, D(gate[i]));
            dgate[i] += dy[i] * up[i] * C(da);
            dup[i] += dy[i] * C(a);
        }
    }

    /// <summary>Vectorised float GELU-tanh (as x·sigmoid(2u)) and SiLU for the training forward.</summary>
    static void FloatActivation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        if (kind == ActivationKind.Silu)
        {
            TensorPrimitives.Sigmoid(x, y);
            TensorPrimitives.Multiply(x, y, y);
            return;
        }
        // u = sqrt(2/pi)(x + 0.044715 x^3); gelu = x * sigmoid(2u)
        const int B = 1024;
        Span<float> u = stackalloc float[B];
        for (int s = 0; s < x.Length; s += B)
        {
            int n = Math.Min(B, x.Length - s);
            var xs = x.Slice(s, n); var us = u[..n]; var ys = y.Slice(s, n);
            TensorPrimitives.Multiply(xs, xs, us);
            TensorPrimitives.Multiply(us, (float)ScalarMath.GeluCoeff, us);
            TensorPrimitives.Add(us, 1f, us);
            TensorPrimitives.Multiply(us, xs, us);
            TensorPrimitives.Multiply(us, (float)(2 * ScalarMath.Sqrt2OverPi), us);
            TensorPrimitives.Sigmoid(us, us);
            TensorPrimitives.Multiply(xs, us, ys);
        }
    }

    // ------------------------------------------------------------------ loss

    /// <summary>
    /// Cross-entropy of one row: returns −log softmax(logits)[target] and writes drow = factor·(softmax − onehot).
    /// </summary>
    public static double CrossEntropyRow(ReadOnlySpan<T> logits, int target, double factor, Span<T> drow)
    {
        int vocab = logits.Length;
        double max = double.NegativeInfinity;
        for (int i = 0; i < vocab; i++) max = Math.Max(max, D(logits[i]));
        double sum = 0;
        for (int i = 0; i < vocab; i++) sum += Math.Exp(D(logits[i]) - max);
        double lse = max + Math.Log(sum);
        for (int i = 0; i < vocab; i++) drow[i] = C(factor * Math.Exp(D(logits[i]) - lse));
        drow[target] -= C(factor);
        return lse - D(logits[target]);
    }

    /// <summary>
    /// Weighted mean cross-entropy over rows: loss = Σ_r w_r·(−log softmax(logits_r)[y_r]) / Σ_r w_r (rows with w = 0
    /// or target &lt; 0 are skipped). Writes dlogits = w_r/Σw·(softmax − onehot) (0 on skipped rows). Returns (loss, Σw).
    /// </summary>
    public static (double Loss, double Weight) CrossEntropy(ReadOnlySpan<T> logits, int rows, int vocab, ReadOnlySpan<int> targets, ReadOnlySpan<float> weights, Span<T> dlogits)
    {
        double wsum = 0;
        for (int r = 0; r < rows; r++) if (targets[r] >= 0) wsum += weights.Length > 0 ? weights[r] : 1;
        double loss = 0;
        for (int r = 0; r < rows; r++)
        {
            var dr = dlogits.Slice(r * vocab, vocab);
            double w = targets[r] < 0 ? 0 : weights.Length > 0 ? weights[r] : 1;
            if (w == 0 || wsum == 0) { dr.Clear(); continue; }
            loss += w * CrossEntropyRow(logits.Slice(r * vocab, vocab), targets[r], w / wsum, dr);
        }
        return (wsum > 0 ? loss / wsum : 0, wsum);
    }
}
