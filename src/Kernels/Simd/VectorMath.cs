using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Kernels.Simd;

/// <summary>
/// AVX-512 forms of the elementwise functions of the hot paths (exp for softmax, GELU-tanh, SiLU, adds), compiled fully
/// optimised on first call. Each is checked against <see cref="ScalarMath"/> through the op grid (values, NaN, ±inf).
/// GELU (tanh form) is computed as x · sigmoid(2u), u = √(2/π)(x + 0.044715 x³), which equals 0.5 x (1 + tanh u).
/// </summary>
internal static unsafe class VectorMath
{
    public static bool Supported => Vector512.IsHardwareAccelerated;

    /// <summary>
    /// e^x to about 2 ulp: k = round(x log2 e), r = x − k ln 2 (two-part ln 2), e^r by its degree-6 Taylor polynomial
    /// (|r| ≤ ln2/2: truncation below 1.3e-7 relative), times 2^k built in the exponent field (done in two halves so
    /// that k = 128 and subnormal results come out right). Inputs past ±88.7 saturate to inf / 0; NaN stays NaN.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Exp(Vector512<float> x)
    {
        var xc = Vector512.Min(Vector512.Max(x, Vector512.Create(-104f)), Vector512.Create(89f));
        var k = Vector512.Round(xc * Vector512.Create(1.44269504088896341f));
        var r = Vector512.FusedMultiplyAdd(k, Vector512.Create(-0.693359375f), xc);
        r = Vector512.FusedMultiplyAdd(k, Vector512.Create(2.12194440e-4f), r);
        var p = Vector512.Create(1.0f / 720);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.0f / 120));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.0f / 24));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(1.0f / 6));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512.Create(0.5f));
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        p = Vector512.FusedMultiplyAdd(p, r, Vector512<float>.One);
        // 2^k = 2^(k/2 rounded down) · 2^(the rest): each factor stays a normal float for k in [-151, 128].
        var ki = Vector512.ConvertToInt32(k);
        var k1 = Vector512.ShiftRightArithmetic(ki, 1);
        var k2 = ki - k1;
        var s1 = Vector512.ShiftLeft(k1 + Vector512.Create(127), 23).AsSingle();
        var s2 = Vector512.ShiftLeft(k2 + Vector512.Create(127), 23).AsSingle();
        var result = p * s1 * s2;
        result = Vector512.ConditionalSelect(Vector512.GreaterThan(x, Vector512.Create(88.72284f)), Vector512.Create(float.PositiveInfinity), result);
        result = Vector512.ConditionalSelect(Vector512.LessThan(x, Vector512.Create(-103.97f)), Vector512<float>.Zero, result);
        return Vector512.ConditionalSelect(Vector512.Equals(x, x), result, x);     // NaN in, NaN out
    }

    /// <summary>x / (1 + e^(−a x)): SiLU for a = 1, the GELU-tanh form via its sigmoid for a = 2 (with u in place of x).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> GeluTanh(Vector512<float> x)
    {
        var x3 = x * x * x;
        var u = Vector512.FusedMultiplyAdd(x3, Vector512.Create((float)ScalarMath.GeluCoeff), x) * Vector512.Create((float)ScalarMath.Sqrt2OverPi);
        return x / (Vector512<float>.One + Exp(u * Vector512.Create(-2f)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Silu(Vector512<float> x) => x / (Vector512<float>.One + Exp(-x));

    /// <summary>dst[i] = act(x[i]) (· up[i] when up is not null) for the kinds with a vector form; false otherwise.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static bool Activation(Engine.Loader.ActivationKind kind, float* x, float* up, float* dst, int n)
    {
        if (kind is not (Engine.Loader.ActivationKind.GeluTanh or Engine.Loader.ActivationKind.Silu)) return false;
        bool gelu = kind == Engine.Loader.ActivationKind.GeluTanh;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var v = Vector512.Load(x + i);
            var a = gelu ? GeluTanh(v) : Silu(v);
            if (up != null) a *= Vector512.Load(up + i);
            Vector512.Store(a, dst + i);
        }
        for (; i < n; i++)
        {
            float a = ScalarMath.Apply(kind, x[i]);
            dst[i] = up != null ? a * up[i] : a;
        }
        return true;
    }

    /// <summary>
    /// Softmax of src[0..n) into dst[0..n) (may alias): max, e^(x − max), sum, × 1/sum... as division, which the
    /// reference does too. dst[n..len) is left to the caller.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Softmax(float* src, float* dst, int n)
    {
        int i = 0;
        var vmax = Vector512.Create(float.NegativeInfinity);
        for (; i + 16 <= n; i += 16) vmax = Vector512.Max(vmax, Vector512.Load(src + i));
        float max = HorizontalMax(vmax);
        for (; i < n; i++) max = MathF.Max(max, src[i]);
        var vm = Vector512.Create(max);
        var vsum = Vector512<float>.Zero;
        i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var e = Exp(Vector512.Load(src + i) - vm);
            Vector512.Store(e, dst + i);
            vsum += e;
        }
        float tail = 0;
        for (; i < n; i++) { float e = MathF.Exp(src[i] - max); dst[i] = e; tail += e; }
        float sum = Vector512.Sum(vsum) + tail;
        var vs = Vector512.Create(sum);
        i = 0;
        for (; i + 16 <= n; i += 16) Vector512.Store(Vector512.Load(dst + i) / vs, dst + i);
        for (; i < n; i++) dst[i] /= sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float HorizontalMax(Vector512<float> v)
    {
        var m256 = Vector256.Max(v.GetLower(), v.GetUpper());
        var m128 = Vector128.Max(m256.GetLower(), m256.GetUpper());
        float a = MathF.Max(m128[0], m128[1]), b = MathF.Max(m128[2], m128[3]);
        return MathF.Max(a, b);
    }

    /// <summary>acc[i] += x[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Add(float* x, float* acc, int n)
    {
        int i = 0;
        for (; i + 16 <= n; i += 16) Vector512.Store(Vector512.Load(acc + i) + Vector512.Load(x + i), acc + i);
        for (; i < n; i++) acc[i] += x[i];
    }
}
