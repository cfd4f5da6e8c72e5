// Causal attention with GQA (query head h reads kv head h / (H/K)). Shapes as IKernels: q [T, H, d], k/v [Tk, K, d],
// scores/pattern [H, T, Tk], z [T, H, d]; row t sits at position pos0 + t and sees keys 0..pos0+t.
//   Scores   a thread per score:          Score()  (d-long dot product in index order, times scale; -inf above the diagonal)
//   Softmax  a warp per (head, row):      SoftmaxRow() (lane-strided max and sum, combined through shared memory in lane order)
//   Mix      a thread per z element:      MixAt()  (sum over visible keys in key order)
//   Fused    a warp per (head, row): the same three functions in one launch, scores/pattern in global scratch.
// The fused kernel runs exactly the arithmetic of the three steps (same functions, same lane partition), so its z is
// bit-identical to theirs: the runtime relies on that when a hook taps scores or pattern (IKernels.Attention).
// An online softmax (flash attention) would give different bits, so it is not used here (README: what is not done).
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

    /// <summary>Scores, softmax and mix of one (head, row) per group of 32 lanes; scratch scores/pattern are [H, T, Tk].</summary>
    public static void FusedKernel(ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
        ArrayView<float> scores, ArrayView<float> pattern, ArrayView<float> z, AttnDims s)
    {
        var sm = SharedMemory.Allocate<float>(Lanes);
        var ss = SharedMemory.Allocate<float>(Lanes);
        int r = Grid.IdxX, h = r / s.Rows, t = r % s.Rows, lane = Group.IdxX;
        int off = (h * s.Rows + t) * s.Keys;
        // The lanes write the scores SoftmaxRow reads back in the same lane partition: no barrier needed before it.
        for (int j = lane; j < s.Keys; j += Lanes) scores[off + j] = Score(q, k, s, h, t, j);
        SoftmaxRow(scores, pattern, s, h, t, sm, ss);
        Group.Barrier();   // pattern written by every lane, read whole by each
        int d = s.HeadDim, zb = (t * s.Heads + h) * d;
        for (int i = lane; i < d; i += Lanes) z[zb + i] = MixAt(pattern, v, s, h, t, i);
    }
}
