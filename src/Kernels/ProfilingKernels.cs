using System.Diagnostics;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>One line of a kernel profile: an op at one shape, its calls, time, FLOPs and bytes moved.</summary>
public sealed class OpStat
{
    public required string Op { get; init; }
    public required string Shape { get; init; }
    public long Calls;
    public long Ticks;
    public double Flops;
    public double Bytes;
    public double Seconds => Ticks / (double)Stopwatch.Frequency;
}

/// <summary>
/// A timing decorator over any backend: every call is timed (wall clock around the synchronous call) and attributed to
/// (op, shape) with its FLOP and byte counts, so that a forward pass can be broken down per op against the roofline.
/// Optional trace events (Chrome trace-event "X" records) are kept when <see cref="Trace"/> is on.
/// </summary>
public sealed class ProfilingKernels(IKernels inner) : IKernels
{
    readonly Dictionary<(string, string), OpStat> _stats = new();
    public string Name => inner.Name;
    public IKernels Inner => inner;
    public bool Trace { get; set; }
    public List<(string Name, string Shape, long StartTicks, long Ticks)> Events { get; } = [];
    public string Phase { get; set; } = "";

    public IReadOnlyCollection<OpStat> Stats => _stats.Values;
    public void Clear() { _stats.Clear(); Events.Clear(); }

    void Record(string op, string shape, double flops, double bytes, long t0)
    {
        long dt = Stopwatch.GetTimestamp() - t0;
        string key = Phase.Length > 0 ? Phase + ":" + op : op;
        if (!_stats.TryGetValue((key, shape), out var s)) _stats[(key, shape)] = s = new OpStat { Op = key, Shape = shape };
        s.Calls++; s.Ticks += dt; s.Flops += flops; s.Bytes += bytes;
        if (Trace) Events.Add((key, shape, t0, dt));
    }

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.EmbeddingGather(ids, table, dst);
        Record("embedding", $"[{ids.Length}x{table.Shape[1]}]", 0, dst.Length * 4.0 + ids.Length * table.Shape[1] * table.DType.Size(), t0);
    }

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.MatMul(x, rows, w, y);
        Record("matmul", $"[{rows}x{w.In}]x[{w.In}x{w.Out}] {w.DType.Name()}", 2.0 * rows * w.In * w.Out,
            (double)w.In * w.Out * w.DType.Size() + 4.0 * rows * (w.In + w.Out), t0);
    }

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.LayerNorm(x, rows, dim, weight, bias, eps, y, scale);
        Record("layernorm", $"[{rows}x{dim}]", 7.0 * rows * dim, 8.0 * rows * dim, t0);
    }

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.RmsNorm(x, rows, dim, weight, weightOffset, eps, y, scale);
        Record("rmsnorm", $"[{rows}x{dim}]", 4.0 * rows * dim, 8.0 * rows * dim, t0);
    }

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Rope(x, rows, heads, headDim, pos0, rope);
        Record("rope", $"[{rows}x{heads}x{headDim}]", 3.0 * rows * heads * rope.RotaryDim, 8.0 * rows * heads * headDim, t0);
    }

    static double AttnFlops(in AttentionShape s) => 2.0 * s.Heads * s.HeadDim * (s.Rows * (double)s.Pos0 + s.Rows * (s.Rows + 1) / 2.0);
    static string AttnShape(in AttentionShape s) => $"T={s.Rows} Tk={s.Keys} H={s.Heads}/{s.KvHeads} d={s.HeadDim}";

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionScores(q, k, s, scores);
        Record("attn.scores", AttnShape(s), AttnFlops(s), 4.0 * (q.Length + k.Length + scores.Length), t0);
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionSoftmax(scores, s, pattern);
        Record("attn.softmax", AttnShape(s), 3.0 * scores.Length, 8.0 * scores.Length, t0);
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AttentionMix(pattern, v, s, z);
        Record("attn.mix", AttnShape(s), AttnFlops(s), 4.0 * (pattern.Length + v.Length + z.Length), t0);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Attention(q, k, v, s, z);
        Record("attention", AttnShape(s), 2 * AttnFlops(s), 4.0 * (q.Length + k.Length + v.Length + z.Length), t0);
    }

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.Activation(kind, x, y);
        Record("act." + kind, $"[{x.Length}]", 8.0 * x.Length, 8.0 * x.Length, t0);
    }

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.GatedActivation(kind, gate, up, y);
        Record("gated." + kind, $"[{gate.Length}]", 9.0 * gate.Length, 12.0 * gate.Length, t0);
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.AddInPlace(x, acc);
        Record("add", $"[{x.Length}]", x.Length, 12.0 * x.Length, t0);
    }

    public void ScaleInPlace(Span<float> x, float s)
    {
        long t0 = Stopwatch.GetTimestamp();
        inner.ScaleInPlace(x, s);
        Record("scale", $"[{x.Length}]", x.Length, 8.0 * x.Length, t0);
    }
}
