using System.Diagnostics;
using Engine.Loader;

namespace Engine.Kernels.Profiling;

/// <summary>
/// A timing decorator over any <see cref="IBackend"/>: every op, copy and synchronisation is timed and recorded in
/// <see cref="Profile"/>. On a device backend (<see cref="IBackend.IsHost"/> false) each op is followed by
/// <see cref="IBackend.Synchronize"/> inside its timed span, so a kernel's time is charged to the op that queued it and
/// not to whichever later call waits. Only a session built on this decorator pays for profiling: a session on the
/// plain backend has no profiling code on its path.
/// </summary>
public sealed class ProfilingBackend : IBackend
{
    readonly IBackend _inner;
    readonly bool _sync;

    /// <param name="inner">The backend to time.</param>
    /// <param name="synchronize">Wait for the device after every op (default: for non-host backends).</param>
    /// <param name="ownsInner">Dispose the inner backend with this decorator.</param>
    /// <param name="profile">Where calls are recorded (default: a new profile).</param>
    public ProfilingBackend(IBackend inner, bool? synchronize = null, bool ownsInner = true, OpProfile? profile = null)
    {
        _inner = inner;
        _sync = synchronize ?? !inner.IsHost;
        OwnsInner = ownsInner;
        Profile = profile ?? new OpProfile();
    }

    public OpProfile Profile { get; }
    public IBackend Inner => _inner;
    public bool OwnsInner { get; }
    /// <summary>True when every op waits for the device before its time is taken.</summary>
    public bool Synchronizing => _sync;

    public string Name => _inner.Name;
    public bool IsHost => _inner.IsHost;
    public IKernels HostKernels => _inner.HostKernels;
    public IDeviceBuffer Allocate(long floats) => _inner.Allocate(floats);
    public Span<float> HostView(DeviceSpan s) => _inner.HostView(s);

    void Done(in OpCall call, long t0, int detail = 0)
    {
        if (_sync) _inner.Synchronize();
        Profile.Record(call, detail, t0, Stopwatch.GetTimestamp());
    }

    public void Download(DeviceSpan src, Span<float> dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Download(src, dst);
        Done(new OpCall(OpKind.Download, src.Length), t0);
    }

    public void Upload(ReadOnlySpan<float> src, DeviceSpan dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Upload(src, dst);
        Done(new OpCall(OpKind.Upload, src.Length), t0);
    }

    public void Copy(DeviceSpan src, DeviceSpan dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Copy(src, dst);
        Done(new OpCall(OpKind.Copy, src.Length), t0);
    }

    public void Synchronize()
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Synchronize();
        Profile.Record(new OpCall(OpKind.Synchronize), 0, t0, Stopwatch.GetTimestamp());
    }

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, DeviceSpan dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.EmbeddingGather(ids, table, dst);
        Done(new OpCall(OpKind.Embedding, ids.Length, (int)table.Shape[1], 0, (int)table.DType), t0);
    }

    public void TableRows(TensorView table, long firstRow, int rows, DeviceSpan dst)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.TableRows(table, firstRow, rows, dst);
        Done(new OpCall(OpKind.TableRows, rows, (int)table.Shape[1], 0, (int)table.DType), t0);
    }

    static readonly Func<object, string> WeightName = o => ((Linear)o).W.Name;

    public void MatMul(DeviceSpan x, int rows, Linear w, DeviceSpan y)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.MatMul(x, rows, w, y);
        if (_sync) _inner.Synchronize();
        long t1 = Stopwatch.GetTimestamp();
        // the weight's role and name are looked up after the timed span
        var (detail, role) = Profile.WeightIds(w, WeightName);
        Profile.Record(OpCall.MatMul(rows, w, role), detail, t0, t1);
    }

    public void LayerNorm(DeviceSpan x, int rows, int dim, float[] weight, float[]? bias, float eps, DeviceSpan y, DeviceSpan scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.LayerNorm(x, rows, dim, weight, bias, eps, y, scale);
        Done(new OpCall(OpKind.LayerNorm, rows, dim), t0);
    }

    public void RmsNorm(DeviceSpan x, int rows, int dim, float[] weight, float weightOffset, float eps, DeviceSpan y, DeviceSpan scale)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.RmsNorm(x, rows, dim, weight, weightOffset, eps, y, scale);
        Done(new OpCall(OpKind.RmsNorm, rows, dim), t0);
    }

    public void Rope(DeviceSpan x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Rope(x, rows, heads, headDim, pos0, rope);
        Done(new OpCall(OpKind.Rope, rows, heads, headDim, rope.RotaryDim), t0);
    }

    public void SplitQkv(DeviceSpan qkv, int rows, QkvLayout layout, int heads, int kvHeads, int headDim, DeviceSpan q, DeviceSpan k, DeviceSpan v)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.SplitQkv(qkv, rows, layout, heads, kvHeads, headDim, q, k, v);
        Done(new OpCall(OpKind.SplitQkv, rows, (heads + 2 * kvHeads) * headDim, heads, kvHeads, headDim), t0);
    }

    public void AttentionScores(DeviceSpan q, DeviceSpan k, in AttentionShape s, DeviceSpan scores)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.AttentionScores(q, k, s, scores);
        Done(OpCall.Attn(OpKind.AttentionScores, s), t0);
    }

    public void AttentionSoftmax(DeviceSpan scores, in AttentionShape s, DeviceSpan pattern)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.AttentionSoftmax(scores, s, pattern);
        Done(OpCall.Attn(OpKind.AttentionSoftmax, s), t0);
    }

    public void AttentionMix(DeviceSpan pattern, DeviceSpan v, in AttentionShape s, DeviceSpan z)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.AttentionMix(pattern, v, s, z);
        Done(OpCall.Attn(OpKind.AttentionMix, s), t0);
    }

    public void Attention(DeviceSpan q, DeviceSpan k, DeviceSpan v, in AttentionShape s, DeviceSpan z)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Attention(q, k, v, s, z);
        Done(OpCall.Attn(OpKind.Attention, s), t0);
    }

    public void Activation(ActivationKind kind, DeviceSpan x, DeviceSpan y)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.Activation(kind, x, y);
        Done(new OpCall(OpKind.Activation, x.Length, 0, 0, (int)kind), t0);
    }

    public void GatedActivation(ActivationKind kind, DeviceSpan gate, DeviceSpan up, DeviceSpan y)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.GatedActivation(kind, gate, up, y);
        Done(new OpCall(OpKind.GatedActivation, gate.Length, 0, 0, (int)kind), t0);
    }

    public void AddInPlace(DeviceSpan x, DeviceSpan acc)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.AddInPlace(x, acc);
        Done(new OpCall(OpKind.Add, x.Length), t0);
    }

    public void ScaleInPlace(DeviceSpan x, float s)
    {
        long t0 = Stopwatch.GetTimestamp();
        _inner.ScaleInPlace(x, s);
        Done(new OpCall(OpKind.Scale, x.Length), t0);
    }

    public void Dispose()
    {
        if (OwnsInner) _inner.Dispose();
    }
}
