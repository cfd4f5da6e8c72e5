using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Kernels.Simd;

/// <summary>
/// Register-tiled matrix multiply on the weights' stored layout and dtype (no float copy of the model; for many rows,
/// input-major K blocks are copied or widened into a small per-thread panel, see <see cref="PanelMinRows{TW}"/>):
/// <list type="bullet">
/// <item>out-major W [N, K] (nn.Linear): "dot form": a 4 × 4 tile of (row, output) pairs, 16 Vector512 accumulators
/// over K, each reduced at the end;</item>
/// <item>input-major W [K, N] (GPT-2 Conv1D): "broadcast form": 4 rows × 64 columns, 16 accumulators, one broadcast of
/// x[m, k] per row and four weight vectors per k.</item>
/// </list>
/// Work items are blocks of <see cref="NBlock"/> output columns at fixed offsets, and every output element is computed
/// by the same instruction sequence whatever tile or tail it falls in, so results do not depend on the thread count.
/// Per element, out-major: acc (16 lanes, FMA over k in steps of 16) → lane sum → scalar FMA over the K tail → + bias;
/// input-major: scalar-equivalent FMA chain over k ascending → + bias.
/// </summary>
internal static unsafe class Gemm
{
    public const int NBlock = 64;

    public static bool Supported => Vector512.IsHardwareAccelerated;

    // ------------------------------------------------------------------ out-major W [N, K]

    /// <summary>y[m, n] for n in [n0, n1): x [M, K], W [N, K] (rows of K elements of TW), y [M, N] (dense).</summary>
    public static void OutMajor<TW>(float* x, int M, int K, byte* w, float* bias, float* y, int N, int n0, int n1) where TW : IWeightLoad
        => OutMajor<TW>(x, K, M, K, w, (long)K * TW.Size, bias, y, N, n0, n1);

    /// <summary>
    /// y[m * ldy + n] = dot(x[m * ldx ..], W row n) (+ bias[n]) for m &lt; M, n in [n0, n1); row n of W starts at
    /// w + n * ldwBytes. Strides let attention use the same kernels on the KV cache.
    /// </summary>
    public static void OutMajor<TW>(float* x, long ldx, int M, int K, byte* w, long ldwBytes, float* bias, float* y, long ldy, int n0, int n1) where TW : IWeightLoad
    {
        int k16 = K & ~15;
        int m = 0;
        for (; m + 4 <= M; m += 4)
        {
            int n = n0;
            for (; n + 4 <= n1; n += 4) Dot4x4<TW>(x + m * ldx, ldx, K, k16, w + n * ldwBytes, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n, ldy);
            for (; n < n1; n++)
                for (int i = 0; i < 4; i++) Dot1x1<TW>(x + (m + i) * ldx, K, k16, w + n * ldwBytes, bias == null ? null : bias + n, y + (m + i) * ldy + n);
        }
        for (; m < M; m++)
        {
            int n = n0;
            for (; n + 4 <= n1; n += 4) Dot1x4<TW>(x + m * ldx, K, k16, w + n * ldwBytes, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n);
            for (; n < n1; n++) Dot1x1<TW>(x + m * ldx, K, k16, w + n * ldwBytes, bias == null ? null : bias + n, y + m * ldy + n);
        }
    }

    /// <summary>Lane sum, then the K tail with scalar FMAs, then the bias: the one way an out-major element is finished.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Finish<TW>(Vector512<float> acc, float* xr, byte* wr, int k16, int K, float* bias) where TW : IWeightLoad
    {
        float s = Vector512.Sum(acc);
        for (int k = k16; k < K; k++) s = MathF.FusedMultiplyAdd(xr[k], TW.Load1(wr + (long)k * TW.Size), s);
        return bias == null ? s : s + *bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot4x4<TW>(float* x, long ldx, int K, int k16, byte* w, long ldw, float* bias, float* y, long ldy) where TW : IWeightLoad
    {
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        byte* w0 = w, w1 = w + ldw, w2 = w + 2 * ldw, w3 = w + 3 * ldw;
        Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
        for (int k = 0; k < k16; k += 16)
        {
            var a0 = Vector512.Load(x0 + k);
            var a1 = Vector512.Load(x1 + k);
            var a2 = Vector512.Load(x2 + k);
            var a3 = Vector512.Load(x3 + k);
            long kb = (long)k * TW.Size;
            var b = TW.Load16(w0 + kb);
            c00 = Vector512.FusedMultiplyAdd(a0, b, c00); c10 = Vector512.FusedMultiplyAdd(a1, b, c10);
            c20 = Vector512.FusedMultiplyAdd(a2, b, c20); c30 = Vector512.FusedMultiplyAdd(a3, b, c30);
            b = TW.Load16(w1 + kb);
            c01 = Vector512.FusedMultiplyAdd(a0, b, c01); c11 = Vector512.FusedMultiplyAdd(a1, b, c11);
            c21 = Vector512.FusedMultiplyAdd(a2, b, c21); c31 = Vector512.FusedMultiplyAdd(a3, b, c31);
            b = TW.Load16(w2 + kb);
            c02 = Vector512.FusedMultiplyAdd(a0, b, c02); c12 = Vector512.FusedMultiplyAdd(a1, b, c12);
            c22 = Vector512.FusedMultiplyAdd(a2, b, c22); c32 = Vector512.FusedMultiplyAdd(a3, b, c32);
            b = TW.Load16(w3 + kb);
            c03 = Vector512.FusedMultiplyAdd(a0, b, c03); c13 = Vector512.FusedMultiplyAdd(a1, b, c13);
            c23 = Vector512.FusedMultiplyAdd(a2, b, c23); c33 = Vector512.FusedMultiplyAdd(a3, b, c33);
        }
        float* b0 = bias, b1 = bias == null ? null : bias + 1, b2 = bias == null ? null : bias + 2, b3 = bias == null ? null : bias + 3;
        y[0] = Finish<TW>(c00, x0, w0, k16, K, b0); y[1] = Finish<TW>(c01, x0, w1, k16, K, b1);
        y[2] = Finish<TW>(c02, x0, w2, k16, K, b2); y[3] = Finish<TW>(c03, x0, w3, k16, K, b3);
        float* y1 = y + ldy;
        y1[0] = Finish<TW>(c10, x1, w0, k16, K, b0); y1[1] = Finish<TW>(c11, x1, w1, k16, K, b1);
        y1[2] = Finish<TW>(c12, x1, w2, k16, K, b2); y1[3] = Finish<TW>(c13, x1, w3, k16, K, b3);
        float* y2 = y + 2 * ldy;
        y2[0] = Finish<TW>(c20, x2, w0, k16, K, b0); y2[1] = Finish<TW>(c21, x2, w1, k16, K, b1);
        y2[2] = Finish<TW>(c22, x2, w2, k16, K, b2); y2[3] = Finish<TW>(c23, x2, w3, k16, K, b3);
        float* y3 = y + 3 * ldy;
        y3[0] = Finish<TW>(c30, x3, w0, k16, K, b0); y3[1] = Finish<TW>(c31, x3, w1, k16, K, b1);
        y3[2] = Finish<TW>(c32, x3, w2, k16, K, b2); y3[3] = Finish<TW>(c33, x3, w3, k16, K, b3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot1x4<TW>(float* x, int K, int k16, byte* w, long ldw, float* bias, float* y) where TW : IWeightLoad
    {
        byte* w0 = w, w1 = w + ldw, w2 = w + 2 * ldw, w3 = w + 3 * ldw;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        for (int k = 0; k < k16; k += 16)
        {
            var a = Vector512.Load(x + k);
            long kb = (long)k * TW.Size;
            c0 = Vector512.FusedMultiplyAdd(a, TW.Load16(w0 + kb), c0);
            c1 = Vector512.FusedMultiplyAdd(a, TW.Load16(w1 + kb), c1);
            c2 = Vector512.FusedMultiplyAdd(a, TW.Load16(w2 + kb), c2);
            c3 = Vector512.FusedMultiplyAdd(a, TW.Load16(w3 + kb), c3);
        }
        y[0] = Finish<TW>(c0, x, w0, k16, K, bias);
        y[1] = Finish<TW>(c1, x, w1, k16, K, bias == null ? null : bias + 1);
        y[2] = Finish<TW>(c2, x, w2, k16, K, bias == null ? null : bias + 2);
        y[3] = Finish<TW>(c3, x, w3, k16, K, bias == null ? null : bias + 3);
    }

    static void Dot1x1<TW>(float* x, int K, int k16, byte* w, float* bias, float* y) where TW : IWeightLoad
    {
        Vector512<float> c = default;
        for (int k = 0; k < k16; k += 16) c = Vector512.FusedMultiplyAdd(Vector512.Load(x + k), TW.Load16(w + (long)k * TW.Size), c);
        *y = Finish<TW>(c, x, w, k16, K, bias);
    }

    // ------------------------------------------------------------------ input-major W [K, N]

    /// <summary>
    /// y[m, n] for n in [n0, n1): x [M, K], W [K, N] (rows of N elements of TW), y [M, N] (dense). nextN0: the first
    /// column of the 64-column block this thread most likely computes next (-1: unknown), for the prefetch.
    /// </summary>
    public static void InMajor<TW>(float* x, int M, int K, byte* w, float* bias, float* y, int N, int n0, int n1, int nextN0 = -1) where TW : IWeightLoad
    {
        long ldw = (long)N * TW.Size;
        bool pack = n1 - n0 == 64 && M >= PanelMinRows<TW>(ldw);
        float* panel = null;
        if (pack)
        {
            if (t_panel == null || t_panel.Length < (KBlockRows + KBlockRows / 2) * 64)
                t_panel = GC.AllocateUninitializedArray<float>((KBlockRows + KBlockRows / 2) * 64, pinned: true);
            panel = (float*)Unsafe.AsPointer(ref t_panel[0]);
        }
        // K in blocks so that the item's weight block (KBlock rows × 64 columns) stays in L2 while every row group of x
        // passes over it; the chains continue across blocks (accumulate), so the result is the same as one pass.
        for (int k0 = 0; k0 < K;)
        {
            int k1 = BlockEnd(k0, K);
            // While this block is computed, the next one is prefetched into L2 (by the six-row groups, see below): this
            // item's next K block, else the first of the item this thread likely takes next. Measured from memory (40
            // rotating weight matrices, 2 threads, interleaved in one process), without -> with, when each of the first
            // groups prefetched one line of every row: [128×768]·[768×2304] 162 -> 176 and 127 -> 132 GFLOP/s,
            // [128×3072]·[3072×768] 194 -> 207 and 181 -> 184, [128×768]·[768×3072] 211 -> 213 and 198 -> 200.
            var next = default(NextBlock);
            if (n1 - n0 == 64 && Sse.IsSupported)
            {
                if (k1 < K) next = new NextBlock(w + k1 * ldw + (long)n0 * TW.Size, ldw, BlockEnd(k1, K) - k1, TW.Size);
                else if (nextN0 >= 0 && nextN0 + 64 <= N) next = new NextBlock(w + (long)nextN0 * TW.Size, ldw, BlockEnd(0, K), TW.Size);
            }
            if (pack)
            {
                // Widened (or copied) into the contiguous panel [k1 - k0][64]; the chains are those of the direct path
                // (the widening is exact), so results are bit-identical.
                byte* src = w + k0 * ldw + (long)n0 * TW.Size;
                float* dst = panel;
                for (int k = k0; k < k1; k++, src += ldw, dst += 64)
                {
                    Vector512.Store(TW.Load16(src), dst);
                    Vector512.Store(TW.Load16(src + 16 * TW.Size), dst + 16);
                    Vector512.Store(TW.Load16(src + 32 * TW.Size), dst + 32);
                    Vector512.Store(TW.Load16(src + 48 * TW.Size), dst + 48);
                }
                // The panel holds columns n0 .. n0 + 64 as 0 .. 64: y and the bias are offset to match.
                float* blockBias = k1 == K && bias != null ? bias + n0 : null;
                InMajor<F32Load>(x, K, M, k0, k1, (byte*)(panel - (long)k0 * 64), 64 * sizeof(float), blockBias, y + n0, N, 0, 64, k0 > 0, next);
            }
            else InMajor<TW>(x, K, M, k0, k1, w, ldw, k1 == K ? bias : null, y, N, n0, n1, k0 > 0, next);
            k0 = k1;
        }
    }

    /// <summary>End of the K block starting at k0: KBlockRows rows, the last block taking up to half a block more.</summary>
    static int BlockEnd(int k0, int K) => K - k0 <= KBlockRows + KBlockRows / 2 ? K : k0 + KBlockRows;

    /// <summary>A weight block to prefetch: Rows rows Ld bytes apart, Lines cache lines from P in each.</summary>
    internal readonly struct NextBlock(byte* p, long ld, int rows, int lines)
    {
        public readonly byte* P = p; public readonly long Ld = ld; public readonly int Rows = rows, Lines = lines;
    }

    /// <summary>
    /// Rows of x from which each K block of input-major weights is first copied or widened into a contiguous per-thread
    /// panel [kc][64] that every row group then reads (int.MaxValue: never). Measured in cache, 2 threads, direct ->
    /// panel (GFLOP/s):
    /// <list type="bullet">
    /// <item>F16 [T×768]·[768×3072], widened once instead of once per group: T=512 281 -> 308 and 288 -> 353 (two
    /// sessions), T=128 251 -> 257 and 291 -> 325, T=16 224 -> 195. 2026-12-07, AMD Zen 4 guest, panel vs direct paired
    /// in one process (11 rounds, the four GPT-2-small shapes, from memory): T=16 0.90-0.99, T=24 0.94-0.97, T=32
    /// 1.03-1.06, T=64 1.10-1.13, T=96 1.15-1.16 (the threshold was 128 rows before).</item>
    /// <item>BF16 at 16 and 32 rows (same session): panel 0.73-0.84 of direct.</item>
    /// <item>BF16, same shape (2026-12-07, interleaved in one process): T=64 155 -> 173, T=128 194 -> 217, T=512
    /// 189 -> 212, T=32 156 -> 152; [T×3072]·[3072×768] T=128 164 -> 175 (an earlier session: T=128 334 -> 307, T=512
    /// 330 -> 358).</item>
    /// <item>F32 with rows a multiple of 4 KiB apart (768 -> 3072: 12 KiB): the direct block's 384 rows fall on few cache
    /// sets (one L1 set group; 32 L2 set positions), the panel's are spread. T=32 127 -> 154, T=64 131-152 -> 164-174,
    /// T=128 139-143 -> 160-162, T=512 142-147 -> 174-179 (same session). F32 rows at other strides lose by the copy:
    /// 768 -> 2304 (9 KiB) 186 -> 172, 3072 -> 768 (3 KiB) 192 -> 180. (An earlier session, on a less loaded machine,
    /// measured the 12 KiB case the other way: T=128 334 -> 296, T=512 356 -> 325.)</item>
    /// </list>
    /// </summary>
    static int PanelMinRows<TW>(long ldwBytes) where TW : IWeightLoad =>
        typeof(TW) == typeof(F16FiniteLoad) || typeof(TW) == typeof(F16Load) ? 32
        : typeof(TW) == typeof(BF16Load) ? 64
        : ldwBytes % 4096 == 0 ? 24 : int.MaxValue;

    [ThreadStatic] static float[]? t_panel;

    /// <summary>
    /// Weight rows per K block of the many-row input-major product: 768 rows × 64 columns (192 KiB of F32) stay in L2
    /// while every 6-row group of x passes over them; K up to 1152 is one block (GPT-2-small: every K = 768 product).
    /// Measured from memory, 2 threads, GPT-2-small shapes: one pass over K = 3072 227–234 GFLOP/s, blocks of 768
    /// 297–373, of 384 294–385 (an earlier session). 2026-12-07, AMD Zen 4 guest (L2 1 MiB per core), 384 -> 768 rows,
    /// paired in one process (median of 11-15 rounds, 16 rotating matrices): F32 T=128 +1 to +4% on the four shapes,
    /// T=512 +1 to +10%, T=16 +4 to +27%; BF16 T=128/512 +2 to +12%; F16 T=128/512 -5 to +6%; 256 rows: -2 to -3%.
    /// </summary>
    const int KBlockRows = 768;

    /// <summary>
    /// y[m * ldy + n] (+)= sum over k in [k0, k1) of x[m * ldx + k] W[k, n] (+ bias[n]) for m &lt; M, n in [n0, n1);
    /// row k of W starts at w + k * ldwBytes. With accumulate the chain continues from the value already in y (stored
    /// exactly as float), so splitting k into ranges gives bit-identical results; the bias is only added when given.
    /// </summary>
    public static void InMajor<TW>(float* x, long ldx, int M, int k0, int k1, byte* w, long ldwBytes, float* bias, float* y, long ldy, int n0, int n1, bool accumulate, NextBlock next = default) where TW : IWeightLoad
    {
        int n = n0;
        for (; n + 64 <= n1; n += 64)
        {
            int m = 0;
            // Two rows left over (M = 6q + 2, as at 128 and 512) go as 6 + 2 = 4 + 4: the one-row kernel has four FMA
            // chains, too few to hide the FMA latency.
            int m6 = M % 6 == 2 && M >= 8 ? M - 8 : M;
            // Group g prefetches lines [g * perGroup, (g + 1) * perGroup) of the next block (in row-major order), spread
            // evenly over its k steps, so the prefetches run all through this block instead of in a burst at its start.
            // Measured from memory (40 rotating matrices, 2 threads, interleaved in one process), one line of every row
            // per group in the first groups -> spread: [128×768]·[768×2304] 185 -> 204 and 158 -> 178 GFLOP/s,
            // [128×3072]·[3072×768] 206 -> 230 and 158 -> 173, [128×768]·[768×768] 200 -> 237; T = 512 within ±3%.
            int groups = m6 / 6;
            long lines = next.P == null ? 0 : (long)next.Rows * next.Lines;
            int perGroup = groups == 0 ? 0 : (int)((lines + groups - 1) / groups);
            for (; m + 6 <= m6; m += 6)
            {
                long i0 = (long)(m / 6) * perGroup;
                int count = (int)Math.Clamp(lines - i0, 0, perGroup);
                int col = count == 0 ? 0 : (int)(i0 % next.Lines) * 64;
                byte* start = count == 0 ? null : next.P + i0 / next.Lines * next.Ld + col;
                // Fewer k steps than lines (few row groups, as at 16 rows): several lines per step, so the whole block is
                // prefetched.
                int batch = count == 0 ? 1 : (count + (k1 - k0) - 1) / (k1 - k0);
                int stepsUsed = (count + batch - 1) / batch;
                Bcast6x64<TW>(x + m * ldx, ldx, k0, k1, w + (long)n * TW.Size, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n, ldy, accumulate,
                    start, next.Ld, count, next.Lines * 64, col, count == 0 ? 1 : Math.Max(1, (k1 - k0) / stepsUsed), batch);
            }
            for (; m + 4 <= M; m += 4) Bcast4x64<TW>(x + m * ldx, ldx, k0, k1, w + (long)n * TW.Size, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n, ldy, accumulate);
            for (; m < M; m++) Bcast1x64<TW>(x + m * ldx, k0, k1, w + (long)n * TW.Size, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n, accumulate);
        }
        for (; n + 16 <= n1; n += 16)
            for (int m = 0; m < M; m++) Bcast1x16<TW>(x + m * ldx, k0, k1, w + (long)n * TW.Size, ldwBytes, bias == null ? null : bias + n, y + m * ldy + n, accumulate);
        for (; n < n1; n++)
            for (int m = 0; m < M; m++)
            {
                float* xr = x + m * ldx;
                byte* wc = w + (long)n * TW.Size;
                float* yp = y + m * ldy + n;
                float s = accumulate ? *yp : 0f;
                for (int k = k0; k < k1; k++) s = MathF.FusedMultiplyAdd(xr[k], TW.Load1(wc + k * ldwBytes), s);
                *yp = bias == null ? s : s + bias[n];
            }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Init16(float* y, bool accumulate) => accumulate ? Vector512.Load(y) : default;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store16(float* y, Vector512<float> acc, float* bias)
    {
        if (bias != null) acc += Vector512.Load(bias);
        Vector512.Store(acc, y);
    }

    /// <summary>Six rows × 64 columns (24 accumulators): four weight loads per 24 FMAs; the per-element chain of Bcast4x64.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Bcast6x64<TW>(float* x, long ldx, int k0, int k1, byte* w, long ldw, float* bias, float* y, long ldy, bool acc, byte* pf, long pfLd, int pfCount, int pfRowBytes, int pfCol, int pfStep, int pfBatch) where TW : IWeightLoad
    {
        // pf: the first line to prefetch; then pfCount lines in row-major order (pfRowBytes per row, rows pfLd apart), pfBatch
        // every pfStep k steps.
        int pfAt = pfCount > 0 ? k0 : int.MaxValue;
        pf -= pfCol;
        float* y0 = y, y1 = y + ldy, y2 = y + 2 * ldy, y3 = y + 3 * ldy, y4 = y + 4 * ldy, y5 = y + 5 * ldy;
        Vector512<float> c00 = Init16(y0, acc), c01 = Init16(y0 + 16, acc), c02 = Init16(y0 + 32, acc), c03 = Init16(y0 + 48, acc);
        Vector512<float> c10 = Init16(y1, acc), c11 = Init16(y1 + 16, acc), c12 = Init16(y1 + 32, acc), c13 = Init16(y1 + 48, acc);
        Vector512<float> c20 = Init16(y2, acc), c21 = Init16(y2 + 16, acc), c22 = Init16(y2 + 32, acc), c23 = Init16(y2 + 48, acc);
        Vector512<float> c30 = Init16(y3, acc), c31 = Init16(y3 + 16, acc), c32 = Init16(y3 + 32, acc), c33 = Init16(y3 + 48, acc);
        Vector512<float> c40 = Init16(y4, acc), c41 = Init16(y4 + 16, acc), c42 = Init16(y4 + 32, acc), c43 = Init16(y4 + 48, acc);
        Vector512<float> c50 = Init16(y5, acc), c51 = Init16(y5 + 16, acc), c52 = Init16(y5 + 32, acc), c53 = Init16(y5 + 48, acc);
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx, x4 = x + 4 * ldx, x5 = x + 5 * ldx;
        int s = TW.Size;
        for (int k = k0; k < k1; k++)
        {
            if (k == pfAt)
            {
                for (int i = 0; i < pfBatch && pfCount > 0; i++, pfCount--)
                {
                    if (Sse.IsSupported) Sse.Prefetch1(pf + pfCol);
                    pfCol += 64;
                    if (pfCol >= pfRowBytes) { pfCol = 0; pf += pfLd; }
                }
                pfAt = pfCount > 0 ? pfAt + pfStep : int.MaxValue;
            }
            byte* wr = w + k * ldw;
            var b0 = TW.Load16(wr);
            var b1 = TW.Load16(wr + 16 * s);
            var b2 = TW.Load16(wr + 32 * s);
            var b3 = TW.Load16(wr + 48 * s);
            var a = Vector512.Create(x0[k]);
            c00 = Vector512.FusedMultiplyAdd(a, b0, c00); c01 = Vector512.FusedMultiplyAdd(a, b1, c01);
            c02 = Vector512.FusedMultiplyAdd(a, b2, c02); c03 = Vector512.FusedMultiplyAdd(a, b3, c03);
            a = Vector512.Create(x1[k]);
            c10 = Vector512.FusedMultiplyAdd(a, b0, c10); c11 = Vector512.FusedMultiplyAdd(a, b1, c11);
            c12 = Vector512.FusedMultiplyAdd(a, b2, c12); c13 = Vector512.FusedMultiplyAdd(a, b3, c13);
            a = Vector512.Create(x2[k]);
            c20 = Vector512.FusedMultiplyAdd(a, b0, c20); c21 = Vector512.FusedMultiplyAdd(a, b1, c21);
            c22 = Vector512.FusedMultiplyAdd(a, b2, c22); c23 = Vector512.FusedMultiplyAdd(a, b3, c23);
            a = Vector512.Create(x3[k]);
            c30 = Vector512.FusedMultiplyAdd(a, b0, c30); c31 = Vector512.FusedMultiplyAdd(a, b1, c31);
            c32 = Vector512.FusedMultiplyAdd(a, b2, c32); c33 = Vector512.FusedMultiplyAdd(a, b3, c33);
            a = Vector512.Create(x4[k]);
            c40 = Vector512.FusedMultiplyAdd(a, b0, c40); c41 = Vector512.FusedMultiplyAdd(a, b1, c41);
            c42 = Vector512.FusedMultiplyAdd(a, b2, c42); c43 = Vector512.FusedMultiplyAdd(a, b3, c43);
            a = Vector512.Create(x5[k]);
            c50 = Vector512.FusedMultiplyAdd(a, b0, c50); c51 = Vector512.FusedMultiplyAdd(a, b1, c51);
            c52 = Vector512.FusedMultiplyAdd(a, b2, c52); c53 = Vector512.FusedMultiplyAdd(a, b3, c53);
        }
        float* bb0 = bias, bb1 = bias == null ? null : bias + 16, bb2 = bias == null ? null : bias + 32, bb3 = bias == null ? null : bias + 48;
        Store16(y0, c00, bb0); Store16(y0 + 16, c01, bb1); Store16(y0 + 32, c02, bb2); Store16(y0 + 48, c03, bb3);
        Store16(y1, c10, bb0); Store16(y1 + 16, c11, bb1); Store16(y1 + 32, c12, bb2); Store16(y1 + 48, c13, bb3);
        Store16(y2, c20, bb0); Store16(y2 + 16, c21, bb1); Store16(y2 + 32, c22, bb2); Store16(y2 + 48, c23, bb3);
        Store16(y3, c30, bb0); Store16(y3 + 16, c31, bb1); Store16(y3 + 32, c32, bb2); Store16(y3 + 48, c33, bb3);
        Store16(y4, c40, bb0); Store16(y4 + 16, c41, bb1); Store16(y4 + 32, c42, bb2); Store16(y4 + 48, c43, bb3);
        Store16(y5, c50, bb0); Store16(y5 + 16, c51, bb1); Store16(y5 + 32, c52, bb2); Store16(y5 + 48, c53, bb3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Bcast4x64<TW>(float* x, long ldx, int k0, int k1, byte* w, long ldw, float* bias, float* y, long ldy, bool acc) where TW : IWeightLoad
    {
        float* y0 = y, y1 = y + ldy, y2 = y + 2 * ldy, y3 = y + 3 * ldy;
        Vector512<float> c00 = Init16(y0, acc), c01 = Init16(y0 + 16, acc), c02 = Init16(y0 + 32, acc), c03 = Init16(y0 + 48, acc);
        Vector512<float> c10 = Init16(y1, acc), c11 = Init16(y1 + 16, acc), c12 = Init16(y1 + 32, acc), c13 = Init16(y1 + 48, acc);
        Vector512<float> c20 = Init16(y2, acc), c21 = Init16(y2 + 16, acc), c22 = Init16(y2 + 32, acc), c23 = Init16(y2 + 48, acc);
        Vector512<float> c30 = Init16(y3, acc), c31 = Init16(y3 + 16, acc), c32 = Init16(y3 + 32, acc), c33 = Init16(y3 + 48, acc);
        float* x0 = x, x1 = x + ldx, x2 = x + 2 * ldx, x3 = x + 3 * ldx;
        int s = TW.Size;
        for (int k = k0; k < k1; k++)
        {
            byte* wr = w + k * ldw;
            var b0 = TW.Load16(wr);
            var b1 = TW.Load16(wr + 16 * s);
            var b2 = TW.Load16(wr + 32 * s);
            var b3 = TW.Load16(wr + 48 * s);
            var a = Vector512.Create(x0[k]);
            c00 = Vector512.FusedMultiplyAdd(a, b0, c00); c01 = Vector512.FusedMultiplyAdd(a, b1, c01);
            c02 = Vector512.FusedMultiplyAdd(a, b2, c02); c03 = Vector512.FusedMultiplyAdd(a, b3, c03);
            a = Vector512.Create(x1[k]);
            c10 = Vector512.FusedMultiplyAdd(a, b0, c10); c11 = Vector512.FusedMultiplyAdd(a, b1, c11);
            c12 = Vector512.FusedMultiplyAdd(a, b2, c12); c13 = Vector512.FusedMultiplyAdd(a, b3, c13);
            a = Vector512.Create(x2[k]);
            c20 = Vector512.FusedMultiplyAdd(a, b0, c20); c21 = Vector512.FusedMultiplyAdd(a, b1, c21);
            c22 = Vector512.FusedMultiplyAdd(a, b2, c22); c23 = Vector512.FusedMultiplyAdd(a, b3, c23);
            a = Vector512.Create(x3[k]);
            c30 = Vector512.FusedMultiplyAdd(a, b0, c30); c31 = Vector512.FusedMultiplyAdd(a, b1, c31);
            c32 = Vector512.FusedMultiplyAdd(a, b2, c32); c33 = Vector512.FusedMultiplyAdd(a, b3, c33);
        }
        float* bb0 = bias, bb1 = bias == null ? null : bias + 16, bb2 = bias == null ? null : bias + 32, bb3 = bias == null ? null : bias + 48;
        Store16(y0, c00, bb0); Store16(y0 + 16, c01, bb1); Store16(y0 + 32, c02, bb2); Store16(y0 + 48, c03, bb3);
        Store16(y1, c10, bb0); Store16(y1 + 16, c11, bb1); Store16(y1 + 32, c12, bb2); Store16(y1 + 48, c13, bb3);
        Store16(y2, c20, bb0); Store16(y2 + 16, c21, bb1); Store16(y2 + 32, c22, bb2); Store16(y2 + 48, c23, bb3);
        Store16(y3, c30, bb0); Store16(y3 + 16, c31, bb1); Store16(y3 + 32, c32, bb2); Store16(y3 + 48, c33, bb3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Bcast1x64<TW>(float* x, int k0, int k1, byte* w, long ldw, float* bias, float* y, bool acc) where TW : IWeightLoad
    {
        Vector512<float> c0 = Init16(y, acc), c1 = Init16(y + 16, acc), c2 = Init16(y + 32, acc), c3 = Init16(y + 48, acc);
        int s = TW.Size;
        for (int k = k0; k < k1; k++)
        {
            byte* wr = w + k * ldw;
            var a = Vector512.Create(x[k]);
            c0 = Vector512.FusedMultiplyAdd(a, TW.Load16(wr), c0);
            c1 = Vector512.FusedMultiplyAdd(a, TW.Load16(wr + 16 * s), c1);
            c2 = Vector512.FusedMultiplyAdd(a, TW.Load16(wr + 32 * s), c2);
            c3 = Vector512.FusedMultiplyAdd(a, TW.Load16(wr + 48 * s), c3);
        }
        Store16(y, c0, bias);
        Store16(y + 16, c1, bias == null ? null : bias + 16);
        Store16(y + 32, c2, bias == null ? null : bias + 32);
        Store16(y + 48, c3, bias == null ? null : bias + 48);
    }

    static void Bcast1x16<TW>(float* x, int k0, int k1, byte* w, long ldw, float* bias, float* y, bool acc) where TW : IWeightLoad
    {
        Vector512<float> c = Init16(y, acc);
        for (int k = k0; k < k1; k++) c = Vector512.FusedMultiplyAdd(Vector512.Create(x[k]), TW.Load16(w + k * ldw), c);
        Store16(y, c, bias);
    }
    // ------------------------------------------------------------------ one row (decode): stream the weights in memory order

    /// <summary>
    /// y[n] = dot(x, W row n) (+ bias[n]) for n in [n0, n1) and one row x: rows one after another (a single sequential
    /// stream the hardware prefetcher follows), four accumulators over 64-element steps for instruction-level parallelism.
    /// Per element: (acc0 + acc1 + acc2 + acc3) lane sum, then 16-wide steps, then scalar tail, then the bias.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void OutMajorRow<TW>(float* x, int K, byte* w, float* bias, float* y, int n0, int n1) where TW : IWeightLoad
    {
        long ldw = (long)K * TW.Size;
        int k64 = K & ~63, k16 = K & ~15;
        for (int n = n0; n < n1; n++)
        {
            byte* wr = w + n * ldw;
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
            int k = 0;
            for (; k < k64; k += 64)
            {
                if (Sse.IsSupported)
                {
                    byte* pf = wr + (long)k * TW.Size + OutRowPrefetch * TW.Size;
                    for (int line = 0; line < 64 * TW.Size; line += 64) Sse.Prefetch1(pf + line);
                }
                if (typeof(TW) == typeof(F16BitsCheckedLoad))
                {
                    c0 = F16BitsCheckedLoad.Fma(Vector512.Load(x + k), wr + (long)k * 2, c0);
                    c1 = F16BitsCheckedLoad.Fma(Vector512.Load(x + k + 16), wr + (long)(k + 16) * 2, c1);
                    c2 = F16BitsCheckedLoad.Fma(Vector512.Load(x + k + 32), wr + (long)(k + 32) * 2, c2);
                    c3 = F16BitsCheckedLoad.Fma(Vector512.Load(x + k + 48), wr + (long)(k + 48) * 2, c3);
                    continue;
                }
                c0 = Vector512.FusedMultiplyAdd(Vector512.Load(x + k), TW.Load16(wr + (long)k * TW.Size), c0);
                c1 = Vector512.FusedMultiplyAdd(Vector512.Load(x + k + 16), TW.Load16(wr + (long)(k + 16) * TW.Size), c1);
                c2 = Vector512.FusedMultiplyAdd(Vector512.Load(x + k + 32), TW.Load16(wr + (long)(k + 32) * TW.Size), c2);
                c3 = Vector512.FusedMultiplyAdd(Vector512.Load(x + k + 48), TW.Load16(wr + (long)(k + 48) * TW.Size), c3);
            }
            for (; k < k16; k += 16) c0 = Vector512.FusedMultiplyAdd(Vector512.Load(x + k), TW.Load16(wr + (long)k * TW.Size), c0);
            float s = Vector512.Sum((c0 + c1) + (c2 + c3));
            for (; k < K; k++) s = MathF.FusedMultiplyAdd(x[k], TW.Load1(wr + (long)k * TW.Size), s);
            y[n] = bias == null ? s : s + bias[n];
        }
    }

    /// <summary>Rows of input-major weights per decode work item: a contiguous block of RowChunk × N weights.</summary>
    public const int RowChunk = 128;

    /// <summary>
    /// Bytes ahead that the row passes of the decode product prefetch in each of their rows when a row is ≥ 4 KiB (one
    /// 4 KiB page or more: the hardware prefetchers stop at the page end). Measured from memory with four-row passes,
    /// 2 threads, in one process alternating: 768 → 3072 35.6 → 38.2 GB/s, 768 → 2304 31.3 → 37.1; for shorter rows it
    /// cost 10–15%.
    /// </summary>
    const int LongRowPrefetch = 2048;

    /// <summary>
    /// Weights ahead (in memory order: the rows follow each other) that the out-major matrix-vector product prefetches,
    /// every cache line of each step: 2 KiB of F32, 1 KiB of BF16/F16, the same time ahead at the same GB/s. Measured in
    /// SmolLM2-135M F32 decode (engine profile, alternating runs): the projections 25-30 -> 34-42 GB/s, `engine bench`
    /// decode 48.1 -> 64.1 tokens/s; 4096 was no better. Into L2 (prefetcht1), not L1: on an AMD Zen 4 guest
    /// (2026-12-07, paired with a plain read of the same bytes) rows of 768 floats read at 0.66-0.78 of the plain read
    /// with prefetcht0 (worse than none, 0.83-0.86) and 0.92-0.98 with prefetcht1; the LM head (768 -> 50257) 0.65 ->
    /// 0.93. BF16 with 2 KiB ahead (1024 weights) read at 0.58-0.77 of the plain read, with 1 KiB 0.86-0.98 (same run).
    /// </summary>
    const int OutRowPrefetch = 512;

    /// <summary>
    /// Decode through input-major weights W [K, N], part 1: partial[c][0..N) = sum over k in chunk c (rows
    /// c*RowChunk..) of x[k] W[k, :], k ascending, from 0. Each item streams whole rows in memory order; the partial
    /// row stays in L1. Part 2 (<see cref="SumChunks"/>) adds the chunks in order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void InMajorRowChunk<TW>(float* x, int K, int N, byte* w, int chunk, float* partial) where TW : IWeightLoad
    {
        int k0 = chunk * RowChunk, k1 = Math.Min(K, k0 + RowChunk);
        float* p = partial + (long)chunk * N;
        new Span<float>(p, N).Clear();
        long ldw = (long)N * TW.Size;
        AccumulateRows<TW>(x, k0, k1, w, ldw, N, p);
    }

    /// <summary>p[0..width) = fma(x[k], w[k, 0..width), p) for k = k0 .. k1 - 1 in order; row k of w at w + k * ldw.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AccumulateRows<TW>(float* x, int k0, int k1, byte* w, long ldw, int width, float* p) where TW : IWeightLoad
    {
        int n16 = width & ~15;
        // Rows of ≥ 4 KiB prefetch ahead within the rows (PrefetchAhead); shorter rows prefetch the next pass's rows at
        // the same offsets (they follow this pass's rows in memory). Measured in GPT-2-small F32 decode (engine profile,
        // alternating runs), four-row passes: mlp.c_proj 3072 -> 768 35-37 -> 40-45 GB/s, attn.c_proj 36-39 -> 42-44.
        bool prefetch = (long)width * TW.Size >= 4096 && Sse.IsSupported;
        bool prefetchNext = !prefetch && Sse.IsSupported;
        int k = k0;
        // F16 first in its scaled form (2^112 moved onto x) while x allows it, then every dtype in its own form.
        if (typeof(TW) == typeof(F16FiniteLoad)) k = Pass8<F16BitsLoad>(x, k, k1, w, ldw, width, n16, p, prefetch, prefetchNext, scaled: true);
        if (typeof(TW) == typeof(F16SubnormalLoad)) k = Pass8<F16BitsCheckedLoad>(x, k, k1, w, ldw, width, n16, p, prefetch, prefetchNext, scaled: true);
        k = Pass8<TW>(x, k, k1, w, ldw, width, n16, p, prefetch, prefetchNext, scaled: false);
        long next = 4 * ldw;
        for (; k + 4 <= k1; k += 4)
        {
            byte* w0 = w + k * ldw, w1 = w0 + ldw, w2 = w1 + ldw, w3 = w2 + ldw;
            var a0 = Vector512.Create(x[k]); var a1 = Vector512.Create(x[k + 1]);
            var a2 = Vector512.Create(x[k + 2]); var a3 = Vector512.Create(x[k + 3]);
            int n = 0;
            for (; n < n16; n += 16)
            {
                long o = (long)n * TW.Size;
                if (prefetchNext) Prefetch4(w0 + o + next, ldw);
                var acc = Vector512.Load(p + n);
                acc = Vector512.FusedMultiplyAdd(a0, TW.Load16(w0 + o), acc);
                acc = Vector512.FusedMultiplyAdd(a1, TW.Load16(w1 + o), acc);
                acc = Vector512.FusedMultiplyAdd(a2, TW.Load16(w2 + o), acc);
                acc = Vector512.FusedMultiplyAdd(a3, TW.Load16(w3 + o), acc);
                Vector512.Store(acc, p + n);
            }
            for (; n < width; n++)
            {
                long o = (long)n * TW.Size;
                float acc = p[n];
                acc = MathF.FusedMultiplyAdd(x[k], TW.Load1(w0 + o), acc);
                acc = MathF.FusedMultiplyAdd(x[k + 1], TW.Load1(w1 + o), acc);
                acc = MathF.FusedMultiplyAdd(x[k + 2], TW.Load1(w2 + o), acc);
                acc = MathF.FusedMultiplyAdd(x[k + 3], TW.Load1(w3 + o), acc);
                p[n] = acc;
            }
        }
        for (; k < k1; k++)
        {
            byte* wr = w + k * ldw;
            float xk = x[k];
            var a = Vector512.Create(xk);
            int n = 0;
            for (; n < n16; n += 16) Vector512.Store(Vector512.FusedMultiplyAdd(a, TW.Load16(wr + (long)n * TW.Size), Vector512.Load(p + n)), p + n);
            for (; n < width; n++) p[n] = MathF.FusedMultiplyAdd(xk, TW.Load1(wr + (long)n * TW.Size), p[n]);
        }
    }

    /// <summary>
    /// The eight-row passes of <see cref="AccumulateRows{TW}"/> from row k while eight rows are left: per column the chain
    /// p = fma(x[k], w[k], p) for the eight rows in order (the same operations as one row at a time), one load and store of
    /// p per eight rows, and per step one cache line of every row (16 four-byte or 32 two-byte columns) with one prefetch
    /// per row. Measured in GPT-2-small decode (engine profile, alternating runs of the builds before and after), four ->
    /// eight rows per pass: F32 75.4-77.1 -> 82.6-83.1 tokens/s (mlp.c_proj 35-36 -> 40 GB/s, attn.c_attn 37-38 -> 43),
    /// BF16 132-135 -> 141-147, F16 127-132 -> 144-146 (mlp.c_proj 28-29 -> 36).
    /// scaled (TW = <see cref="F16BitsLoad"/>, weights F16 read as 2^-112 times their value): x is multiplied by 2^112
    /// (fma(bits, x · 2^112, p) = fma(w, x, p) bit for bit: the FMA's product is exact, both scalings are exact), valid
    /// while |x| &lt; 2^15: a pass whose eight x are not all below that (or not finite) stops here. Returns the first row
    /// not done.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static int Pass8<TW>(float* x, int k, int k1, byte* w, long ldw, int width, int n16, float* p, bool prefetch, bool prefetchNext, bool scaled) where TW : IWeightLoad
    {
        const int Line = 64;
        int step = Line / TW.Size;                   // columns per cache line: 16 or 32
        for (; k + 8 <= k1; k += 8)
        {
            float s = 1f;
            if (scaled)
            {
                for (int r = 0; r < 8; r++)
                    if (!(MathF.Abs(x[k + r]) < 32768f)) return k;
                s = F16FiniteLoad.Scale;
            }
            byte* w0 = w + k * ldw;
            var a0 = Vector512.Create(x[k] * s); var a1 = Vector512.Create(x[k + 1] * s);
            var a2 = Vector512.Create(x[k + 2] * s); var a3 = Vector512.Create(x[k + 3] * s);
            var a4 = Vector512.Create(x[k + 4] * s); var a5 = Vector512.Create(x[k + 5] * s);
            var a6 = Vector512.Create(x[k + 6] * s); var a7 = Vector512.Create(x[k + 7] * s);
            int n = 0;
            for (; n + step <= n16; n += step)
            {
                long o = (long)n * TW.Size;
                if (prefetch)
                {
                    // Past a row's end, the line of the row eight further on (the next pass's row at the same place), so
                    // the next pass does not start with seven of its eight rows cold (four-row passes, without -> with:
                    // F16 mlp.c_fc 23.9 -> 26.4-26.8 GB/s, F32 36-37 -> 40).
                    long f = o + LongRowPrefetch;
                    if (f >= ldw) f += 7 * ldw;
                    Prefetch4(w0 + f, ldw); Prefetch4(w0 + f + 4 * ldw, ldw);
                }
                else if (prefetchNext) { Prefetch4(w0 + o + 8 * ldw, ldw); Prefetch4(w0 + o + 12 * ldw, ldw); }
                Column8<TW>(p + n, w0 + o, ldw, a0, a1, a2, a3, a4, a5, a6, a7);
                if (TW.Size == 2) Column8<TW>(p + n + 16, w0 + o + 32, ldw, a0, a1, a2, a3, a4, a5, a6, a7);
            }
            for (; n < n16; n += 16) Column8<TW>(p + n, w0 + (long)n * TW.Size, ldw, a0, a1, a2, a3, a4, a5, a6, a7);
            for (; n < width; n++)
            {
                byte* wo = w0 + (long)n * TW.Size;
                float acc = p[n];
                for (int r = 0; r < 8; r++) acc = MathF.FusedMultiplyAdd(x[k + r] * s, TW.Load1(wo + r * ldw), acc);
                p[n] = acc;
            }
        }
        return k;
    }

    /// <summary>p[0..16) = fma(a7, w7, ... fma(a0, w0, p)), w_r the 16 weights at wo + r * ldw: one column step of <see cref="Pass8{TW}"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Column8<TW>(float* p, byte* wo, long ldw, Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> a4, Vector512<float> a5, Vector512<float> a6, Vector512<float> a7) where TW : IWeightLoad
    {
        var acc = Vector512.Load(p);
        if (typeof(TW) == typeof(F16BitsCheckedLoad))
        {
            acc = F16BitsCheckedLoad.Fma(a0, wo, acc);
            acc = F16BitsCheckedLoad.Fma(a1, wo + ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a2, wo + 2 * ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a3, wo + 3 * ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a4, wo + 4 * ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a5, wo + 5 * ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a6, wo + 6 * ldw, acc);
            acc = F16BitsCheckedLoad.Fma(a7, wo + 7 * ldw, acc);
            Vector512.Store(acc, p);
            return;
        }
        acc = Vector512.FusedMultiplyAdd(a0, TW.Load16(wo), acc);
        acc = Vector512.FusedMultiplyAdd(a1, TW.Load16(wo + ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a2, TW.Load16(wo + 2 * ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a3, TW.Load16(wo + 3 * ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a4, TW.Load16(wo + 4 * ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a5, TW.Load16(wo + 5 * ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a6, TW.Load16(wo + 6 * ldw), acc);
        acc = Vector512.FusedMultiplyAdd(a7, TW.Load16(wo + 7 * ldw), acc);
        Vector512.Store(acc, p);
    }

    /// <summary>
    /// Prefetches one cache line in each of four rows ldw bytes apart, from p, into L2 (prefetcht1); the L1 prefetchers
    /// take it from there. Into L1 (prefetcht0) the prefetches compete with the demand loads for L1 miss buffers: measured
    /// 2026-12-07 on an AMD Zen 4 guest (2 threads, 16 rotating matrices, paired with a plain read of the same bytes),
    /// eight-row passes 768 -> 3072 0.76 -> 0.93 of the plain read, 768 -> 2304 0.81 -> 0.95, 3072 -> 768 0.77 -> 0.94.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Prefetch4(byte* p, long ldw)
    {
        Sse.Prefetch1(p); Sse.Prefetch1(p + ldw); Sse.Prefetch1(p + 2 * ldw); Sse.Prefetch1(p + 3 * ldw);
    }

    /// <summary>Part 2: y[n] = ((partial[0][n] + partial[1][n]) + ...) (+ bias[n]) for n in [n0, n1), chunks in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SumChunks(float* partial, int chunks, int N, float* bias, float* y, int n0, int n1)
    {
        int n = n0;
        for (; n + 16 <= n1; n += 16)
        {
            var s = Vector512.Load(partial + n);
            for (int c = 1; c < chunks; c++) s += Vector512.Load(partial + (long)c * N + n);
            if (bias != null) s += Vector512.Load(bias + n);
            Vector512.Store(s, y + n);
        }
        for (; n < n1; n++)
        {
            float s = partial[n];
            for (int c = 1; c < chunks; c++) s += partial[(long)c * N + n];
            y[n] = bias == null ? s : s + bias[n];
        }
    }
}
