using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Kernels.Simd;

/// <summary>
/// Many rows through out-major weights W [N, K] (nn.Linear), AVX-512, with the weights read in place: computed as
/// Cᵀ = W xᵀ in tiles of 6 weight rows × 64 rows of x (24 accumulators). Vectors are 64-row panels of xᵀ (packed once
/// per call as [K][64], zero past M), broadcasts come straight from six weight rows (each read in order; BF16/F16 rows
/// are widened per K block into a small F32 scratch first). Work items are blocks of 24 weight rows (12 or 6 for a small
/// N, see <see cref="RowsPerItem"/>); within an item
/// the K dimension runs in blocks of 384 so the item's weight block stays in L1 and every xᵀ block in L2, and the
/// Cᵀ accumulators of the item live in a per-thread scratch until they are stored transposed into y.
/// Per output element the arithmetic is one FMA chain over k ascending starting from 0, then + bias: the same as the
/// broadcast form of input-major weights (<c>Gemm.InMajor</c>) and independent of tiling and thread count.
/// </summary>
internal static unsafe class OutMajorBcast
{
    public const int TileRows = 6, PanelRows = 64, KBlock = 384, ItemRows = 4 * TileRows;

    /// <summary>
    /// Weight rows per item from 384 rows of x on (six or more panels: the K block of all panels no longer fits L2, and
    /// each item reads it from L3 once): twice as many tiles reuse each panel block. Measured in cache, 2 threads, F32,
    /// 24 -> 48 rows: 768x768x768 254-258 -> 266-285 GFLOP/s, [512x768]x[768x3072] 287-294 -> 293-299; at 128 rows
    /// 300-303 -> 249-263.
    /// </summary>
    const int BigItemRows = 8 * TileRows, BigItemMinRows = 384;
    const int MaxItemRows = BigItemRows;

    /// <summary>Floats of the packed xᵀ buffer: ceil(M/64) panels of [K][64].</summary>
    public static long PackedFloats(int M, int K) => (long)((M + PanelRows - 1) / PanelRows) * K * PanelRows;

    /// <summary>Floats of per-thread scratch: Cᵀ of one item [24][panels × 64] and the item's widened weight block [24][KBlock + KBlock/2].</summary>
    public static long ScratchFloats(int M) => (long)MaxItemRows * ((M + PanelRows - 1) / PanelRows) * PanelRows + MaxItemRows * (KBlock + KBlock / 2);

    /// <summary>Panel p of xᵀ: dst[k * 64 + j] = x[(64p + j) * K + k] for j &lt; 64, 0 past M.</summary>
    public static void PackPanel(float* x, int M, int K, int panel, float* packed)
    {
        int m0 = panel * PanelRows, rows = Math.Min(PanelRows, M - m0);
        float* dst = packed + (long)panel * K * PanelRows;
        for (int j = 0; j < PanelRows; j++)
        {
            if (j >= rows) { for (int k = 0; k < K; k++) dst[(long)k * PanelRows + j] = 0f; continue; }
            float* src = x + (long)(m0 + j) * K;
            for (int k = 0; k < K; k++) dst[(long)k * PanelRows + j] = src[k];
        }
    }

    /// <summary>
    /// Weight rows per work item for N outputs and M rows of x: 48 for M ≥ 384 (see <see cref="BigItemRows"/>), else 24,
    /// or 12 / 6 when that leaves fewer than 16 items (small projections such as a GQA model's K and V keep both threads
    /// busy to the end).
    /// </summary>
    public static int RowsPerItem(int N, int M) =>
        M >= BigItemMinRows && N >= 8 * BigItemRows ? BigItemRows : N >= 16 * ItemRows ? ItemRows : N >= 16 * 2 * TileRows ? 2 * TileRows : TileRows;

    /// <summary>y[0..M, n0..n0+itemRows) (+ bias) for item i (n0 = i × itemRows): xt = packed xᵀ panels, W [N, K] of TW.</summary>
    public static void Item<TW>(float* xt, int M, int K, byte* w, float* bias, float* y, int N, int item, int itemRows, float* scratch) where TW : IWeightLoad
    {
        int n0 = item * itemRows, rows = Math.Min(itemRows, N - n0);
        int panels = (M + PanelRows - 1) / PanelRows;
        long ldc = (long)panels * PanelRows;
        float* cT = scratch, wide = scratch + MaxItemRows * ldc;
        long ldw = (long)K * TW.Size;
        for (int k0 = 0; k0 < K;)
        {
            int k1 = K - k0 <= KBlock + KBlock / 2 ? K : k0 + KBlock, kc = k1 - k0;
            // Panels outer, tiles inner: each xᵀ panel block (kc × 64 floats) is read from L3 once per item and reused by
            // all of the item's tiles from L2; the item's weight block (at most 24 × kc) stays in L1.
            float* wb;
            long ldwb;
            int kOff;
            if (typeof(TW) == typeof(F32Load)) { wb = (float*)(w + n0 * ldw); ldwb = K; kOff = 0; }
            else
            {
                // Widen the item's K block once ([rows][kc] floats), then run the F32 kernel on it for every panel.
                for (int i = 0; i < rows; i++)
                {
                    byte* src = w + (n0 + i) * ldw + (long)k0 * TW.Size;
                    float* d = wide + i * kc;
                    int k = 0;
                    for (; k + 16 <= kc; k += 16) Vector512.Store(TW.Load16(src + (long)k * TW.Size), d + k);
                    for (; k < kc; k++) d[k] = TW.Load1(src + (long)k * TW.Size);
                }
                wb = wide; ldwb = kc; kOff = k0;
            }
            for (int p = 0; p < panels; p++)
                for (int t = 0; t < rows; t += TileRows)
                    Micro6x64(wb + t * ldwb - kOff, ldwb, Math.Min(TileRows, rows - t), xt + (long)p * K * PanelRows, k0, k1, cT + t * ldc + p * PanelRows, ldc, k0 > 0);
            k0 = k1;
        }
        for (int m = 0; m < M; m++)
        {
            float* yr = y + (long)m * N + n0;
            if (bias == null) for (int i = 0; i < rows; i++) yr[i] = cT[i * ldc + m];
            else for (int i = 0; i < rows; i++) yr[i] = cT[i * ldc + m] + bias[n0 + i];
        }
    }

    /// <summary>
    /// c[i * ldc + 0..64) (+)= sum over k in [k0, k1) of w[i * ldw + k] * xt[k * 64 + 0..64) for i &lt; 6; rows at and
    /// past tr repeat row tr − 1 (their results are never stored to y). accumulate: continue from c.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Micro6x64(float* w, long ldw, int tr, float* xt, int k0, int k1, float* c, long ldc, bool accumulate)
    {
        float* r0 = w, r1 = w + Math.Min(1, tr - 1) * ldw, r2 = w + Math.Min(2, tr - 1) * ldw;
        float* r3 = w + Math.Min(3, tr - 1) * ldw, r4 = w + Math.Min(4, tr - 1) * ldw, r5 = w + Math.Min(5, tr - 1) * ldw;
        float* c0 = c, c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc, c4 = c + 4 * ldc, c5 = c + 5 * ldc;
        Vector512<float> a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53;
        if (accumulate)
        {
            a00 = Vector512.Load(c0); a01 = Vector512.Load(c0 + 16); a02 = Vector512.Load(c0 + 32); a03 = Vector512.Load(c0 + 48);
            a10 = Vector512.Load(c1); a11 = Vector512.Load(c1 + 16); a12 = Vector512.Load(c1 + 32); a13 = Vector512.Load(c1 + 48);
            a20 = Vector512.Load(c2); a21 = Vector512.Load(c2 + 16); a22 = Vector512.Load(c2 + 32); a23 = Vector512.Load(c2 + 48);
            a30 = Vector512.Load(c3); a31 = Vector512.Load(c3 + 16); a32 = Vector512.Load(c3 + 32); a33 = Vector512.Load(c3 + 48);
            a40 = Vector512.Load(c4); a41 = Vector512.Load(c4 + 16); a42 = Vector512.Load(c4 + 32); a43 = Vector512.Load(c4 + 48);
            a50 = Vector512.Load(c5); a51 = Vector512.Load(c5 + 16); a52 = Vector512.Load(c5 + 32); a53 = Vector512.Load(c5 + 48);
        }
        else
        {
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = a20 = a21 = a22 = a23 = default;
            a30 = a31 = a32 = a33 = a40 = a41 = a42 = a43 = a50 = a51 = a52 = a53 = default;
        }
        float* xp = xt + (long)k0 * PanelRows;
        for (int k = k0; k < k1; k++, xp += PanelRows)
        {
            var b0 = Vector512.Load(xp);
            var b1 = Vector512.Load(xp + 16);
            var b2 = Vector512.Load(xp + 32);
            var b3 = Vector512.Load(xp + 48);
            Vector512<float> s;
            s = Vector512.Create(r0[k]);
            a00 = Vector512.FusedMultiplyAdd(s, b0, a00); a01 = Vector512.FusedMultiplyAdd(s, b1, a01);
            a02 = Vector512.FusedMultiplyAdd(s, b2, a02); a03 = Vector512.FusedMultiplyAdd(s, b3, a03);
            s = Vector512.Create(r1[k]);
            a10 = Vector512.FusedMultiplyAdd(s, b0, a10); a11 = Vector512.FusedMultiplyAdd(s, b1, a11);
            a12 = Vector512.FusedMultiplyAdd(s, b2, a12); a13 = Vector512.FusedMultiplyAdd(s, b3, a13);
            s = Vector512.Create(r2[k]);
            a20 = Vector512.FusedMultiplyAdd(s, b0, a20); a21 = Vector512.FusedMultiplyAdd(s, b1, a21);
            a22 = Vector512.FusedMultiplyAdd(s, b2, a22); a23 = Vector512.FusedMultiplyAdd(s, b3, a23);
            s = Vector512.Create(r3[k]);
            a30 = Vector512.FusedMultiplyAdd(s, b0, a30); a31 = Vector512.FusedMultiplyAdd(s, b1, a31);
            a32 = Vector512.FusedMultiplyAdd(s, b2, a32); a33 = Vector512.FusedMultiplyAdd(s, b3, a33);
            s = Vector512.Create(r4[k]);
            a40 = Vector512.FusedMultiplyAdd(s, b0, a40); a41 = Vector512.FusedMultiplyAdd(s, b1, a41);
            a42 = Vector512.FusedMultiplyAdd(s, b2, a42); a43 = Vector512.FusedMultiplyAdd(s, b3, a43);
            s = Vector512.Create(r5[k]);
            a50 = Vector512.FusedMultiplyAdd(s, b0, a50); a51 = Vector512.FusedMultiplyAdd(s, b1, a51);
            a52 = Vector512.FusedMultiplyAdd(s, b2, a52); a53 = Vector512.FusedMultiplyAdd(s, b3, a53);
        }
        Vector512.Store(a00, c0); Vector512.Store(a01, c0 + 16); Vector512.Store(a02, c0 + 32); Vector512.Store(a03, c0 + 48);
        Vector512.Store(a10, c1); Vector512.Store(a11, c1 + 16); Vector512.Store(a12, c1 + 32); Vector512.Store(a13, c1 + 48);
        Vector512.Store(a20, c2); Vector512.Store(a21, c2 + 16); Vector512.Store(a22, c2 + 32); Vector512.Store(a23, c2 + 48);
        Vector512.Store(a30, c3); Vector512.Store(a31, c3 + 16); Vector512.Store(a32, c3 + 32); Vector512.Store(a33, c3 + 48);
        Vector512.Store(a40, c4); Vector512.Store(a41, c4 + 16); Vector512.Store(a42, c4 + 32); Vector512.Store(a43, c4 + 48);
        Vector512.Store(a50, c5); Vector512.Store(a51, c5 + 16); Vector512.Store(a52, c5 + 32); Vector512.Store(a53, c5 + 48);
    }
}
