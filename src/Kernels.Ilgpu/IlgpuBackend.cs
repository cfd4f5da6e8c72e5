using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Engine.Loader;
using ILGPU;
using ILGPU.Runtime;
using Half = ILGPU.Half;

namespace Engine.Kernels.Ilgpu;

/// <summary>Device memory of an <see cref="IlgpuBackend"/>: one ILGPU buffer of floats.</summary>
public sealed class IlgpuBuffer : IDeviceBuffer
{
    internal MemoryBuffer1D<float, Stride1D.Dense>? Memory;
    internal readonly IlgpuDevice Device;
    public long Length { get; }

    internal IlgpuBuffer(IlgpuDevice device, long floats)
    {
        if (floats < 0) throw new ArgumentOutOfRangeException(nameof(floats));
        Device = device;
        Length = floats;
        Memory = device.Accelerator.Allocate1D<float>(Math.Max(1, floats));
        Memory.MemSetToZero();
        // The fill is queued on the stream, while a later host copy into the buffer may run at once (the CPU
        // accelerator copies on the calling thread): wait, or the zeros land after the upload.
        device.Accelerator.Synchronize();
    }

    internal ArrayView<float> View(long offset, int length)
    {
        var m = Memory ?? throw new ObjectDisposedException(nameof(IlgpuBuffer));
        if (offset < 0 || length < 0 || offset + length > Length) throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) outside [0, {Length})");
        return m.View.AsContiguous().SubView(offset, length);
    }

    public void Dispose()
    {
        Memory?.Dispose();
        Memory = null;
    }
}

/// <summary>
/// The forward pass on an ILGPU accelerator (CUDA, or ILGPU's CPU accelerator for tests): activations, KV cache and
/// weights live in device memory. Weights are uploaded once, on first use, in their stored dtype (F16 as ILGPU.Half,
/// BF16 as ushort, both widened inside the kernels) and cached by tensor identity; norm weights, biases and RoPE tables
/// by array identity. Ops are queued on the accelerator's default stream; <see cref="Download"/> waits for them.
/// Not thread-safe (one session drives one backend), as the runtime's sessions are not.
/// </summary>
public sealed class IlgpuBackend : IBackend, IDeviceInterventions
{
    readonly IlgpuDevice _dev;
    readonly Accelerator _acc;
    readonly Tuning _tune;
    readonly ConditionalWeakTable<TensorInfo, WeightCopy> _weights = new();
    readonly ConditionalWeakTable<float[], MemoryBuffer1D<float, Stride1D.Dense>> _vectors = new();
    readonly ConditionalWeakTable<RopeTable, RopeCopy> _ropes = new();
    readonly List<IDisposable> _owned = [];
    MemoryBuffer1D<int, Stride1D.Dense>? _ids;
    bool _disposed;

    public IlgpuBackend(IlgpuDevice device, string? name = null)
    {
        _dev = device;
        _acc = device.Accelerator;
        _tune = device.Tuning;
        Name = name ?? (device.IsCuda ? "ilgpu-cuda" : "ilgpu-cpu");
        HostKernels = new BackendKernels(this);
    }

    public string Name { get; }
    public bool IsHost => false;
    public IKernels HostKernels { get; }
    public IlgpuDevice Device => _dev;

    sealed class WeightCopy(IDisposable buffer, int dtype, ArrayView<float> f, ArrayView<Half> h, ArrayView<ushort> b, nint data)
    {
        public readonly IDisposable Buffer = buffer;
        public readonly int DType = dtype;
        public readonly ArrayView<float> F = f;
        public readonly ArrayView<Half> H = h;
        public readonly ArrayView<ushort> B = b;
        public readonly nint Data = data;
    }

    sealed class RopeCopy(MemoryBuffer1D<float, Stride1D.Dense> cos, MemoryBuffer1D<float, Stride1D.Dense> sin)
    {
        public readonly MemoryBuffer1D<float, Stride1D.Dense> Cos = cos, Sin = sin;
    }

    // ------------------------------------------------------------------ memory

    public IDeviceBuffer Allocate(long floats)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var b = new IlgpuBuffer(_dev, floats);
        AllocatedBytes += 4 * Math.Max(1, floats);
        return b;
    }

    /// <summary>
    /// Device bytes this backend has allocated so far (never decreases): buffers from <see cref="Allocate"/>, weight
    /// copies, vectors and RoPE tables, the token-id buffer. Every device allocation of the backend goes through it; a
    /// test checks that attention allocates nothing.
    /// </summary>
    public long AllocatedBytes { get; private set; }

    public Span<float> HostView(DeviceSpan s) =>
        throw new NotSupportedException($"{Name}: device memory has no host view (IsHost is false); use Download");

    ArrayView<float> V(DeviceSpan s) =>
        s.Buffer is IlgpuBuffer b && ReferenceEquals(b.Device, _dev) ? b.View(s.Offset, s.Length)
            : throw new ArgumentException($"{Name}: span of a buffer from another backend or accelerator");

    /// <summary>Floats copied device → host and host → device so far (what a test checks to see that device hooks stay on the device).</summary>
    public long DownloadedFloats { get; private set; }
    public long UploadedFloats { get; private set; }

    public unsafe void Download(DeviceSpan src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException($"destination holds {dst.Length} floats, the span {src.Length}");
        if (src.Length == 0) return;
        _acc.Synchronize();   // host copies are not ordered after queued kernels on every accelerator
        // Pinned for the copy: ILGPU copies from the raw address, and a GC must not move a managed array under it.
        fixed (float* p = dst) V(src).CopyToCPU(ref *p, src.Length);
        DownloadedFloats += src.Length;
    }

    public unsafe void Upload(ReadOnlySpan<float> src, DeviceSpan dst)
    {
        if (src.Length > dst.Length) throw new ArgumentException($"source holds {src.Length} floats, the span {dst.Length}");
        if (src.Length == 0) return;
        _acc.Synchronize();
        fixed (float* p = src) V(dst).SubView(0, src.Length).CopyFromCPU(ref *p, src.Length);
        UploadedFloats += src.Length;
    }

    public void Copy(DeviceSpan src, DeviceSpan dst)
    {
        if (src.Length > dst.Length) throw new ArgumentException($"source holds {src.Length} floats, the destination {dst.Length}");
        if (src.Length == 0) return;
        if (!_dev.IsCuda) _acc.Synchronize();   // CUDA orders the copy on the stream; the CPU accelerator copies at once
        V(src).CopyTo(V(dst).SubView(0, src.Length));
    }

    public void Synchronize() => _acc.Synchronize();

    unsafe WeightCopy Weights(TensorView t)
    {
        if (_weights.TryGetValue(t.Info, out var w) && w.Data == (nint)t.Data) return w;
        long n = t.ElementCount;
        if (n > int.MaxValue) throw new NotSupportedException($"tensor '{t.Name}' has {n} elements; the ILGPU kernels index with 32-bit ints");
        var f = _dev.DummyF.View.AsContiguous();
        var h = _dev.DummyH.View.AsContiguous();
        var b = _dev.DummyB.View.AsContiguous();
        IDisposable buf;
        int dtype;
        switch (t.DType)
        {
            case DType.F16:
            {
                var m = _acc.Allocate1D<Half>(Math.Max(1, n));
                AllocatedBytes += 2 * Math.Max(1, n);
                if (n > 0) m.View.AsContiguous().CopyFromCPU(ref Unsafe.AsRef<Half>(t.Data), n);
                buf = m; h = m.View.AsContiguous(); dtype = 1;
                break;
            }
            case DType.BF16:
            {
                var m = _acc.Allocate1D<ushort>(Math.Max(1, n));
                AllocatedBytes += 2 * Math.Max(1, n);
                if (n > 0) m.View.AsContiguous().CopyFromCPU(ref Unsafe.AsRef<ushort>(t.Data), n);
                buf = m; b = m.View.AsContiguous(); dtype = 2;
                break;
            }
            case DType.F32:
            {
                var m = _acc.Allocate1D<float>(Math.Max(1, n));
                AllocatedBytes += 4 * Math.Max(1, n);
                if (n > 0) m.View.AsContiguous().CopyFromCPU(ref Unsafe.AsRef<float>(t.Data), n);
                buf = m; f = m.View.AsContiguous(); dtype = 0;
                break;
            }
            default:
            {
                // F64 checkpoints (rare): the one dtype widened (narrowed) on the host.
                var m = _acc.Allocate1D<float>(Math.Max(1, n));
                AllocatedBytes += 4 * Math.Max(1, n);
                var tmp = t.ToFloatArray();
                fixed (float* p = tmp) if (n > 0) m.View.AsContiguous().CopyFromCPU(ref *p, n);
                buf = m; f = m.View.AsContiguous(); dtype = 0;
                break;
            }
        }
        _owned.Add(buf);
        w = new WeightCopy(buf, dtype, f, h, b, (nint)t.Data);
        _weights.AddOrUpdate(t.Info, w);
        return w;
    }

    /// <summary>A device copy of a host array (pinned while it is copied).</summary>
    unsafe MemoryBuffer1D<float, Stride1D.Dense> NewBuffer(float[] a)
    {
        var m = _acc.Allocate1D<float>(Math.Max(1, a.Length));
        AllocatedBytes += 4L * Math.Max(1, a.Length);
        fixed (float* p = a) if (a.Length > 0) m.View.AsContiguous().CopyFromCPU(ref *p, a.Length);
        return m;
    }

    ArrayView<float> Vector(float[]? v)
    {
        if (v == null || v.Length == 0) return _dev.DummyF.View.AsContiguous();
        if (!_vectors.TryGetValue(v, out var m))
        {
            m = NewBuffer(v);
            _owned.Add(m);
            _vectors.Add(v, m);
        }
        return m.View.AsContiguous();
    }

    unsafe ArrayView<int> Ids(ReadOnlySpan<int> ids)
    {
        if (_ids == null || _ids.Length < ids.Length)
        {
            _acc.Synchronize();
            _ids?.Dispose();
            _ids = _acc.Allocate1D<int>(Math.Max(64, ids.Length));
            AllocatedBytes += 4L * Math.Max(64, ids.Length);
        }
        var view = _ids.View.AsContiguous().SubView(0, ids.Length);
        _acc.Synchronize();   // the previous gather may still read the ids
        fixed (int* p = ids) view.CopyFromCPU(ref *p, ids.Length);
        return view;
    }

    // ------------------------------------------------------------------ launch shapes

    KernelConfig Flat(long n)
    {
        int g = _tune.FlatGroup;
        long groups = Math.Min((n + g - 1) / g, _tune.FlatMaxGroups);
        return new KernelConfig((int)Math.Max(1, groups), g);
    }

    static KernelConfig Rows(int groups) => new(groups, ElementwiseKernels.Lanes);

    // ------------------------------------------------------------------ ops

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, DeviceSpan dst)
    {
        int d = (int)table.Shape[1];
        if (ids.Length == 0 || d == 0) return;
        long vocab = table.Shape[0];
        foreach (int id in ids)
            if ((uint)id >= vocab) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} outside [0, {vocab})");
        var w = Weights(table);
        var y = V(dst).SubView(0, ids.Length * d);
        _dev.K.Gather(Flat((long)ids.Length * d), Ids(ids), w.F, w.H, w.B, y, ids.Length, d, new SpecializedValue<int>(w.DType));
    }

    public void TableRows(TensorView table, long firstRow, int rows, DeviceSpan dst)
    {
        int d = (int)table.Shape[1];
        int n = rows * d;
        if (n == 0) return;
        if (firstRow < 0 || firstRow + rows > table.Shape[0]) throw new ArgumentOutOfRangeException(nameof(firstRow));
        var w = Weights(table);
        _dev.K.Widen(Flat(n), w.F, w.H, w.B, V(dst).SubView(0, n), checked((int)(firstRow * d)), n, new SpecializedValue<int>(w.DType));
    }

    public void MatMul(DeviceSpan x, int rows, Linear w, DeviceSpan y)
    {
        if (rows <= 0 || w.Out == 0) return;
        var wc = Weights(w.W);
        var bias = Vector(w.Bias);
        var dims = new MatMulDims { M = rows, K = w.In, N = w.Out, HasBias = w.Bias != null ? 1 : 0 };
        var xv = V(x).SubView(0, rows * w.In);
        var yv = V(y).SubView(0, rows * w.Out);
        var dt = new SpecializedValue<int>(wc.DType);
        if (w.In == 0) { Intervene(yv, Vector(w.Bias), 0, rows, w.Out, w.Bias != null ? InterventionOp.Set : InterventionOp.Zero); return; }
        if (rows == 1)
        {
            if (w.InputMajor)
            {
                int warps = _tune.GemvInWarps;
                _dev.K.GemvIn(new KernelConfig((w.Out + 31) / 32, warps * 32), xv, wc.F, wc.H, wc.B, bias, yv, dims, dt, new SpecializedValue<int>(warps));
            }
            else
            {
                int warps = _tune.GemvWarps, rpw = _tune.GemvRowsPerWarp, perGroup = warps * rpw;
                _dev.K.GemvOut(new KernelConfig((w.Out + perGroup - 1) / perGroup, warps * 32), xv, wc.F, wc.H, wc.B, bias, yv, dims, dt, new SpecializedValue<int>(rpw));
            }
            return;
        }
        int tx = _tune.TileX, ty = _tune.TileY;
        var cfg = new KernelConfig(new Index2D((w.Out + 4 * tx - 1) / (4 * tx), (rows + 4 * ty - 1) / (4 * ty)), new Index2D(tx * ty, 1));
        _dev.K.MatMul(cfg, xv, wc.F, wc.H, wc.B, bias, yv, dims, dt, new SpecializedValue<int>(w.InputMajor ? 1 : 0),
            new SpecializedValue<int>(tx), new SpecializedValue<int>(ty));
    }

    public void LayerNorm(DeviceSpan x, int rows, int dim, float[] weight, float[]? bias, float eps, DeviceSpan y, DeviceSpan scale)
    {
        if (rows <= 0) return;
        _dev.K.LayerNorm(Rows(rows), V(x).SubView(0, rows * dim), Vector(weight), Vector(bias), V(y).SubView(0, rows * dim), V(scale).SubView(0, rows),
            dim, eps, bias != null && bias.Length > 0 ? 1 : 0);
    }

    public void RmsNorm(DeviceSpan x, int rows, int dim, float[] weight, float weightOffset, float eps, DeviceSpan y, DeviceSpan scale)
    {
        if (rows <= 0) return;
        _dev.K.RmsNorm(Rows(rows), V(x).SubView(0, rows * dim), Vector(weight), V(y).SubView(0, rows * dim), V(scale).SubView(0, rows), dim, weightOffset, eps);
    }

    public void Rope(DeviceSpan x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        int half = rope.RotaryDim / 2;
        if (rows <= 0 || heads <= 0 || half == 0) return;
        if (pos0 < 0 || pos0 + rows > rope.MaxPositions) throw new ArgumentOutOfRangeException(nameof(pos0), $"positions {pos0}..{pos0 + rows - 1} outside the RoPE table ({rope.MaxPositions})");
        if (!_ropes.TryGetValue(rope, out var r))
        {
            r = new RopeCopy(NewBuffer(rope.Cos), NewBuffer(rope.Sin));
            _owned.Add(r.Cos); _owned.Add(r.Sin);
            _ropes.Add(rope, r);
        }
        _dev.K.Rope(Flat((long)rows * heads * half), V(x).SubView(0, rows * heads * headDim), r.Cos.View.AsContiguous(), r.Sin.View.AsContiguous(),
            rows, heads, headDim, half, pos0);
    }

    public void SplitQkv(DeviceSpan qkv, int rows, QkvLayout layout, int heads, int kvHeads, int headDim, DeviceSpan q, DeviceSpan k, DeviceSpan v)
    {
        int qd = heads * headDim, kvd = kvHeads * headDim, width = qd + 2 * kvd;
        if (rows <= 0 || width == 0) return;
        if (layout == QkvLayout.FusedPerHead && heads != kvHeads) throw new ArgumentException("the per-head fused q/k/v layout has no GQA");
        _dev.K.Split(Flat((long)rows * width), V(qkv).SubView(0, rows * width), V(q).SubView(0, rows * qd), V(k).SubView(0, rows * kvd), V(v).SubView(0, rows * kvd),
            rows, heads, kvHeads, headDim, layout == QkvLayout.FusedPerHead ? 1 : 0);
    }

    static AttnDims Dims(in AttentionShape s) => new()
    {
        Rows = s.Rows, Pos0 = s.Pos0, Heads = s.Heads, KvHeads = s.KvHeads, HeadDim = s.HeadDim, Group = s.Group, Keys = s.Keys, Scale = s.Scale,
    };

    public void AttentionScores(DeviceSpan q, DeviceSpan k, in AttentionShape s, DeviceSpan scores)
    {
        int n = s.Heads * s.Rows * s.Keys;
        if (n == 0) return;
        _dev.K.Scores(Flat(n), V(q).SubView(0, s.Rows * s.Heads * s.HeadDim), V(k).SubView(0, s.Keys * s.KvHeads * s.HeadDim), V(scores).SubView(0, n), Dims(s));
    }

    public void AttentionSoftmax(DeviceSpan scores, in AttentionShape s, DeviceSpan pattern)
    {
        int n = s.Heads * s.Rows * s.Keys;
        if (n == 0) return;
        _dev.K.Softmax(Rows(s.Heads * s.Rows), V(scores).SubView(0, n), V(pattern).SubView(0, n), Dims(s));
    }

    public void AttentionMix(DeviceSpan pattern, DeviceSpan v, in AttentionShape s, DeviceSpan z)
    {
        int n = s.Rows * s.Heads * s.HeadDim;
        if (n == 0) return;
        _dev.K.Mix(Flat(n), V(pattern).SubView(0, s.Heads * s.Rows * s.Keys), V(v).SubView(0, s.Keys * s.KvHeads * s.HeadDim), V(z).SubView(0, n), Dims(s));
    }

    /// <summary>
    /// The fused op: online-softmax (flash) attention, a warp per (head, row), <see cref="Tuning.AttnWarps"/> warps per
    /// group. It allocates nothing: z is the accumulator, the key tile sits in shared memory. Its z agrees with the three
    /// steps within float rounding, not bit for bit (IKernels.Attention).
    /// </summary>
    public void Attention(DeviceSpan q, DeviceSpan k, DeviceSpan v, in AttentionShape s, DeviceSpan z)
    {
        int rows = s.Heads * s.Rows;
        if (rows == 0 || s.HeadDim == 0) return;
        int kv = s.Keys * s.KvHeads * s.HeadDim, qz = s.Rows * s.Heads * s.HeadDim, warps = _tune.AttnWarps;
        _dev.K.Flash(new KernelConfig((rows + warps - 1) / warps, warps * AttentionKernels.Lanes),
            V(q).SubView(0, qz), V(k).SubView(0, kv), V(v).SubView(0, kv), V(z).SubView(0, qz), Dims(s), SpecializedValue.New(s.HeadDim));
    }

    public void Activation(ActivationKind kind, DeviceSpan x, DeviceSpan y)
    {
        int n = x.Length;
        if (n == 0) return;
        _dev.K.Activation(Flat(n), V(x), V(y).SubView(0, n), n, new SpecializedValue<int>((int)kind));
    }

    public void GatedActivation(ActivationKind kind, DeviceSpan gate, DeviceSpan up, DeviceSpan y)
    {
        int n = gate.Length;
        if (n == 0) return;
        _dev.K.Gated(Flat(n), V(gate), V(up).SubView(0, n), V(y).SubView(0, n), n, new SpecializedValue<int>((int)kind));
    }

    public void AddInPlace(DeviceSpan x, DeviceSpan acc)
    {
        int n = x.Length;
        if (n == 0) return;
        _dev.K.Add(Flat(n), V(x), V(acc).SubView(0, n), n);
    }

    public void ScaleInPlace(DeviceSpan x, float s)
    {
        int n = x.Length;
        if (n == 0) return;
        _dev.K.Scale(Flat(n), V(x), n, s);
    }

    // ------------------------------------------------------------------ device-side interventions

    /// <summary>Applies an intervention to a [rows, cols] tap in device memory, without a host round trip.</summary>
    public void Apply(DeviceIntervention iv, DeviceSpan data, int rows, int cols)
    {
        iv.Validate(rows, cols, data.Length);
        if (iv.RowCount == 0 || iv.ColCount == 0) return;
        // Values are uploaded once per array (cached by identity, as biases are): a block reads a window of it.
        bool hasValues = iv.Op is InterventionOp.Set or InterventionOp.Add;
        var values = hasValues ? Vector(iv.Values).SubView(iv.ValueOffset, iv.Values!.Length - iv.ValueOffset) : _dev.DummyF.View.AsContiguous();
        int vStride = hasValues ? iv.EffectiveValueStride : 0;
        long n = (long)iv.RowCount * iv.ColCount;
        _dev.K.Intervene(Flat(n), V(data).SubView(0, rows * cols), values, cols, iv.RowStart, iv.ColStart, iv.RowCount, iv.ColCount, vStride, iv.Alpha,
            new SpecializedValue<int>((int)iv.Op));
    }

    void Intervene(ArrayView<float> y, ArrayView<float> values, int r0, int rows, int cols, InterventionOp op) =>
        _dev.K.Intervene(Flat((long)rows * cols), y, values, cols, r0, 0, rows, cols, 0, 1f, new SpecializedValue<int>((int)op));

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _acc.Synchronize(); } catch (Exception) { /* disposing after a failed launch */ }
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
        _ids?.Dispose();
    }
}
