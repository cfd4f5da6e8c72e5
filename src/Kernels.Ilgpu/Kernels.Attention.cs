// Causal attention with GQA (query head h reads kv head h / (H/K)). Shapes as IKernels: q [T, H, d], k/v [Tk, K, d],
// scores/pattern [H, T, Tk], z [T, H, d]; row t sits at position pos0 + t and sees keys 0..pos0+t.
//   Scores   a thread per score:          Score()  (d-long dot product in index order, times scale; -inf above the diagonal)
//   Softmax  a warp per (head, row):      SoftmaxRow() (lane-strided max and sum, combined through shared memory in lane order)
//   Mix      a thread per z element:      MixAt()  (sum over visible keys in key order)
//   Flash    a warp per (head, row), several warps per group: the fused op, an online softmax over tiles of 32 keys
//            (FlashKernel). No scores or pattern anywhere in global memory.
// The runtime uses the three steps when a hook taps scores or pattern, the flash kernel otherwise. The two agree within
// float rounding, not bit for bit (IKernels.Attention; src/Kernels.Ilgpu/README.md).
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace Engine.Kernels.Ilgpu;

/// <summary>Dimensions of one attention call (AttentionShape plus derived values).</summary>
public struct AttnDims
{
    public int Rows, Pos0, Heads, KvHeads, HeadDim, Group, Keys;
    public float Scale;
}

internal static class AttentionKernels
{
    public const int Lanes = 32;

    /// <summary>max that propagates NaN (as Math.Max does in the reference).</summary>
    public static float MaxNaN(float a, float b) => float.IsNaN(a) ? a : float.IsNaN(b) ? b : a > b ? a : b;

    public static float Score(ArrayView<float> q, ArrayView<float> k, AttnDims s, int h, int t, int j)
    {
        if (j > s.Pos0 + t) return float.NegativeInfinity;
        int d = s.HeadDim, qb = (t * s.Heads + h) * d, kb = (j * s.KvHeads + h / s.Group) * d;
        float acc = 0;
        for (int i = 0; i < d; i++) acc += q[qb + i] * k[kb + i];
        return acc * s.Scale;
    }

    public static float MixAt(ArrayView<float> pattern, ArrayView<float> v, AttnDims s, int h, int t, int i)
    {
        int n = s.Pos0 + t + 1, off = (h * s.Rows + t) * s.Keys, d = s.HeadDim, vb = (h / s.Group) * d + i, vs = s.KvHeads * d;
        float acc = 0;
        for (int j = 0; j < n; j++) acc += pattern[off + j] * v[j * vs + vb];
        return acc;
    }

    /// <summary>One row of the softmax by the 32 lanes of a group (lane = Group.IdxX). Two group barriers.</summary>
    public static void SoftmaxRow(ArrayView<float> scores, ArrayView<float> pattern, AttnDims s, int h, int t,
        ArrayView<float> sharedMax, ArrayView<float> sharedSum)
    {
        int lane = Group.IdxX, n = s.Pos0 + t + 1, tk = s.Keys, off = (h * s.Rows + t) * tk;
        float m = float.NegativeInfinity;
        for (int j = lane; j < n; j += Lanes) m = MaxNaN(m, scores[off + j]);
        sharedMax[lane] = m;
        Group.Barrier();
        float max = sharedMax[0];
        for (int l = 1; l < Lanes; l++) max = MaxNaN(max, sharedMax[l]);
        float sum = 0;
        for (int j = lane; j < n; j += Lanes)
        {
            float e = XMath.Exp(scores[off + j] - max);
            pattern[off + j] = e;
            sum += e;
        }
        sharedSum[lane] = sum;
        Group.Barrier();
        float total = 0;
        for (int l = 0; l < Lanes; l++) total += sharedSum[l];
        for (int j = lane; j < tk; j += Lanes) pattern[off + j] = j < n ? pattern[off + j] / total : 0f;
    }

    /// <summary>Flat over H x T x Tk.</summary>
    public static void ScoresKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<float> scores, AttnDims s)
    {
        int total = s.Heads * s.Rows * s.Keys, stride = Grid.DimX * Group.DimX;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += stride)
        {
            int j = idx % s.Keys, ht = idx / s.Keys, t = ht % s.Rows, h = ht / s.Rows;
            scores[idx] = Score(q, k, s, h, t, j);
        }
    }

    /// <summary>A group of 32 lanes per (head, row): Grid.IdxX = h * T + t.</summary>
    public static void SoftmaxKernel(ArrayView<float> scores, ArrayView<float> pattern, AttnDims s)
    {
        var sm = SharedMemory.Allocate<float>(Lanes);
        var ss = SharedMemory.Allocate<float>(Lanes);
        int r = Grid.IdxX;
        SoftmaxRow(scores, pattern, s, r / s.Rows, r % s.Rows, sm, ss);
    }

    /// <summary>Flat over T x H x d.</summary>
    public static void MixKernel(ArrayView<float> pattern, ArrayView<float> v, ArrayView<float> z, AttnDims s)
    {
        int total = s.Rows * s.Heads * s.HeadDim, stride = Grid.DimX * Group.DimX;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += stride)
        {
            int i = idx % s.HeadDim, th = idx / s.HeadDim, h = th % s.Heads, t = th / s.Heads;
            z[idx] = MixAt(pattern, v, s, h, t, i);
        }
    }

    // ------------------------------------------------------------------ flash attention (the fused op)

    /// <summary>Head dimensions staged in shared memory per pass (a longer head is done in several passes per tile).</summary>
    public const int FlashChunk = 64;
    /// <summary>Row stride of the staged key tile: one float of padding, so lane j reading key j hits bank (j + i) % 32.</summary>
    const int FlashKStride = FlashChunk + 1;
    /// <summary>Shared floats per warp: the key tile [32][FlashKStride], the q chunk, the tile's scores and weights.</summary>
    public const int FlashPerWarp = Lanes * FlashKStride + FlashChunk + 2 * Lanes;
    /// <summary>Most warps per group (the static shared allocation holds this many warps' slices: 35 KB).</summary>
    public const int FlashMaxWarps = 4;

    /// <summary>
    /// Online-softmax causal attention. Each warp owns one (head h, row t), r = Grid.IdxX * warps + warp = h * T + t, and
    /// walks its n = pos0 + t + 1 visible keys in tiles of 32, one key per lane:
    /// 1. the tile's keys are staged in shared memory (coalesced, FlashChunk dims per pass, with the q chunk), and lane j
    ///    computes the score of key j0 + j (dot product in index order, times scale);
    /// 2. every lane reads the 32 scores and takes the tile max (NaN-propagating, in lane order: the same value in every
    ///    lane); m_new = max(m, tile max);
    /// 3. lane j writes its weight p_j = exp(s_j - m_new); l = l * exp(m - m_new) + sum_j p_j (lane order);
    /// 4. lane i owns the accumulator entries i, i + 32, ... of the row, which live in z itself:
    ///    z_i = z_i * exp(m - m_new) + sum_j p_j v[j0 + j, i] (key order), and on the last tile z_i / l.
    /// Three warp barriers per tile (plus one per extra head-dim pass); memory: z itself and the shared tile, nothing
    /// that grows with Tk. Special values follow the reference (max, exp(s - max), sum, divide): a NaN score or a +inf
    /// score makes the row NaN, a row whose visible scores are all -inf is 0/0 = NaN, -inf scores weigh exactly 0, and
    /// 0 * v still propagates a NaN (or inf) of v. The running max starts at -inf: while it is -inf the weights are 0 and
    /// the rescale factor is 0 (exp(-inf - -inf) would be NaN where the reference has none).
    /// headDim (= s.HeadDim) is specialised: each head size gets its own compiled kernel, whose loops over the head dims
    /// (staging, dot products, the accumulator) have constant bounds.
    /// </summary>
    public static void FlashKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, ArrayView<float> z, AttnDims s, SpecializedValue<int> headDim)
    {
        var sh = SharedMemory.Allocate<float>(FlashMaxWarps * FlashPerWarp);
        int lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int warps = Group.DimX / Warp.WarpSize;
        int r = Grid.IdxX * warps + warp;
        if (r >= s.Heads * s.Rows) return;                         // a whole warp leaves: only warp barriers below
        int h = r / s.Rows, t = r % s.Rows;
        int d = headDim, n = s.Pos0 + t + 1;
        int kvs = s.KvHeads * d, kvb = (h / s.Group) * d, qb = (t * s.Heads + h) * d;
        int skb = warp * FlashPerWarp, sqb = skb + Lanes * FlashKStride, ssb = sqb + FlashChunk, spb = ssb + Lanes;
        bool qOnce = d <= FlashChunk;                               // one pass: q is staged once, before the first tile
        float m = float.NegativeInfinity, l = 0f;
        for (int j0 = 0; j0 < n; j0 += Lanes)
        {
            int cnt = n - j0 < Lanes ? n - j0 : Lanes;
            // 1. scores of keys j0 .. j0 + cnt - 1, lane j owning key j0 + j
            float dot = 0f;
            for (int c0 = 0; c0 < d; c0 += FlashChunk)
            {
                int dc = d - c0 < FlashChunk ? d - c0 : FlashChunk;
                if (c0 > 0) Warp.Barrier();                         // the previous pass's reads of the tile are done
                if (!qOnce || j0 == 0)
                    for (int e = lane; e < dc; e += Lanes) sh[sqb + e] = q[qb + c0 + e];
                for (int e = lane; e < cnt * dc; e += Lanes)
                {
                    int jj = e / dc, i = e - jj * dc;
                    sh[skb + jj * FlashKStride + i] = k[(j0 + jj) * kvs + kvb + c0 + i];
                }
                Warp.Barrier();
                if (lane < cnt)
                {
                    int kr = skb + lane * FlashKStride;
                    for (int i = 0; i < dc; i++) dot += sh[sqb + i] * sh[kr + i];
                }
            }
            sh[ssb + lane] = lane < cnt ? dot * s.Scale : float.NegativeInfinity;
            Warp.Barrier();
            // 2. running max
            float tmax = sh[ssb];
            for (int x = 1; x < Lanes; x++) tmax = MaxNaN(tmax, sh[ssb + x]);
            float mNew = MaxNaN(m, tmax);
            float alpha = m == float.NegativeInfinity ? 0f : XMath.Exp(m - mNew);
            // 3. weights of the tile and the running sum
            float p = 0f;
            if (lane < cnt && mNew != float.NegativeInfinity) p = XMath.Exp(sh[ssb + lane] - mNew);
            sh[spb + lane] = p;
            Warp.Barrier();
            float psum = 0f;
            for (int x = 0; x < cnt; x++) psum += sh[spb + x];
            l = l * alpha + psum;
            // 4. the accumulator (z), rescaled, plus this tile's weighted values; divided by l after the last tile
            bool last = j0 + Lanes >= n;
            for (int i = lane; i < d; i += Lanes)
            {
                float a = j0 == 0 ? 0f : z[qb + i] * alpha;
                int vo = j0 * kvs + kvb + i;
                for (int x = 0; x < cnt; x++)
                {
                    a += sh[spb + x] * v[vo];
                    vo += kvs;
                }
                z[qb + i] = last ? a / l : a;
            }
            m = mNew;
        }
    }
}
