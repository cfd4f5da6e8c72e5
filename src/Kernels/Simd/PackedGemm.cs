using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Kernels.Simd;

/// <summary>
/// Packed, cache-blocked matrix multiply for many rows (prefill), AVX-512. One micro-kernel: a tile of 12 "broadcast"
/// rows × 32 "vector" columns (24 accumulators) over a K block, both operands packed contiguously (A as [kc][12],
/// B as [kc][32], widened from BF16/F16 while packing): one pointer each, constant offsets, the B panel in L1, no
/// cache-set conflicts from large power-of-two row strides.
/// <list type="bullet">
/// <item>input-major W [K, N] (GPT-2 Conv1D): vectors = packed W panels (32 output columns), broadcasts = x rows;
/// the tile is 12 rows of y.</item>
/// <item>out-major W [N, K] (nn.Linear): vectors = packed panels of xᵀ (32 rows of x), broadcasts = W rows (read in
/// place for F32, widened into a small scratch for BF16/F16); the tile is 12 outputs × 32 rows, stored transposed.</item>
/// </list>
/// Per output element the arithmetic is one FMA chain over k ascending starting from 0, then + bias: the same as
/// <see cref="Gemm.InMajor{TW}"/> and independent of tiling and thread count.
/// </summary>
internal static unsafe class PackedGemm
{
    public const int MR = 12, NR = 32, KC = 256;

    /// <summary>
    /// Rows from which this path is used: input-major weights are read in place, so it pays from 16 rows; out-major
    /// weights are transposed into A tiles per call, which pays only from 256 rows (measured on the GPT-2-small and
    /// SmolLM2 shapes; below that the dot-form kernels of <see cref="Gemm"/> are faster).
    /// </summary>
    public const int MinRowsInputMajor = 16, MinRowsOutMajor = 256;

    public static bool Use(int rows, bool inputMajor) => rows >= (inputMajor ? MinRowsInputMajor : MinRowsOutMajor);

    // ------------------------------------------------------------------ micro-kernel

    /// <summary>
    /// c[i, 0..32) (+)= sum_k ap[k * 12 + i] * bp[k * 32 + 0..32) for i &lt; 12, k &lt; kc.
    /// accumulate: continue from c; bias (when not null, last K block only): added after the chain, per column.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Micro12x32(float* ap, float* bp, int kc, float* c, long ldc, bool accumulate, float* bias) =>
        Micro12x32<F32Load>(ap, (byte*)bp, NR * sizeof(float), kc, c, ldc, accumulate, bias, false);

    /// <summary>
    /// The micro-kernel with B read as 32 elements of TW per k at bp + k * ldbBytes: a packed [kc][32] panel, or a
    /// panel of the weights themselves (input-major W, rows N apart; prefetch then fetches the rows ahead, which the
    /// hardware prefetcher, stopping at page boundaries, would not).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Micro12x32<TW>(float* ap, byte* bp, long ldbBytes, int kc, float* c, long ldc, bool accumulate, float* bias, bool prefetch) where TW : IWeightLoad
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
        long pf = 8 * ldbBytes;
        for (; ap < end; ap += MR, bp += ldbBytes)
        {
            if (prefetch) { Sse.Prefetch0(bp + pf); Sse.Prefetch0(bp + pf + 64); }
            var b0 = TW.Load16(bp);
            var b1 = TW.Load16(bp + 16 * TW.Size);
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

    /// <summary>A tile of `rows` ≤ 12 by 32 columns with B read in place from input-major weights (rows ldbBytes apart).</summary>
    static void TileDirect<TW>(int rows, float* ap, byte* bp, long ldbBytes, int kc, float* c, long ldc, bool accumulate, float* bias, float* temp) where TW : IWeightLoad
    {
        if (rows == MR) { Micro12x32<TW>(ap, bp, ldbBytes, kc, c, ldc, accumulate, bias, true); return; }
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) temp[i * NR + j] = accumulate && i < rows ? c[i * ldc + j] : 0f;
        Micro12x32<TW>(ap, bp, ldbBytes, kc, temp, NR, accumulate, bias, true);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < NR; j++) c[i * ldc + j] = temp[i * NR + j];
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

    /// <summary>dst[k * 32 + j] = widen(src[k * ldBytes + j]) for j &lt; width, 0 beyond (rows of W [K, N]).</summary>
    public static void PackBRows<TW>(byte* src, long ldBytes, int kc, int width, float* dst) where TW : IWeightLoad
    {
        for (int k = 0; k < kc; k++)
        {
            byte* s = src + k * ldBytes;
            float* d = dst + k * NR;
            if (width == NR)
            {
                Vector512.Store(TW.Load16(s), d);
                Vector512.Store(TW.Load16(s + 16 * TW.Size), d + 16);
            }
            else
            {
                for (int j = 0; j < width; j++) d[j] = TW.Load1(s + j * TW.Size);
                for (int j = width; j < NR; j++) d[j] = 0f;
            }
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

    // ------------------------------------------------------------------ input-major W [K, N]: y = x W

    /// <summary>Floats of the packed-x buffer of <see cref="InMajorPanel{TW}"/>: ceil(M/12) tiles of [K][12].</summary>
    public static long PackedXFloats(int M, int K) => (long)((M + MR - 1) / MR) * K * MR;

    /// <summary>Packs x tile t (rows 12t..) as [K][12] for the input-major path.</summary>
    public static void PackXTile(float* x, int M, int K, float* xa, int tile) =>
        PackA<F32Load>((byte*)(x + (long)tile * MR * K), (long)K * sizeof(float), Math.Min(MR, M - tile * MR), K, xa + (long)tile * K * MR);

    /// <summary>
    /// y[0..M, n0..n0+32) (one panel of output columns): xa = packed x tiles, W [K, N] of TW, bias [N] or null,
    /// y [M, N]. scratch: ≥ KC * 32 + TileScratch floats.
    /// </summary>
    public static void InMajorPanel<TW>(float* xa, int M, int K, byte* w, int N, float* bias, float* y, int n0, float* scratch) where TW : IWeightLoad
    {
        int width = Math.Min(NR, N - n0);
        float* panel = scratch, temp = scratch + KC * NR;
        for (int k0 = 0; k0 < K; k0 += KC)
        {
            int kc = Math.Min(KC, K - k0);
            bool first = k0 == 0, last = k0 + kc == K;
            byte* wb = w + ((long)k0 * N + n0) * TW.Size;
            if (width == NR)
            {
                // A full panel: B straight from the weights (32 contiguous elements per row), no copy.
                for (int t = 0, m = 0; m < M; t++, m += MR)
                    TileDirect<TW>(Math.Min(MR, M - m), xa + ((long)t * K + k0) * MR, wb, (long)N * TW.Size, kc, y + (long)m * N + n0, N, !first,
                        last && bias != null ? bias + n0 : null, temp);
                continue;
            }
            // The edge panel: packed with zero padding, so nothing past row ends is read.
            PackBRows<TW>(wb, (long)N * TW.Size, kc, width, panel);
            for (int t = 0, m = 0; m < M; t++, m += MR)
                Tile(Math.Min(MR, M - m), width, xa + ((long)t * K + k0) * MR, panel, kc, y + (long)m * N + n0, N, !first,
                    last && bias != null ? bias + n0 : null, temp);
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
