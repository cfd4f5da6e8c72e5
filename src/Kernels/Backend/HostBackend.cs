using System.Runtime.InteropServices;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>Native (unmanaged) host memory, 64-byte aligned, zero-filled.</summary>
public sealed unsafe class HostBuffer : IDeviceBuffer
{
    float* _data;
    public long Length { get; }

    public HostBuffer(long floats)
    {
        if (floats < 0) throw new ArgumentOutOfRangeException(nameof(floats));
        Length = floats;
        nuint bytes = (nuint)Math.Max(64, floats * sizeof(float));
        // Large buffers (the activation arena, KV caches) start on a 2 MiB boundary and get huge pages before the first touch.
        bool huge = HugePages.Enabled && (long)bytes >= 2 * HugePages.Size;
        _data = (float*)NativeMemory.AlignedAlloc(bytes, huge ? (nuint)HugePages.Size : 64);
        if (_data == null) throw new OutOfMemoryException($"cannot allocate {bytes} bytes of activations");
        if (huge) HugePages.Advise(_data, (long)bytes);
        NativeMemory.Clear(_data, bytes);
    }

    public Span<float> Span(long offset, int length)
    {
        ObjectDisposedException.ThrowIf(_data == null, this);
        if (offset < 0 || length < 0 || offset + length > Length) throw new ArgumentOutOfRangeException(nameof(offset));
        return new Span<float>(_data + offset, length);
    }

    public void Dispose()
    {
        if (_data != null) { NativeMemory.AlignedFree(_data); _data = null; }
    }
}

/// <summary>
/// The CPU backends as an <see cref="IBackend"/>: buffers are host memory and every op is the wrapped
/// <see cref="IKernels"/> on spans of them, so a tap is the runtime's own memory.
/// </summary>
public sealed class HostBackend(IKernels kernels) : IBackend, IDeviceInterventions
{
    /// <summary>Interventions on host memory: their definition, <see cref="DeviceIntervention.ApplyHost"/>.</summary>
    public void Apply(DeviceIntervention intervention, DeviceSpan data, int rows, int cols) => intervention.ApplyHost(HostView(data), rows, cols);

    public string Name => kernels.Name;
    public bool IsHost => true;
    public IKernels HostKernels => kernels;

    public IDeviceBuffer Allocate(long floats) => new HostBuffer(floats);

    public Span<float> HostView(DeviceSpan s) =>
        s.Buffer is HostBuffer h ? h.Span(s.Offset, s.Length) : throw new ArgumentException("span of a buffer from another backend");

    Span<float> V(DeviceSpan s) => HostView(s);

    public void Download(DeviceSpan src, Span<float> dst) => V(src).CopyTo(dst);
    public void Upload(ReadOnlySpan<float> src, DeviceSpan dst) => src.CopyTo(V(dst));
    public void Copy(DeviceSpan src, DeviceSpan dst) => V(src).CopyTo(V(dst));
    public void Synchronize() { }

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, DeviceSpan dst) => kernels.EmbeddingGather(ids, table, V(dst));
    public void TableRows(TensorView table, long firstRow, int rows, DeviceSpan dst) => table.Widen(firstRow * table.Shape[1], V(dst)[..(int)(rows * table.Shape[1])]);
    public void MatMul(DeviceSpan x, int rows, Linear w, DeviceSpan y) => kernels.MatMul(V(x), rows, w, V(y));
    public void LayerNorm(DeviceSpan x, int rows, int dim, float[] weight, float[]? bias, float eps, DeviceSpan y, DeviceSpan scale) =>
        kernels.LayerNorm(V(x), rows, dim, weight, bias, eps, V(y), V(scale));
    public void RmsNorm(DeviceSpan x, int rows, int dim, float[] weight, float weightOffset, float eps, DeviceSpan y, DeviceSpan scale) =>
        kernels.RmsNorm(V(x), rows, dim, weight, weightOffset, eps, V(y), V(scale));
    public void Rope(DeviceSpan x, int rows, int heads, int headDim, int pos0, RopeTable rope) => kernels.Rope(V(x), rows, heads, headDim, pos0, rope);
    public void AttentionScores(DeviceSpan q, DeviceSpan k, in AttentionShape s, DeviceSpan scores) => kernels.AttentionScores(V(q), V(k), s, V(scores));
    public void AttentionSoftmax(DeviceSpan scores, in AttentionShape s, DeviceSpan pattern) => kernels.AttentionSoftmax(V(scores), s, V(pattern));
    public void AttentionMix(DeviceSpan pattern, DeviceSpan v, in AttentionShape s, DeviceSpan z) => kernels.AttentionMix(V(pattern), V(v), s, V(z));
    public void Attention(DeviceSpan q, DeviceSpan k, DeviceSpan v, in AttentionShape s, DeviceSpan z) => kernels.Attention(V(q), V(k), V(v), s, V(z));
    public void Activation(ActivationKind kind, DeviceSpan x, DeviceSpan y) => kernels.Activation(kind, V(x), V(y));
    public void GatedActivation(ActivationKind kind, DeviceSpan gate, DeviceSpan up, DeviceSpan y) => kernels.GatedActivation(kind, V(gate), V(up), V(y));
    public void AddInPlace(DeviceSpan x, DeviceSpan acc) => kernels.AddInPlace(V(x), V(acc));
    public void ScaleInPlace(DeviceSpan x, float s) => kernels.ScaleInPlace(V(x), s);

    public void SplitQkv(DeviceSpan qkv, int rows, QkvLayout layout, int heads, int kvHeads, int headDim, DeviceSpan q, DeviceSpan k, DeviceSpan v) =>
        SplitQkvHost(V(qkv), rows, layout, heads, kvHeads, headDim, V(q), V(k), V(v));

    /// <summary>The definition of the q/k/v split, on host spans.</summary>
    public static void SplitQkvHost(ReadOnlySpan<float> qkv, int rows, QkvLayout layout, int heads, int kvHeads, int d, Span<float> q, Span<float> kOut, Span<float> vOut)
    {
        int qd = heads * d, kvd = kvHeads * d, width = qd + 2 * kvd;
        for (int t = 0; t < rows; t++)
        {
            var row = qkv.Slice(t * width, width);
            if (layout == QkvLayout.FusedConcat)
            {
                row[..qd].CopyTo(q.Slice(t * qd, qd));
                row.Slice(qd, kvd).CopyTo(kOut.Slice(t * kvd, kvd));
                row.Slice(qd + kvd, kvd).CopyTo(vOut.Slice(t * kvd, kvd));
            }
            else
            {
                // [H, 3, d] per head: q, k, v (GPT-NeoX; no GQA in this layout)
                for (int h = 0; h < heads; h++)
                {
                    var head = row.Slice(h * 3 * d, 3 * d);
                    head[..d].CopyTo(q.Slice(t * qd + h * d, d));
                    head.Slice(d, d).CopyTo(kOut.Slice(t * kvd + h * d, d));
                    head.Slice(2 * d, d).CopyTo(vOut.Slice(t * kvd + h * d, d));
                }
            }
        }
    }

    public void Dispose() => (kernels as IDisposable)?.Dispose();
}
