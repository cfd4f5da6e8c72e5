using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// An <see cref="IKernels"/> over any <see cref="IBackend"/>: each call uploads its inputs to fresh device buffers,
/// runs the backend's op and downloads the outputs. Slow for a device, but it lets the one op grid (and any host-side
/// code) exercise a GPU backend's kernels exactly as they run in the forward pass.
/// </summary>
public sealed class BackendKernels(IBackend backend) : IKernels
{
    public string Name => backend.Name;
    public IBackend Backend => backend;

    sealed class Scope(IBackend b) : IDisposable
    {
        readonly List<IDeviceBuffer> _buffers = [];
        public DeviceSpan In(ReadOnlySpan<float> data)
        {
            var buf = b.Allocate(Math.Max(1, data.Length));
            _buffers.Add(buf);
            var s = new DeviceSpan(buf, 0, data.Length);
            if (data.Length > 0) b.Upload(data, s);
            return s;
        }
        public DeviceSpan Out(int length)
        {
            var buf = b.Allocate(Math.Max(1, length));
            _buffers.Add(buf);
            return new DeviceSpan(buf, 0, length);
        }
        public void Dispose() { foreach (var x in _buffers) x.Dispose(); }
    }

    void Back(DeviceSpan src, Span<float> dst)
    {
        backend.Synchronize();
        if (dst.Length > 0) backend.Download(src, dst);
    }

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        using var s = new Scope(backend);
        var d = s.Out(dst.Length);
        backend.EmbeddingGather(ids, table, d);
        Back(d, dst);
    }

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        using var s = new Scope(backend);
        var dy = s.Out(rows * w.Out);
        backend.MatMul(s.In(x[..(rows * w.In)]), rows, w, dy);
        Back(dy, y[..(rows * w.Out)]);
    }

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
    {
        using var s = new Scope(backend);
        var dy = s.Out(rows * dim); var ds = s.Out(rows);
        backend.LayerNorm(s.In(x[..(rows * dim)]), rows, dim, weight.ToArray(), bias.IsEmpty ? null : bias.ToArray(), eps, dy, ds);
        Back(dy, y[..(rows * dim)]); Back(ds, scale[..rows]);
    }

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
    {
        using var s = new Scope(backend);
        var dy = s.Out(rows * dim); var ds = s.Out(rows);
        backend.RmsNorm(s.In(x[..(rows * dim)]), rows, dim, weight.ToArray(), weightOffset, eps, dy, ds);
        Back(dy, y[..(rows * dim)]); Back(ds, scale[..rows]);
    }

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        using var s = new Scope(backend);
        int n = rows * heads * headDim;
        var dx = s.In(x[..n]);
        backend.Rope(dx, rows, heads, headDim, pos0, rope);
        Back(dx, x[..n]);
    }

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape sh, Span<float> scores)
    {
        using var s = new Scope(backend);
        int n = sh.Heads * sh.Rows * sh.Keys;
        var d = s.Out(n);
        backend.AttentionScores(s.In(q[..(sh.Rows * sh.Heads * sh.HeadDim)]), s.In(k[..(sh.Keys * sh.KvHeads * sh.HeadDim)]), sh, d);
        Back(d, scores[..n]);
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape sh, Span<float> pattern)
    {
        using var s = new Scope(backend);
        int n = sh.Heads * sh.Rows * sh.Keys;
        var d = s.Out(n);
        backend.AttentionSoftmax(s.In(scores[..n]), sh, d);
        Back(d, pattern[..n]);
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape sh, Span<float> z)
    {
        using var s = new Scope(backend);
        int n = sh.Rows * sh.Heads * sh.HeadDim;
        var d = s.Out(n);
        backend.AttentionMix(s.In(pattern[..(sh.Heads * sh.Rows * sh.Keys)]), s.In(v[..(sh.Keys * sh.KvHeads * sh.HeadDim)]), sh, d);
        Back(d, z[..n]);
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape sh, Span<float> z)
    {
        using var s = new Scope(backend);
        int n = sh.Rows * sh.Heads * sh.HeadDim, kv = sh.Keys * sh.KvHeads * sh.HeadDim;
        var d = s.Out(n);
        backend.Attention(s.In(q[..n]), s.In(k[..kv]), s.In(v[..kv]), sh, d);
        Back(d, z[..n]);
    }

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
    {
        using var s = new Scope(backend);
        var d = s.Out(x.Length);
        backend.Activation(kind, s.In(x), d);
        Back(d, y[..x.Length]);
    }

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y)
    {
        using var s = new Scope(backend);
        var d = s.Out(gate.Length);
        backend.GatedActivation(kind, s.In(gate), s.In(up[..gate.Length]), d);
        Back(d, y[..gate.Length]);
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        using var s = new Scope(backend);
        var d = s.In(acc[..x.Length]);
        backend.AddInPlace(s.In(x), d);
        Back(d, acc[..x.Length]);
    }

    public void ScaleInPlace(Span<float> x, float sc)
    {
        using var s = new Scope(backend);
        var d = s.In(x);
        backend.ScaleInPlace(d, sc);
        Back(d, x);
    }
}
