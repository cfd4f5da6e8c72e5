using Engine.Kernels;
using Engine.Kernels.Ilgpu;
using Engine.Loader;
using Engine.Tests.Kernels;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>One backend on the shared CPU accelerator, and one on a private CPU accelerator with the CUDA launch shapes.</summary>
public sealed class IlgpuGridFixture : IDisposable
{
    public IlgpuBackend Cpu { get; } = new(IlgpuDevice.Cpu, IlgpuBackends.CpuName);
    readonly Lazy<(IlgpuDevice Device, IlgpuBackend Backend)> _cudaShapes = new(() =>
    {
        var d = IlgpuDevice.CreateCpu(Tuning.Cuda);
        return (d, new IlgpuBackend(d, "ilgpu-cpu(cuda shapes)"));
    });
    public GuardedDeviceKernels Kernels { get; }
    public GuardedDeviceKernels CudaShapes => new(_cudaShapes.Value.Backend);

    public IlgpuGridFixture() => Kernels = new GuardedDeviceKernels(Cpu);

    public void Dispose()
    {
        Cpu.Dispose();
        if (_cudaShapes.IsValueCreated) { _cudaShapes.Value.Backend.Dispose(); _cudaShapes.Value.Device.Dispose(); }
    }
}

/// <summary>
/// The op grid (tests/Engine.Tests/Kernels/OpGrid.*.cs: every op x awkward shapes x dtypes, NaN/inf parity, the fused
/// (flash) attention within tolerance of the three steps, NaN for NaN) on "ilgpu-cpu", with device-side guards
/// (<see cref="GuardedDeviceKernels"/>).
/// The default run takes every case but the largest matrix multiplies and 33-row attention (about 20 s); those run
/// with the Slow trait, so that default + Slow = the whole grid. Filter: --filter "DisplayName~MatMul(rows=3".
/// </summary>
[Collection("ilgpu")]
public class IlgpuOpGridTests(IlgpuGridFixture fx) : IClassFixture<IlgpuGridFixture>
{
    /// <summary>The cases left to the Slow run: matrix multiplies over 150k multiply-adds and the 33-row attention cases.</summary>
    public static bool IsLarge(OpCase c) =>
        c is MatMulCase && MultiplyAdds(c.ToString()) > 150_000 || c is AttentionCase a && a.ToString().Contains("(rows=33,", StringComparison.Ordinal);

    static long MultiplyAdds(string name)
    {
        var m = System.Text.RegularExpressions.Regex.Match(name, @"rows=(\d+),in=(\d+),out=(\d+)");
        return long.Parse(m.Groups[1].Value) * long.Parse(m.Groups[2].Value) * long.Parse(m.Groups[3].Value);
    }

    public static IEnumerable<object[]> DefaultCases() => OpGrid.All.Where(c => !IsLarge(c)).Select(c => new object[] { c.ToString() });
    public static IEnumerable<object[]> LargeCases() => OpGrid.All.Where(IsLarge).Select(c => new object[] { c.ToString() });

    [Theory]
    [MemberData(nameof(DefaultCases))]
    public void MatchesReference(string opCase)
    {
        var failures = OpGrid.Check(OpGrid.ByName[opCase], fx.Kernels);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Theory]
    [Trait("Category", "Slow")]
    [MemberData(nameof(LargeCases))]
    public void LargeCasesMatchReference(string opCase)
    {
        var failures = OpGrid.Check(OpGrid.ByName[opCase], fx.Kernels);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    /// <summary>
    /// The launch shapes of a real GPU (16x16-thread matmul groups with 64x64 tiles, 8 warps per decode group, one row per
    /// warp) on a private CPU accelerator: tiles cut through M, N and K, M &lt; K and M &gt; K, both layouts, all dtypes.
    /// </summary>
    public static IEnumerable<object[]> CudaShapeCases() =>
        OpGrid.All.Where(c => c.ToString() is var n && (
                n.StartsWith("MatMul(rows=1,in=129,out=257,", StringComparison.Ordinal) && !n.Contains("offset")
                || n.StartsWith("MatMul(rows=3,in=70,out=45,", StringComparison.Ordinal) && n.Contains("bias=true") && !n.Contains("values")
                || n.StartsWith("MatMul(rows=33,in=129,out=257,", StringComparison.Ordinal) && n.Contains("bias=false")
                || n.StartsWith("MatMul(rows=15,in=300,out=70,", StringComparison.Ordinal)
                || n == "MatMul(rows=1,in=300,out=70,dtype=BF16,layout=out-major,bias=true,weights=nonfinite)"
                || n.StartsWith("Attention(rows=17,pos0=6,heads=4,kvHeads=2,headDim=33)", StringComparison.Ordinal)
                // flash attention with 4 warps per group: long key ranges, a partial last group (6 and 8 warps), NaN/inf
                || n == "Attention(rows=4,pos0=296,heads=4,kvHeads=2,headDim=64)"
                || n == "Attention(rows=1,pos0=256,heads=8,kvHeads=1,headDim=128)"
                || n == "Attention(rows=2,pos0=70,heads=3,kvHeads=1,headDim=160)"
                || n == "Attention(rows=3,pos0=40,heads=4,kvHeads=2,headDim=33,values=nonfinite)"))
            .Select(c => new object[] { c.ToString() });

    [Theory]
    [MemberData(nameof(CudaShapeCases))]
    public void CudaLaunchShapesMatchReference(string opCase)
    {
        var failures = OpGrid.Check(OpGrid.ByName[opCase], fx.CudaShapes);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Fact]
    public void DefaultAndSlowTogetherCoverTheWholeGridAndEveryOp()
    {
        Assert.Equal(OpGrid.All.Count, DefaultCases().Count() + LargeCases().Count());
        var ops = DefaultCases().Select(r => OpGrid.ByName[(string)r[0]].Op).ToHashSet();
        foreach (var m in typeof(Engine.Kernels.IKernels).GetMethods())
            if (!m.IsSpecialName) Assert.Contains(m.Name, ops);
        Assert.Contains(DefaultCases(), r => ((string)r[0]).Contains("values=nonfinite"));
        foreach (var dt in new[] { "F32", "F16", "BF16" })
            Assert.Contains(DefaultCases(), r => ((string)r[0]).Contains($"dtype={dt}"));
        Assert.Contains(CudaShapeCases(), r => ((string)r[0]).StartsWith("Attention(", StringComparison.Ordinal));
        Assert.True(CudaShapeCases().Count() >= 20);
    }

    /// <summary>
    /// The fused attention is an online softmax: it allocates no device memory at all, so nothing that grows with
    /// H·T·Tk (the kernel it replaced kept scores and pattern in a scratch of 2·H·T·Tk floats). AllocatedBytes counts
    /// every device allocation of the backend; the three-step path, which the runtime gives arena buffers for scores
    /// and pattern, is checked to agree.
    /// </summary>
    [Fact]
    public void FusedAttentionAllocatesNoScratch()
    {
        using var b = new IlgpuBackend(IlgpuDevice.Cpu, IlgpuBackends.CpuName);
        var s = new AttentionShape(Rows: 8, Pos0: 248, Heads: 8, KvHeads: 2, HeadDim: 16, Scale: 0.25f);    // H·T·Tk = 16384, 8 key tiles
        var rng = new CaseRandom("flash scratch");
        int qz = s.Rows * s.Heads * s.HeadDim, kv = s.Keys * s.KvHeads * s.HeadDim, n = s.Heads * s.Rows * s.Keys;
        var q = new DeviceSpan(b.Allocate(qz), 0, qz);
        var k = new DeviceSpan(b.Allocate(kv), 0, kv);
        var v = new DeviceSpan(b.Allocate(kv), 0, kv);
        var z = new DeviceSpan(b.Allocate(qz), 0, qz);
        Assert.True(b.AllocatedBytes >= 4L * (2 * qz + 2 * kv), $"the counter missed the inputs: {b.AllocatedBytes} bytes");
        b.Upload(rng.Normal(qz), q);
        b.Upload(rng.Normal(kv), k);
        b.Upload(rng.Normal(kv), v);
        long before = b.AllocatedBytes;
        b.Attention(q, k, v, s, z);
        b.Synchronize();
        Assert.Equal(before, b.AllocatedBytes);

        var fused = new float[qz];
        b.Download(z, fused);
        var scores = new DeviceSpan(b.Allocate(n), 0, n);
        var pattern = new DeviceSpan(b.Allocate(n), 0, n);
        Assert.Equal(before + 4L * 2 * n, b.AllocatedBytes);
        b.AttentionScores(q, k, s, scores);
        b.AttentionSoftmax(scores, s, pattern);
        b.AttentionMix(pattern, v, s, z);
        var steps = new float[qz];
        b.Download(z, steps);
        Assert.Null(Verdict.Close("flash vs three steps", steps, fused, Tolerance.Default));
    }

    /// <summary>The device fences work: a kernel writing one float past its output, or changing an input, is reported.</summary>
    [Fact]
    public void DeviceGuardsCatchAnOverrunAndAModifiedInput()
    {
        var over = OpGrid.Check(OpGrid.ByName["ScaleInPlace(n=17,s=-1.75)"], new GuardedDeviceKernels(new Faulty(fx.Cpu)));
        Assert.Contains(over, f => f.Contains("tail guard written at index 17"));
        var modified = OpGrid.Check(OpGrid.ByName["AddInPlace(n=17)"], new GuardedDeviceKernels(new Faulty(fx.Cpu)));
        Assert.Contains(modified, f => f.Contains("device input 'x' was modified"));
        Assert.Empty(OpGrid.Check(OpGrid.ByName["ScaleInPlace(n=17,s=-1.75)"], fx.Kernels));
    }

    /// <summary>The ILGPU backend with two bugs: ScaleInPlace scales one float too many, AddInPlace also doubles x.</summary>
    sealed class Faulty(IlgpuBackend b) : IBackend
    {
        public string Name => "faulty";
        public bool IsHost => false;
        public IKernels HostKernels => b.HostKernels;
        public IDeviceBuffer Allocate(long floats) => b.Allocate(floats);
        public Span<float> HostView(DeviceSpan s) => b.HostView(s);
        public void Download(DeviceSpan src, Span<float> dst) => b.Download(src, dst);
        public void Upload(ReadOnlySpan<float> src, DeviceSpan dst) => b.Upload(src, dst);
        public void Copy(DeviceSpan src, DeviceSpan dst) => b.Copy(src, dst);
        public void Synchronize() => b.Synchronize();
        public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, DeviceSpan dst) => b.EmbeddingGather(ids, table, dst);
        public void TableRows(TensorView table, long firstRow, int rows, DeviceSpan dst) => b.TableRows(table, firstRow, rows, dst);
        public void MatMul(DeviceSpan x, int rows, Linear w, DeviceSpan y) => b.MatMul(x, rows, w, y);
        public void LayerNorm(DeviceSpan x, int rows, int dim, float[] weight, float[]? bias, float eps, DeviceSpan y, DeviceSpan scale) => b.LayerNorm(x, rows, dim, weight, bias, eps, y, scale);
        public void RmsNorm(DeviceSpan x, int rows, int dim, float[] weight, float weightOffset, float eps, DeviceSpan y, DeviceSpan scale) => b.RmsNorm(x, rows, dim, weight, weightOffset, eps, y, scale);
        public void Rope(DeviceSpan x, int rows, int heads, int headDim, int pos0, RopeTable rope) => b.Rope(x, rows, heads, headDim, pos0, rope);
        public void SplitQkv(DeviceSpan qkv, int rows, QkvLayout layout, int heads, int kvHeads, int headDim, DeviceSpan q, DeviceSpan k, DeviceSpan v) => b.SplitQkv(qkv, rows, layout, heads, kvHeads, headDim, q, k, v);
        public void AttentionScores(DeviceSpan q, DeviceSpan k, in AttentionShape s, DeviceSpan scores) => b.AttentionScores(q, k, s, scores);
        public void AttentionSoftmax(DeviceSpan scores, in AttentionShape s, DeviceSpan pattern) => b.AttentionSoftmax(scores, s, pattern);
        public void AttentionMix(DeviceSpan pattern, DeviceSpan v, in AttentionShape s, DeviceSpan z) => b.AttentionMix(pattern, v, s, z);
        public void Attention(DeviceSpan q, DeviceSpan k, DeviceSpan v, in AttentionShape s, DeviceSpan z) => b.Attention(q, k, v, s, z);
        public void Activation(ActivationKind kind, DeviceSpan x, DeviceSpan y) => b.Activation(kind, x, y);
        public void GatedActivation(ActivationKind kind, DeviceSpan gate, DeviceSpan up, DeviceSpan y) => b.GatedActivation(kind, gate, up, y);
        public void AddInPlace(DeviceSpan x, DeviceSpan acc) { b.AddInPlace(x, acc); b.ScaleInPlace(x, 2f); }
        public void ScaleInPlace(DeviceSpan x, float s) => b.ScaleInPlace(new DeviceSpan(x.Buffer, x.Offset, x.Length + 1), s);
        public void Dispose() { }
    }
}
