using System.Diagnostics;
using Engine.Kernels.Profiling;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// A timing decorator over span-based kernels (e.g. for the op benchmarks): every call is timed (wall clock around the
/// synchronous call) and recorded in <see cref="Profile"/> per (phase, op, shape) with its FLOP and byte counts, with
/// trace events when <see cref="OpProfile.Trace"/> is on. Sessions are profiled with
/// <see cref="ProfilingBackend"/>, which also covers device backends; both share the cost model of <see cref="OpCall"/>.
/// </summary>
public sealed class ProfilingKernels(IKernels inner) : IKernels
{
    public string Name => inner.Name;
    public IKernels Inner => inner;
    public OpProfile Profile { get; } = new();

    void Done(in OpCall call, long t0) => Profile.Record(call, 0, t0, Stopwatch.GetTimestamp());

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.EmbeddingGather(ids, table, dst);
        Done(new OpCall(OpKind.Embedding, ids.Length, (int)table.Shape[1], 0, (int)table.DType), t0);
    }

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.MatMul(x, rows, w, y);
        Done(OpCall.MatMul(rows, w, 0), t0);
    }

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.LayerNorm(x, rows, dim, weight, bias, eps, y, scale);
        Done(new OpCall(OpKind.LayerNorm, rows, dim), t0);
    }

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.RmsNorm(x, rows, dim, weight, weightOffset, eps, y, scale);
        Done(new OpCall(OpKind.RmsNorm, rows, dim), t0);
    }

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Rope(x, rows, heads, headDim, pos0, rope);
        Done(new OpCall(OpKind.Rope, rows, heads, headDim, rope.RotaryDim), t0);
    }

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionScores(q, k, s, scores);
        Done(OpCall.Attn(OpKind.AttentionScores, s), t0);
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionSoftmax(scores, s, pattern);
        Done(OpCall.Attn(OpKind.AttentionSoftmax, s), t0);
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionMix(pattern, v, s, z);
        Done(OpCall.Attn(OpKind.AttentionMix, s), t0);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Attention(q, k, v, s, z);
        Done(OpCall.Attn(OpKind.Attention, s), t0);
    }

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Activation(kind, x, y);
        Done(new OpCall(OpKind.Activation, x.Length, 0, 0, (int)kind), t0);
    }

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.GatedActivation(kind, gate, up, y);
        Done(new OpCall(OpKind.GatedActivation, gate.Length, 0, 0, (int)kind), t0);
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AddInPlace(x, acc);
        Done(new OpCall(OpKind.Add, x.Length), t0);
    }

    public void ScaleInPlace(Span<float> x, float s)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.ScaleInPlace(x, s);
        Done(new OpCall(OpKind.Scale, x.Length), t0);
    }
}
