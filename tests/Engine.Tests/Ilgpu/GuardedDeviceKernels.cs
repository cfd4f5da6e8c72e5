using Engine.Kernels;
using Engine.Loader;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// The op grid's view of a device backend, with the fences on the device: every input and output is a span in the
/// middle of a device buffer with <see cref="Lead"/> and <see cref="Tail"/> guard floats. Output guards hold a sentinel
/// and must be untouched after the op; input guards hold NaN (a read past either end poisons the result) and inputs
/// must come back bitwise unchanged. A violation throws, which OpGrid.Check reports as a failure of the case.
/// (BackendKernels, which the CPU grid uses for device backends, allocates exact-size buffers and cannot see overruns.)
/// </summary>
public sealed class GuardedDeviceKernels(IBackend backend) : IKernels
{
    public const int Lead = 16, Tail = 16;
    public const float Sentinel = 12345.678f;
    public string Name => backend.Name;
    public IBackend Backend => backend;

    sealed class Fenced(IBackend b, string name, int length, float guard, bool input) : IDisposable
    {
        public readonly IDeviceBuffer Buffer = b.Allocate(Lead + length + Tail);
        public readonly string Name = name;
        public readonly int Length = length;
        public readonly float Guard = guard;
        public readonly bool Input = input;
        public float[]? Snapshot;
        public DeviceSpan Span => new(Buffer, Lead, Length);
        public void Dispose() => Buffer.Dispose();
    }

    sealed class Scope(IBackend b) : IDisposable
    {
        readonly List<Fenced> _all = [];

        Fenced Make(string name, ReadOnlySpan<float> data, int length, float guard, bool input)
        {
            var f = new Fenced(b, name, length, guard, input);
            _all.Add(f);
            var init = new float[Lead + length + Tail];
            init.AsSpan().Fill(guard);
            if (!data.IsEmpty) data.CopyTo(init.AsSpan(Lead, length));
            else if (!input) init.AsSpan(Lead, length).Fill(float.NaN);       // an element the op forgets stays NaN
            b.Upload(init, new DeviceSpan(f.Buffer, 0, init.Length));
            if (input) f.Snapshot = init;
            return f;
        }

        public DeviceSpan In(string name, ReadOnlySpan<float> data) => Make(name, data, data.Length, float.NaN, true).Span;
        public DeviceSpan Out(string name, int length) => Make(name, default, length, Sentinel, false).Span;
        public DeviceSpan InOut(string name, ReadOnlySpan<float> data) => Make(name, data, data.Length, Sentinel, false).Span;

        /// <summary>Downloads an output's interior into dst after checking every fence of the scope.</summary>
        public void Back(DeviceSpan src, Span<float> dst)
        {
            Check();
            var f = _all.First(x => ReferenceEquals(x.Buffer, src.Buffer));
            var all = Download(f);
            all.AsSpan(Lead, f.Length).CopyTo(dst);
        }

        float[] Download(Fenced f)
        {
            b.Synchronize();
            var all = new float[Lead + f.Length + Tail];
            b.Download(new DeviceSpan(f.Buffer, 0, all.Length), all);
            return all;
        }

        bool _checked;
        void Check()
        {
            if (_checked) return;
            _checked = true;
            foreach (var f in _all)
            {
                var all = Download(f);
                int guardBits = BitConverter.SingleToInt32Bits(f.Guard);
                for (int i = 0; i < all.Length; i++)
                {
                    bool guard = i < Lead || i >= Lead + f.Length;
                    if (guard && BitConverter.SingleToInt32Bits(all[i]) != guardBits)
                        throw new InvalidOperationException($"device {(f.Input ? "input" : "output")} '{f.Name}': {(i < Lead ? "lead" : "tail")} guard written at index {i - Lead} (value {all[i]:G9})");
                    if (!guard && f.Snapshot != null && BitConverter.SingleToInt32Bits(all[i]) != BitConverter.SingleToInt32Bits(f.Snapshot[i]))
                        throw new InvalidOperationException($"device input '{f.Name}' was modified at index {i - Lead} ({f.Snapshot[i]:G9} -> {all[i]:G9})");
                }
            }
        }

        public void Dispose() { foreach (var f in _all) f.Dispose(); }
    }

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        using var s = new Scope(backend);
        var d = s.Out("dst", dst.Length);
        backend.EmbeddingGather(ids, table, d);
        s.Back(d, dst);
    }

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        using var s = new Scope(backend);
        var dy = s.Out("y", rows * w.Out);
        backend.MatMul(s.In("x", x[..(rows * w.In)]), rows, w, dy);
        s.Back(dy, y[..(rows * w.Out)]);
    }

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
    {
        using var s = new Scope(backend);
        var dy = s.Out("y", rows * dim); var ds = s.Out("scale", rows);
        backend.LayerNorm(s.In("x", x[..(rows * dim)]), rows, dim, weight.ToArray(), bias.IsEmpty ? null : bias.ToArray(), eps, dy, ds);
        s.Back(dy, y[..(rows * dim)]); s.Back(ds, scale[..rows]);
    }

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
    {
        using var s = new Scope(backend);
        var dy = s.Out("y", rows * dim); var ds = s.Out("scale", rows);
        backend.RmsNorm(s.In("x", x[..(rows * dim)]), rows, dim, weight.ToArray(), weightOffset, eps, dy, ds);
        s.Back(dy, y[..(rows * dim)]); s.Back(ds, scale[..rows]);
    }

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        using var s = new Scope(backend);
        int n = rows * heads * headDim;
        var dx = s.InOut("x", x[..n]);
        backend.Rope(dx, rows, heads, headDim, pos0, rope);
        s.Back(dx, x[..n]);
    }

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape sh, Span<float> scores)
    {
        using var s = new Scope(backend);
        int n = sh.Heads * sh.Rows * sh.Keys;
        var d = s.Out("scores", n);
        backend.AttentionScores(s.In("q", q[..(sh.Rows * sh.Heads * sh.HeadDim)]), s.In("k", k[..(sh.Keys * sh.KvHeads * sh.HeadDim)]), sh, d);
        s.Back(d, scores[..n]);
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape sh, Span<float> pattern)
    {
        using var s = new Scope(backend);
        int n = sh.Heads * sh.Rows * sh.Keys;
        var d = s.Out("pattern", n);
        backend.AttentionSoftmax(s.In("scores", scores[..n]), sh, d);
        s.Back(d, pattern[..n]);
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape sh, Span<float> z)
    {
        using var s = new Scope(backend);
        int n = sh.Rows * sh.Heads * sh.HeadDim;
        var d = s.Out("z", n);
        backend.AttentionMix(s.In("pattern", pattern[..(sh.Heads * sh.Rows * sh.Keys)]), s.In("v", v[..(sh.Keys * sh.KvHeads * sh.HeadDim)]), sh, d);
        s.Back(d, z[..n]);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape sh, Span<float> z)
    {
        using var s = new Scope(backend);
        int n = sh.Rows * sh.Heads * sh.HeadDim, kv = sh.Keys * sh.KvHeads * sh.HeadDim;
        var d = s.Out("z", n);
        backend.Attention(s.In("q", q[..n]), s.In("k", k[..kv]), s.In("v", v[..kv]), sh, d);
        s.Back(d, z[..n]);
    }

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        using var s = new Scope(backend);
        var d = s.Out("y", x.Length);
        backend.Activation(kind, s.In("x", x), d);
        s.Back(d, y[..x.Length]);
    }

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        using var s = new Scope(backend);
        var d = s.Out("y", gate.Length);
        backend.GatedActivation(kind, s.In("gate", gate), s.In("up", up[..gate.Length]), d);
        s.Back(d, y[..gate.Length]);
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        using var s = new Scope(backend);
        var d = s.InOut("acc", acc[..x.Length]);
        backend.AddInPlace(s.In("x", x), d);
        s.Back(d, acc[..x.Length]);
    }

    public void ScaleInPlace(Span<float> x, float sc)
    {
        using var s = new Scope(backend);
        var d = s.InOut("x", x);
        backend.ScaleInPlace(d, sc);
        s.Back(d, x);
    }
}
