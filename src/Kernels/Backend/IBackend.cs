using Engine.Loader;

namespace Engine.Kernels;

/// <summary>A block of floats owned by a backend: host memory for the CPU backends, device memory for a GPU.</summary>
public interface IDeviceBuffer : IDisposable
{
    long Length { get; }
}

/// <summary>A range of a <see cref="IDeviceBuffer"/>, in floats: what the runtime hands to a backend's ops.</summary>
public readonly struct DeviceSpan(IDeviceBuffer buffer, long offset, int length)
{
    public IDeviceBuffer Buffer { get; } = buffer;
    public long Offset { get; } = offset;
    public int Length { get; } = length;

    public DeviceSpan Slice(long start, int length)
    {
        if (start < 0 || length < 0 || start + length > Length) throw new ArgumentOutOfRangeException(nameof(start), $"[{start}, {start + length}) outside [0, {Length})");
        return new DeviceSpan(Buffer, Offset + start, length);
    }
}

/// <summary>
/// Where a session's activations live and its ops run. The runtime's forward pass is written against this interface:
/// every activation (arena slots, KV cache) is a <see cref="DeviceSpan"/> of a buffer the backend allocated.
/// <see cref="HostBackend"/> runs <see cref="IKernels"/> on host memory (taps are then the arena itself); a GPU
/// backend keeps everything on the device and copies to the host only the taps a hook reads.
/// Ops mirror <see cref="IKernels"/> (same shapes, same contract, same bit-identity of fused and three-step attention).
/// </summary>
public interface IBackend : IDisposable
{
    string Name { get; }

    /// <summary>True when device spans are host memory, so <see cref="HostView"/> works and taps cost no copy.</summary>
    bool IsHost { get; }

    /// <summary>Span-based ops on host memory, for small computations outside the forward pass (e.g. a logit lens row).</summary>
    IKernels HostKernels { get; }

    /// <summary>A new zero-filled buffer of the given number of floats.</summary>
    IDeviceBuffer Allocate(long floats);

    /// <summary>The memory of a span, for host backends only.</summary>
    Span<float> HostView(DeviceSpan s);

    void Download(DeviceSpan src, Span<float> dst);
    void Upload(ReadOnlySpan<float> src, DeviceSpan dst);
    void Copy(DeviceSpan src, DeviceSpan dst);

    /// <summary>Waits until the queued work has finished (a no-op on the CPU).</summary>
    void Synchronize();

    void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, DeviceSpan dst);
    /// <summary>dst = table rows firstRow .. firstRow + rows - 1 widened to float (learned position embeddings).</summary>
    void TableRows(TensorView table, long firstRow, int rows, DeviceSpan dst);
    void MatMul(DeviceSpan x, int rows, Linear w, DeviceSpan y);
    void LayerNorm(DeviceSpan x, int rows, int dim, float[] weight, float[]? bias, float eps, DeviceSpan y, DeviceSpan scale);
    void RmsNorm(DeviceSpan x, int rows, int dim, float[] weight, float weightOffset, float eps, DeviceSpan y, DeviceSpan scale);
    void Rope(DeviceSpan x, int rows, int heads, int headDim, int pos0, RopeTable rope);
    /// <summary>Splits a fused q/k/v projection output [rows, q + 2 kv] into q [rows, H, d] and k, v [rows, K, d].</summary>
    void SplitQkv(DeviceSpan qkv, int rows, QkvLayout layout, int heads, int kvHeads, int headDim, DeviceSpan q, DeviceSpan k, DeviceSpan v);
    void AttentionScores(DeviceSpan q, DeviceSpan k, in AttentionShape s, DeviceSpan scores);
    void AttentionSoftmax(DeviceSpan scores, in AttentionShape s, DeviceSpan pattern);
    void AttentionMix(DeviceSpan pattern, DeviceSpan v, in AttentionShape s, DeviceSpan z);
    void Attention(DeviceSpan q, DeviceSpan k, DeviceSpan v, in AttentionShape s, DeviceSpan z);
    void Activation(ActivationKind kind, DeviceSpan x, DeviceSpan y);
    void GatedActivation(ActivationKind kind, DeviceSpan gate, DeviceSpan up, DeviceSpan y);
    void AddInPlace(DeviceSpan x, DeviceSpan acc);
    void ScaleInPlace(DeviceSpan x, float s);
}
