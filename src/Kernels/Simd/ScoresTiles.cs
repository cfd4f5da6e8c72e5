using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Kernels.Simd;

/// <summary>
/// Attention scores S = Q Kᵀ for many query rows (prefill), AVX-512, keys read in place from the KV cache: tiles of
/// 4 query rows × 4 keys, 16 accumulators over the head dimension in steps of 16, then one transposing reduction that
/// folds the 16 accumulators into one vector of the 16 dot products (4 adds and 8 shuffles per level, 4 levels: 45
/// operations instead of 16 separate lane sums of about 8 each; the lane sums were most of the prefill attention's time).
/// Per element: 16 lanes of FMAs over d ascending, then the same pairwise tree over lanes (lane i + lane i + 8, then
/// + 4, + 2, + 1 in the order below). Rows and keys past the last whole tile, and head dimensions that are not a multiple
/// of 16, go through the dot form of Gemm.OutMajor.
/// </summary>
internal static unsafe class ScoresTiles
{
    /// <summary>sc[r * ldS + j] = q[r] · k[j] for r &lt; rows, j &lt; keys; q rows ldq floats apart, k rows ldk floats apart.</summary>
    public static void Compute(float* q, long ldq, int rows, int d, float* k, long ldk, int keys, float* sc, long ldS)
    {
        if (!Avx512F.IsSupported || d % 16 != 0)
        {
            Gemm.OutMajor<F32Load>(q, ldq, rows, d, (byte*)k, ldk * sizeof(float), null, sc, ldS, 0, keys);
            return;
        }
        int r4 = rows & ~3, k4 = keys & ~3;
        for (int r = 0; r < r4; r += 4)
        {
            for (int j = 0; j < k4; j += 4) Tile4x4(q + r * ldq, ldq, d, k + j * ldk, ldk, sc + r * ldS + j, ldS);
            if (k4 < keys) Gemm.OutMajor<F32Load>(q + r * ldq, ldq, 4, d, (byte*)k, ldk * sizeof(float), null, sc + r * ldS, ldS, k4, keys);
        }
        if (r4 < rows) Gemm.OutMajor<F32Load>(q + r4 * ldq, ldq, rows - r4, d, (byte*)k, ldk * sizeof(float), null, sc + r4 * ldS, ldS, 0, keys);
    }

    /// <summary>Accumulator a[4j + t] holds row t · key j; after <see cref="Reduce16"/> lane 4t + j is that dot product.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile4x4(float* q, long ldq, int d, float* k, long ldk, float* sc, long ldS)
    {
        float* q0 = q, q1 = q + ldq, q2 = q + 2 * ldq, q3 = q + 3 * ldq;
        float* k0 = k, k1 = k + ldk, k2 = k + 2 * ldk, k3 = k + 3 * ldk;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> a8 = default, a9 = default, a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
        for (int i = 0; i < d; i += 16)
        {
            var x0 = Vector512.Load(q0 + i); var x1 = Vector512.Load(q1 + i);
            var x2 = Vector512.Load(q2 + i); var x3 = Vector512.Load(q3 + i);
            var y = Vector512.Load(k0 + i);
            a0 = Vector512.FusedMultiplyAdd(x0, y, a0); a1 = Vector512.FusedMultiplyAdd(x1, y, a1);
            a2 = Vector512.FusedMultiplyAdd(x2, y, a2); a3 = Vector512.FusedMultiplyAdd(x3, y, a3);
            y = Vector512.Load(k1 + i);
            a4 = Vector512.FusedMultiplyAdd(x0, y, a4); a5 = Vector512.FusedMultiplyAdd(x1, y, a5);
            a6 = Vector512.FusedMultiplyAdd(x2, y, a6); a7 = Vector512.FusedMultiplyAdd(x3, y, a7);
            y = Vector512.Load(k2 + i);
            a8 = Vector512.FusedMultiplyAdd(x0, y, a8); a9 = Vector512.FusedMultiplyAdd(x1, y, a9);
            a10 = Vector512.FusedMultiplyAdd(x2, y, a10); a11 = Vector512.FusedMultiplyAdd(x3, y, a11);
            y = Vector512.Load(k3 + i);
            a12 = Vector512.FusedMultiplyAdd(x0, y, a12); a13 = Vector512.FusedMultiplyAdd(x1, y, a13);
            a14 = Vector512.FusedMultiplyAdd(x2, y, a14); a15 = Vector512.FusedMultiplyAdd(x3, y, a15);
        }
        var e = Reduce16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15);
        Avx512F.ExtractVector128(e, 0).Store(sc);
        Avx512F.ExtractVector128(e, 1).Store(sc + ldS);
        Avx512F.ExtractVector128(e, 2).Store(sc + 2 * ldS);
        Avx512F.ExtractVector128(e, 3).Store(sc + 3 * ldS);
    }

    /// <summary>
    /// Lane 4t + j of the result = the lane sum of a[4j + t]. Level 1 adds each vector's upper 256 bits to its lower
    /// (two vectors per result), level 2 the odd 128-bit quarters to the even ones (four per result), levels 3 and 4 the
    /// odd elements of each 128-bit quarter to the even ones.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Reduce16(
        Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> a4, Vector512<float> a5, Vector512<float> a6, Vector512<float> a7,
        Vector512<float> a8, Vector512<float> a9, Vector512<float> a10, Vector512<float> a11,
        Vector512<float> a12, Vector512<float> a13, Vector512<float> a14, Vector512<float> a15)
    {
        var b0 = Halves(a0, a1); var b1 = Halves(a2, a3); var b2 = Halves(a4, a5); var b3 = Halves(a6, a7);
        var b4 = Halves(a8, a9); var b5 = Halves(a10, a11); var b6 = Halves(a12, a13); var b7 = Halves(a14, a15);
        var c0 = Quarters(b0, b1); var c1 = Quarters(b2, b3); var c2 = Quarters(b4, b5); var c3 = Quarters(b6, b7);
        var d0 = Pairs(c0, c1); var d1 = Pairs(c2, c3);
        return Pairs(d0, d1);
    }

    /// <summary>[u.lo256 + u.hi256, v.lo256 + v.hi256].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Halves(Vector512<float> u, Vector512<float> v) =>
        Avx512F.Shuffle4x128(u, v, 0x44) + Avx512F.Shuffle4x128(u, v, 0xEE);

    /// <summary>128-bit quarters [u.q0 + u.q1, u.q2 + u.q3, v.q0 + v.q1, v.q2 + v.q3].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Quarters(Vector512<float> u, Vector512<float> v) =>
        Avx512F.Shuffle4x128(u, v, 0x88) + Avx512F.Shuffle4x128(u, v, 0xDD);

    /// <summary>Per 128-bit quarter: [u0 + u1, u2 + u3, v0 + v1, v2 + v3].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Pairs(Vector512<float> u, Vector512<float> v) =>
        Avx512F.Shuffle(u, v, 0x88) + Avx512F.Shuffle(u, v, 0xDD);
}
