using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Kernels.Simd;

/// <summary>
/// Input-major matrix multiply (W [K, N], GPT-2's Conv1D) for machines with AVX2 + FMA but no AVX-512 (and NativeAOT
/// builds for x86-64-v3): a work item packs a panel of its columns, widened to F32, as strips of 16 columns × K, then
/// computes tiles of 4 rows × 16 columns in registers (8 Vector256 accumulators). Per output element the arithmetic is
/// the one FMA chain over k ascending from 0, then + bias, as in <see cref="Gemm"/>: the result does not depend on the
/// tiling, the thread count or the instruction set.
/// </summary>
internal static unsafe class GemmAvx2
{
    public static bool Supported => Avx2.IsSupported && Fma.IsSupported;
    public const int Strip = 16;

    /// <summary>
    /// y[m, j] for m in [0, rows), j in [j0, j0 + strips·16) from the packed strips (panel: strip s holds W[i, j0 + 16s + c]
    /// at s·K·16 + i·16 + c) and x [rows, K].
    /// </summary>
    public static void Strips(float* x, int rows, int K, float* panel, int strips, float* bias, float* y, long ldy, int j0)
    {
        for (int s = 0; s < strips; s++)
        {
            float* p = panel + (long)s * K * Strip;
            int j = j0 + s * Strip;
            float* b = bias == null ? null : bias + j;
            int m = 0;
            for (; m + 4 <= rows; m += 4) Tile4(x + (long)m * K, K, p, b, y + m * ldy + j, ldy);
            for (; m < rows; m++) Tile1(x + (long)m * K, K, p, b, y + m * ldy + j);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile4(float* x, int K, float* p, float* bias, float* y, long ldy)
    {
        Vector256<float> a00 = default, a01 = default, a10 = default, a11 = default, a20 = default, a21 = default, a30 = default, a31 = default;
        float* x1 = x + K, x2 = x1 + K, x3 = x2 + K;
        for (int i = 0; i < K; i++, p += Strip)
        {
            var w0 = Avx.LoadVector256(p);
            var w1 = Avx.LoadVector256(p + 8);
            var b0 = Vector256.Create(x[i]);
            a00 = Fma.MultiplyAdd(w0, b0, a00); a01 = Fma.MultiplyAdd(w1, b0, a01);
            var b1 = Vector256.Create(x1[i]);
            a10 = Fma.MultiplyAdd(w0, b1, a10); a11 = Fma.MultiplyAdd(w1, b1, a11);
            var b2 = Vector256.Create(x2[i]);
            a20 = Fma.MultiplyAdd(w0, b2, a20); a21 = Fma.MultiplyAdd(w1, b2, a21);
            var b3 = Vector256.Create(x3[i]);
            a30 = Fma.MultiplyAdd(w0, b3, a30); a31 = Fma.MultiplyAdd(w1, b3, a31);
        }
        Store(y, a00, a01, bias);
        Store(y + ldy, a10, a11, bias);
        Store(y + 2 * ldy, a20, a21, bias);
        Store(y + 3 * ldy, a30, a31, bias);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Tile1(float* x, int K, float* p, float* bias, float* y)
    {
        Vector256<float> a0 = default, a1 = default;
        for (int i = 0; i < K; i++, p += Strip)
        {
            var b = Vector256.Create(x[i]);
            a0 = Fma.MultiplyAdd(Avx.LoadVector256(p), b, a0);
            a1 = Fma.MultiplyAdd(Avx.LoadVector256(p + 8), b, a1);
        }
        Store(y, a0, a1, bias);
    }

    /// <summary>
    /// Decode (one row): y[j] for j in [j0, j0 + 64·blocks + 16·strips) straight from W [K, N] (F32, or BF16 when
    /// <paramref name="bf16"/>), row by row in memory order, accumulators in registers; no packing (decode reads each
    /// weight once).
    /// </summary>
    public static void Row(float* x, int K, byte* w, long n, bool bf16, int j0, int blocks, int strips, float* bias, float* y)
    {
        int j = j0;
        for (int b = 0; b < blocks; b++, j += 64) Row64(x, K, w, n, bf16, j, bias, y);
        for (int s = 0; s < strips; s++, j += Strip) Row16(x, K, w, n, bf16, j, bias, y);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Load(byte* w, long index, bool bf16) =>
        bf16 ? Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)w + index), 16).AsSingle()
             : Avx.LoadVector256((float*)w + index);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Row64(float* x, int K, byte* w, long n, bool bf16, int j, float* bias, float* y)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        long at = j;
        for (int i = 0; i < K; i++, at += n)
        {
            var b = Vector256.Create(x[i]);
            a0 = Fma.MultiplyAdd(Load(w, at, bf16), b, a0); a1 = Fma.MultiplyAdd(Load(w, at + 8, bf16), b, a1);
            a2 = Fma.MultiplyAdd(Load(w, at + 16, bf16), b, a2); a3 = Fma.MultiplyAdd(Load(w, at + 24, bf16), b, a3);
            a4 = Fma.MultiplyAdd(Load(w, at + 32, bf16), b, a4); a5 = Fma.MultiplyAdd(Load(w, at + 40, bf16), b, a5);
            a6 = Fma.MultiplyAdd(Load(w, at + 48, bf16), b, a6); a7 = Fma.MultiplyAdd(Load(w, at + 56, bf16), b, a7);
        }
        float* bb = bias == null ? null : bias + j;
        Store(y + j, a0, a1, bb);
        Store(y + j + 16, a2, a3, bb == null ? null : bb + 16);
        Store(y + j + 32, a4, a5, bb == null ? null : bb + 32);
        Store(y + j + 48, a6, a7, bb == null ? null : bb + 48);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Row16(float* x, int K, byte* w, long n, bool bf16, int j, float* bias, float* y)
    {
        Vector256<float> a0 = default, a1 = default;
        long at = j;
        for (int i = 0; i < K; i++, at += n)
        {
            var b = Vector256.Create(x[i]);
            a0 = Fma.MultiplyAdd(Load(w, at, bf16), b, a0);
            a1 = Fma.MultiplyAdd(Load(w, at + 8, bf16), b, a1);
        }
        Store(y + j, a0, a1, bias == null ? null : bias + j);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store(float* y, Vector256<float> lo, Vector256<float> hi, float* bias)
    {
        if (bias != null)
        {
            lo = Avx.Add(lo, Avx.LoadVector256(bias));
            hi = Avx.Add(hi, Avx.LoadVector256(bias + 8));
        }
        Avx.Store(y, lo);
        Avx.Store(y + 8, hi);
    }
}
