using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Kernels.Simd;

/// <summary>
/// Packed, cache-blocked matrix multiply for many rows (prefill) through out-major weights W [N, K] (nn.Linear), AVX-512,
/// computed as Cᵀ = W xᵀ: vectors = packed panels of xᵀ (32 rows of x, packed once per call), broadcasts = W rows (packed
/// per K block as [kc][12], widened from BF16/F16); one micro-kernel, a tile of 12 outputs × 32 rows (24 accumulators),
/// stored transposed. Both operands contiguous: one pointer each, constant offsets, the xᵀ panel in L1.
/// Per output element the arithmetic is one FMA chain over k ascending starting from 0, then + bias, independent of
/// tiling and thread count. (Input-major weights take the broadcast form of <c>Gemm.InMajor</c> on the weights in place.)
/// </summary>
internal static unsafe class PackedGemm
{
    public const int MR = 12, NR = 32, KC = 256;

    /// <summary>
    /// Rows from which this path is used, for out-major weights only: xᵀ is packed per call, which pays from 256 rows
    /// (measured on the GPT-2-small and SmolLM2 shapes; below that the dot-form kernels of <see cref="Gemm"/> are faster).
    /// Input-major weights never take it: the broadcast form of <see cref="Gemm"/> on the weights in place (6 × 64 tiles, K
    /// blocks of 384) measured 1.2–1.5× faster at every row count from 16 to 768 (2026-12-07, weights from memory).
    /// </summary>
    public const int MinRowsOutMajor = 256;

    public static bool Use(int rows, bool inputMajor) => !inputMajor && rows >= MinRowsOutMajor;

    // ------------------------------------------------------------------ micro-kernel

    /// <summary>
    /// c[i, 0..32) (+)= sum_k ap[k * 12 + i] * bp[k * 32 + 0..32) for i &lt; 12, k &lt; kc.
    /// accumulate: continue from c; bias (when not null, last K block only): added after the chain, per column.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Micro12x32(float* ap, float* bp, int kc, float* c, long ldc, bool accumulate, float* bias)
    {
        Vector512<float> c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71, c80, c81, c90, c91, ca0, ca1, cb0, cb1;
        if (accumulate)
        {
            c00 = Vector512.Load(c); c01 = Vector512.Load(c + 16);
            c10 = Vector512.Load(c + ldc); c11 = Vector512.Load(c + ldc + 16);
            c20 = Vector512.Load(c + 2 * ldc); c21 = Vector512.Load(c + 2 * ldc + 16);
            c30 = Vector512.Load(c + 3 * ldc); c31 = Vector512.Load(c + 3 * ldc + 16);
            c40 = Vector512.Load(c + 4 * ldc); c41 = Vector512.Load(c + 4 * ldc + 16);
            c50 = Vector512.Load(c + 5 * ldc); c51 = Vector512.Load(c + 5 * ldc + 16);
            c60 = Vector512.Load(c + 6 * ldc); c61 = Vector512.Load(c + 6 * ldc + 16);
            c70 = Vector512.Load(c + 7 * ldc); c71 = Vector512.Load(c + 7 * ldc + 16);
            c80 = Vector512.Load(c + 8 * ldc); c81 = Vector512.Load(c + 8 * ldc + 16);
            c90 = Vector512.Load(c + 9 * ldc); c91 = Vector512.Load(c + 9 * ldc + 16);
            ca0 = Vector512.Load(c + 10 * ldc); ca1 = Vector512.Load(c + 10 * ldc + 16);
            cb0 = Vector512.Load(c + 11 * ldc); cb1 = Vector512.Load(c + 11 * ldc + 16);
        }
        else
        {
            c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = default;
            c60 = c61 = c70 = c71 = c80 = c81 = c90 = c91 = ca0 = ca1 = cb0 = cb1 = default;
        }
        float* end = ap + (long)kc * MR;
        for (; ap < end; ap += MR, bp += NR)
        {
            var b0 = Vector512.Load(bp);
            var b1 = Vector512.Load(bp + 16);
            Vector512<float> x;
            x = Vector512.Create(ap[0]); c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(ap[1]); c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(ap[2]); c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(ap[3]); c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
            x = Vector512.Create(ap[4]); c40 = Vector512.FusedMultiplyAdd(x, b0, c40); c41 = Vector512.FusedMultiplyAdd(x, b1, c41);
            x = Vector512.Create(ap[5]); c50 = Vector512.FusedMultiplyAdd(x, b0, c50); c51 = Vector512.FusedMultiplyAdd(x, b1, c51);
            x = Vector512.Create(ap[6]); c60 = Vector512.FusedMultiplyAdd(x, b0, c60); c61 = Vector512.FusedMultiplyAdd(x, b1, c61);
            x = Vector512.Create(ap[7]); c70 = Vector512.FusedMultiplyAdd(x, b0, c70); c71 = Vector512.FusedMultiplyAdd(x, b1, c71);
            x = Vector512.Create(ap[8]); c80 = Vector512.FusedMultiplyAdd(x, b0, c80); c81 = Vector512.FusedMultiplyAdd(x, b1, c81);
            x = Vector512.Create(ap[9]); c90 = Vector512.FusedMultiplyAdd(x, b0, c90); c91 = Vector512.FusedMultiplyAdd(x, b1, c91);
            x = Vector512.Create(ap[10]); ca0 = Vector512.FusedMultiplyAdd(x, b0, ca0); ca1 = Vector512.FusedMultiplyAdd(x, b1, ca1);
            x = Vector512.Create(ap[11]); cb0 = Vector512.FusedMultiplyAdd(x, b0, cb0); cb1 = Vector512.FusedMultiplyAdd(x, b1, cb1);
        }
        if (bias != null)
        {
            var bb0 = Vector512.Load(bias); var bb1 = Vector512.Load(bias + 16);
            c00 += bb0; c01 += bb1; c10 += bb0; c11 += bb1; c20 += bb0; c21 += bb1; c30 += bb0; c31 += bb1;
            c40 += bb0; c41 += bb1; c50 += bb0; c51 += bb1; c60 += bb0; c61 += bb1; c70 += bb0; c71 += bb1;
            c80 += bb0; c81 += bb1; c90 += bb0; c91 += bb1; ca0 += bb0; ca1 += bb1; cb0 += bb0; cb1 += bb1;
        }
        Vector512.Store(c00, c); Vector512.Store(c01, c + 16);
        Vector512.Store(c10, c + ldc); Vector512.Store(c11, c + ldc + 16);
        Vector512.Store(c20, c + 2 * ldc); Vector512.Store(c21, c + 2 * ldc + 16);
        Vector512.Store(c30, c + 3 * ldc); Vector512.Store(c31, c + 3 * ldc + 16);
        Vector512.Store(c40, c + 4 * ldc); Vector512.Store(c41, c + 4 * ldc + 16);
        Vector512.Store(c50, c + 5 * ldc); Vector512.Store(c51, c + 5 * ldc + 16);
        Vector512.Store(c60, c + 6 * ldc); Vector512.Store(c61, c + 6 * ldc + 16);
        Vector512.Store(c70, c + 7 * ldc); Vector512.Store(c71, c + 7 * ldc + 16);
        Vector512.Store(c80, c + 8 * ldc); Vector512.Store(c81, c + 8 * ldc + 16);
        Vector512.Store(c90, c + 9 * ldc); Vector512.Store(c91, c + 9 * ldc + 16);
        Vector512.Store(ca0, c + 10 * ldc); Vector512.Store(ca1, c + 10 * ldc + 16);
        Vector512.Store(cb0, c + 11 * ldc); Vector512.Store(cb1, c + 11 * ldc + 16);
    }

    /// <summary>
    /// A tile of `rows` ≤ 12 by `cols` ≤ 32 of c: full tiles go straight to c; edge tiles through a 12 × 32 temporary
    /// (existing values copied in when accumulating, only the valid part copied out), with identical arithmetic.
    /// </summary>
    static void Tile(int rows, int cols, float* ap, float* bp, int kc, float* c, long ldc, bool accumulate, float* bias, float* temp)
    {
        if (rows == MR && cols == NR) { Micro12x32(ap, bp, kc, c, ldc, accumulate, bias); return; }
        if (cols == NR)
        {
            for (int i0 = 0; i0 < rows; i0 += 4)
                Micro4x32(Math.Min(4, rows - i0), ap + i0, bp, kc, c + i0 * ldc, ldc, accumulate, bias);
            return;
        }
        float* tb = null;
        if (bias != null)
        {
            tb = temp + MR * NR;
            for (int j = 0; j < NR; j++) tb[j] = j < cols ? bias[j] : 0f;
        }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) temp[i * NR + j] = accumulate && i < rows && j < cols ? c[i * ldc + j] : 0f;
        Micro12x32(ap, bp, kc, temp, NR, accumulate, tb);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) c[i * ldc + j] = temp[i * NR + j];
    }

    /// <summary>
    /// Rows i0..i0+r (r ≤ 4) of a 12-row packed A tile (ap already offset by i0; stride 12 per k) times 32 columns of B:
    /// the same per-element FMA chain as the 12 × 32 micro-kernel, for the last rows of a matrix.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Micro4x32(int r, float* ap, float* bp, int kc, float* c, long ldc, bool accumulate, float* bias)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        if (accumulate)
        {
            c00 = Vector512.Load(c); c01 = Vector512.Load(c + 16);
            if (r > 1) { c10 = Vector512.Load(c + ldc); c11 = Vector512.Load(c + ldc + 16); }
            if (r > 2) { c20 = Vector512.Load(c + 2 * ldc); c21 = Vector512.Load(c + 2 * ldc + 16); }
            if (r > 3) { c30 = Vector512.Load(c + 3 * ldc); c31 = Vector512.Load(c + 3 * ldc + 16); }
        }
        float* end = ap + (long)kc * MR;
        for (; ap < end; ap += MR, bp += NR)
        {
            var b0 = Vector512.Load(bp);
            var b1 = Vector512.Load(bp + 16);
            Vector512<float> x;
            x = Vector512.Create(ap[0]); c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
            x = Vector512.Create(ap[1]); c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
            x = Vector512.Create(ap[2]); c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
            x = Vector512.Create(ap[3]); c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
        }
        if (bias != null)
        {
            var bb0 = Vector512.Load(bias); var bb1 = Vector512.Load(bias + 16);
            c00 += bb0; c01 += bb1; c10 += bb0; c11 += bb1; c20 += bb0; c21 += bb1; c30 += bb0; c31 += bb1;
        }
        Vector512.Store(c00, c); Vector512.Store(c01, c + 16);
        if (r > 1) { Vector512.Store(c10, c + ldc); Vector512.Store(c11, c + ldc + 16); }
        if (r > 2) { Vector512.Store(c20, c + 2 * ldc); Vector512.Store(c21, c + 2 * ldc + 16); }
        if (r > 3) { Vector512.Store(c30, c + 3 * ldc); Vector512.Store(c31, c + 3 * ldc + 16); }
    }

    /// <summary>Floats of per-thread scratch an edge tile needs.</summary>
    public const int TileScratch = MR * NR + NR;

    // ------------------------------------------------------------------ packing

    /// <summary>dst[k * 12 + i] = widen(row i of src at k) for i &lt; rows, 0 beyond; rows at src + i * ldBytes.</summary>
    public static void PackA<TW>(byte* src, long ldBytes, int rows, int kc, float* dst) where TW : IWeightLoad
    {
        for (int i = 0; i < MR; i++)
        {
            if (i >= rows) { for (int k = 0; k < kc; k++) dst[k * MR + i] = 0f; continue; }
            byte* s = src + i * ldBytes;
            for (int k = 0; k < kc; k++) dst[k * MR + i] = TW.Load1(s + (long)k * TW.Size);
        }
    }

    /// <summary>dst[k * 32 + j] = x[(m0 + j) * K + k] for j &lt; 32 (0 past M): one K-long panel of xᵀ.</summary>
    public static void PackBTransposed(float* x, int M, int K, int m0, float* dst)
    {
        int rows = Math.Min(NR, M - m0);
        for (int j = 0; j < NR; j++)
        {
            if (j >= rows) { for (int k = 0; k < K; k++) dst[(long)k * NR + j] = 0f; continue; }
            float* src = x + (long)(m0 + j) * K;
            for (int k = 0; k < K; k++) dst[(long)k * NR + j] = src[k];
        }
    }

    // ------------------------------------------------------------------ out-major W [N, K]: y = x Wᵀ, computed as Cᵀ = W xᵀ

    /// <summary>Floats of the packed xᵀ buffer: ceil(M/32) panels of [K][32].</summary>
    public static long PackedXTFloats(int M, int K) => (long)((M + NR - 1) / NR) * K * NR;

    /// <summary>Floats of per-thread scratch of <see cref="OutMajorTile{TW}"/>.</summary>
    public static long OutMajorScratch(int M) => (long)MR * ((M + NR - 1) / NR) * NR + KC * MR + TileScratch;

    /// <summary>
    /// y[0..M, n0..n0+rowsW) for a tile of rowsW ≤ 12 weight rows: xt = packed xᵀ panels, W [N, K] of TW, bias [N] or null.
    /// scratch: ≥ OutMajorScratch(M) floats (Cᵀ accumulator [12][panels*32], the packed W tile [KC][12], an edge tile).
    /// </summary>
    public static void OutMajorTile<TW>(float* xt, int M, int K, byte* w, float* bias, float* y, int N, int n0, int rowsW, float* scratch) where TW : IWeightLoad
    {
        int panels = (M + NR - 1) / NR;
        long ldc = (long)panels * NR;
        float* cT = scratch, ap = scratch + MR * ldc, temp = ap + KC * MR;
        long ldwBytes = (long)K * TW.Size;
        for (int k0 = 0; k0 < K; k0 += KC)
        {
            int kc = Math.Min(KC, K - k0);
            PackA<TW>(w + n0 * ldwBytes + (long)k0 * TW.Size, ldwBytes, rowsW, kc, ap);
            for (int p = 0; p < panels; p++)
                Tile(MR, NR, ap, xt + ((long)p * K + k0) * NR, kc, cT + p * NR, ldc, k0 != 0, null, temp);
        }
        // Cᵀ [rowsW, M] → y[:, n0..], then the bias (added after the chain, as everywhere).
        for (int m = 0; m < M; m++)
        {
            float* yr = y + (long)m * N + n0;
            for (int i = 0; i < rowsW; i++) yr[i] = bias == null ? cT[i * ldc + m] : cT[i * ldc + m] + bias[n0 + i];
        }
    }
}
