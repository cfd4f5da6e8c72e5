using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Kernels.Simd;

/// <summary>
/// Packed, cache-blocked matrix multiply for many rows (prefill), AVX-512. One micro-kernel: a tile of 12 "broadcast"
/// rows × 32 "vector" columns (24 accumulators) over a K block, both operands packed contiguously (A as [kc][12],
/// B as [kc][32], widened from BF16/F16 while packing): one pointer each, constant offsets, the B panel in L1, no
/// cache-set conflicts from large power-of-two row strides.
/// <list type="bullet">
/// <item>input-major W [K, N] (GPT-2 Conv1D): vectors = W panels (32 output columns), packed per K block from whole
/// 128-column row segments read in memory order (<see cref="InMajorBlock{TW}"/>), broadcasts = x rows; the tile is
/// 12 rows of y.</item>
/// <item>out-major W [N, K] (nn.Linear): vectors = packed panels of xᵀ (32 rows of x), broadcasts = W rows (read in
/// place for F32, widened into a small scratch for BF16/F16); the tile is 12 outputs × 32 rows, stored transposed.</item>
/// </list>
/// Per output element the arithmetic is one FMA chain over k ascending starting from 0, then + bias: the same as
/// <c>Gemm.InMajor</c> and independent of tiling and thread count.
/// </summary>
internal static unsafe class PackedGemm
{
    public const int MR = 12, NR = 32, KC = 256;

    /// <summary>
    /// Weight rows the input-major packing prefetches ahead. Each row segment it packs (512 bytes of F32) lies in another
    /// 4 KiB page, where the hardware prefetchers stop, so without this the few-row prefill waits on every row: measured
    /// 16-token GPT-2-small prefill 41–70 ms → 37–62 ms, no change at 64 and 128 tokens.
    /// </summary>
    const int PackPrefetchRows = 4;

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

    // ------------------------------------------------------------------ input-major W [K, N]: y = x W

    /// <summary>Floats of the packed-x buffer of <see cref="InMajorBlock{TW}"/>: ceil(M/12) tiles of [K][12].</summary>
    public static long PackedXFloats(int M, int K) => (long)((M + MR - 1) / MR) * K * MR;

    /// <summary>Packs x tile t (rows 12t..) as [K][12] for the input-major path.</summary>
    public static void PackXTile(float* x, int M, int K, float* xa, int tile) =>
        PackA<F32Load>((byte*)(x + (long)tile * MR * K), (long)K * sizeof(float), Math.Min(MR, M - tile * MR), K, xa + (long)tile * K * MR);

    /// <summary>Output columns per work item of <see cref="InMajorBlock{TW}"/>.</summary>
    public const int BlockColumns = 4 * NR;

    /// <summary>Floats of per-thread scratch of <see cref="InMajorBlock{TW}"/>.</summary>
    public const int BlockScratch = 4 * KC * NR + TileScratch;

    /// <summary>
    /// y[0..M, n0..n0+128) for one block of four 32-column panels: per K block, the weights' rows are read in memory
    /// order (a contiguous 512-byte F32 segment per row) and packed into the four panels (widened from BF16/F16), then the
    /// micro-kernels run on the packed panels. Reading whole row segments keeps the weight stream sequential when few
    /// rows of x share it; the arithmetic per element is the one FMA chain of the other paths.
    /// </summary>
    public static void InMajorBlock<TW>(float* xa, int M, int K, byte* w, int N, float* bias, float* y, int n0, float* scratch) where TW : IWeightLoad
    {
        int width = Math.Min(BlockColumns, N - n0), panels = (width + NR - 1) / NR;
        float* packed = scratch, temp = scratch + 4 * KC * NR;
        long ldw = (long)N * TW.Size;
        for (int k0 = 0; k0 < K; k0 += KC)
        {
            int kc = Math.Min(KC, K - k0);
            bool first = k0 == 0, last = k0 + kc == K;
            for (int k = 0; k < kc; k++)
            {
                byte* src = w + (k0 + k) * ldw + (long)n0 * TW.Size;
                if (k0 + k + PackPrefetchRows < K && System.Runtime.Intrinsics.X86.Sse.IsSupported)
                {
                    byte* ahead = src + PackPrefetchRows * ldw;
                    for (int o = 0; o < width * TW.Size; o += 64) System.Runtime.Intrinsics.X86.Sse.Prefetch0(ahead + o);
                }
                for (int p = 0; p < panels; p++)
                {
                    float* d = packed + ((long)p * KC + k) * NR;
                    int cols = Math.Min(NR, width - p * NR);
                    byte* sp = src + (long)p * NR * TW.Size;
                    if (cols == NR)
                    {
                        Vector512.Store(TW.Load16(sp), d);
                        Vector512.Store(TW.Load16(sp + 16 * TW.Size), d + 16);
                    }
                    else
                    {
                        for (int j = 0; j < cols; j++) d[j] = TW.Load1(sp + j * TW.Size);
                        for (int j = cols; j < NR; j++) d[j] = 0f;
                    }
                }
            }
            for (int p = 0; p < panels; p++)
            {
                int cols = Math.Min(NR, width - p * NR), nc = n0 + p * NR;
                float* bp = packed + (long)p * KC * NR;
                for (int t = 0, m = 0; m < M; t++, m += MR)
                    Tile(Math.Min(MR, M - m), cols, xa + ((long)t * K + k0) * MR, bp, kc, y + (long)m * N + nc, N, !first,
                        last && bias != null ? bias + nc : null, temp);
            }
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
