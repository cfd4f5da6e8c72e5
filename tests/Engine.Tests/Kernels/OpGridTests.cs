using Engine.Kernels;
using Engine.Kernels.Simd;
using Engine.Kernels.Threading;
using Engine.Loader;
using Xunit;

namespace Engine.Tests.Kernels;

/// <summary>
/// ggml's test-backend-ops for this engine: every op of <see cref="IKernels"/> on every backend but "cpu-ref", over the
/// grid of <see cref="OpGrid"/>, against <see cref="Engine.Kernels.Reference.ReferenceKernels"/>. A row's display name is
/// the case's canonical name, e.g. <c>MatMul(rows=3,in=70,out=45,dtype=BF16,layout=in-major,bias=true)</c>; filter with
/// <c>--filter "DisplayName~MatMul(rows=3"</c>. IsaVariantTests re-runs the grid with AVX-512, AVX2 and all intrinsics off.
/// </summary>
public class OpGridTests
{
    public static IEnumerable<object[]> Cases() =>
        from b in OpGrid.Backends
        from c in OpGrid.All
        select new object[] { b, c.ToString() };

    public static IEnumerable<object[]> ThreadedCases() =>
        OpGrid.All.Where(OpGrid.IsThreaded).Select(c => new object[] { c.ToString() });

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string backend, string opCase)
    {
        var failures = OpGrid.Check(OpGrid.ByName[opCase], KernelRegistry.Create(backend));
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    static readonly Lazy<(IKernels One, IKernels Three)> s_pools =
        new(() => (new SimdKernels(new WorkerPool(1)), new SimdKernels(new WorkerPool(3))));

    /// <summary>Work is split so that each output element sees the same float operations whatever the thread count.</summary>
    [Theory]
    [MemberData(nameof(ThreadedCases))]
    public void CpuIsBitIdenticalAcrossThreadCounts(string opCase)
    {
        var (one, three) = s_pools.Value;
        var failures = OpGrid.CheckBitIdentical(OpGrid.ByName[opCase], one, "1 thread", three, "3 threads");
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [Fact]
    public void GridCoversEveryOpOfTheContract()
    {
        var ops = OpGrid.All.Select(c => c.Op).ToHashSet();
        foreach (var m in typeof(IKernels).GetMethods())
            if (!m.IsSpecialName) Assert.Contains(m.Name, ops);
        Assert.Equal(OpGrid.All.Count, OpGrid.ByName.Count);       // names are unique
        Assert.Contains("cpu", OpGrid.Backends);
    }

    [Fact]
    public void CaseNamesAreCanonical()
    {
        Assert.Contains("MatMul(rows=3,in=70,out=45,dtype=BF16,layout=in-major,bias=true)", OpGrid.ByName.Keys);
        Assert.Contains("MatMul(rows=1,in=17,out=15,dtype=F32,layout=out-major,bias=false,offset=odd)", OpGrid.ByName.Keys);
        Assert.Contains("Attention(rows=1,pos0=6,heads=8,kvHeads=1,headDim=33)", OpGrid.ByName.Keys);
        Assert.Contains("Activation(kind=Silu,n=0)", OpGrid.ByName.Keys);
        Assert.Contains("RmsNorm(rows=5,dim=257,offset=1)", OpGrid.ByName.Keys);
    }

    /// <summary>The fences themselves work: a kernel that writes one element too many is caught, and so is a missed element.</summary>
    [Fact]
    public void GuardsCatchOverflowAndMissedElements()
    {
        var c = OpGrid.ByName["AddInPlace(n=17)"];
        Assert.Empty(OpGrid.Check(c, new OverflowingKernels(0)));
        var over = OpGrid.Check(c, new OverflowingKernels(1));
        Assert.Contains(over, f => f.Contains("tail guard written at index 17"));
        var act = OpGrid.ByName["Activation(kind=Relu,n=9)"];
        var missed = OpGrid.Check(act, new OverflowingKernels(-1));
        Assert.Contains(missed, f => f.Contains("NaN") || f.Contains("out of tolerance"));
    }

    /// <summary>The reference with AddInPlace writing `extra` elements past the end (or one short when negative).</summary>
    sealed unsafe class OverflowingKernels(int extra) : IKernels
    {
        readonly IKernels _r = OpGrid.Reference;
        public string Name => "overflowing";
        public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
        {
            _r.AddInPlace(x, acc);
            fixed (float* p = acc) for (int i = 0; i < extra; i++) p[acc.Length + i] = 0f;
        }
        public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y)
        {
            _r.Activation(kind, x, y);
            if (extra < 0 && y.Length > 0) y[^1] = Engine.Tests.Kernels.Buffer.Poison;
        }
        public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst) => _r.EmbeddingGather(ids, table, dst);
        public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y) => _r.MatMul(x, rows, w, y);
        public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale) => _r.LayerNorm(x, rows, dim, weight, bias, eps, y, scale);
        public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale) => _r.RmsNorm(x, rows, dim, weight, weightOffset, eps, y, scale);
        public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope) => _r.Rope(x, rows, heads, headDim, pos0, rope);
        public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores) => _r.AttentionScores(q, k, s, scores);
        public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern) => _r.AttentionSoftmax(scores, s, pattern);
        public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z) => _r.AttentionMix(pattern, v, s, z);
        public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z) => _r.Attention(q, k, v, s, z);
        public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y) => _r.GatedActivation(kind, gate, up, y);
        public void ScaleInPlace(Span<float> x, float s) => _r.ScaleInPlace(x, s);
    }
}

/// <summary>The scalar definitions every tier shares (<see cref="ScalarMath"/>), against known values.</summary>
public class ScalarMathTests
{
    [Theory]
    [InlineData(0.0, 0.0)]
    [InlineData(0.5, 0.5204998778130465)]
    [InlineData(1.0, 0.8427007929497149)]
    [InlineData(2.0, 0.9953222650189527)]
    [InlineData(3.0, 0.9999779095030014)]
    [InlineData(3.5, 0.9999992569016276)]
    [InlineData(-1.5, -0.9661051464753108)]
    [InlineData(5.0, 0.9999999999984626)]
    [InlineData(-5.0, -0.9999999999984626)]
    [InlineData(30.0, 1.0)]
    public void ErfMatchesKnownValues(double x, double erf) => Assert.True(Math.Abs(ScalarMath.Erf(x) - erf) <= 1e-13, $"erf({x}) = {ScalarMath.Erf(x):R}, expected {erf:R}");

    [Fact]
    public void ErfOfNaNIsNaN() => Assert.True(double.IsNaN(ScalarMath.Erf(double.NaN)));

    // Values from Python's math.erf / math.tanh / math.exp (float64) on the same formulas.
    [Theory]
    [InlineData(1.0, 0.8413447460685429, 0.8411919906082768, 0.7310585786300049)]
    [InlineData(-1.0, -0.15865525393145707, -0.15880800939172324, -0.2689414213699951)]
    [InlineData(2.0, 1.9544997361036416, 1.954597694087775, 1.7615941559557646)]
    [InlineData(-3.0, -0.00404969409489031, -0.0036373920817729943, -0.14227761953270035)]
    [InlineData(0.0, 0.0, 0.0, 0.0)]
    public void ActivationsMatchKnownValues(double x, double geluErf, double geluTanh, double silu)
    {
        Assert.True(Math.Abs(ScalarMath.GeluErf(x) - geluErf) <= 1e-13, $"gelu_erf({x}) = {ScalarMath.GeluErf(x):R}");
        Assert.True(Math.Abs(ScalarMath.GeluTanh(x) - geluTanh) <= 1e-13, $"gelu_tanh({x}) = {ScalarMath.GeluTanh(x):R}");
        Assert.True(Math.Abs(ScalarMath.Silu(x) - silu) <= 1e-13, $"silu({x}) = {ScalarMath.Silu(x):R}");
        Assert.True(Math.Abs(ScalarMath.GeluErf((float)x) - geluErf) <= 1e-6);
        Assert.True(Math.Abs(ScalarMath.GeluTanh((float)x) - geluTanh) <= 1e-6);
        Assert.True(Math.Abs(ScalarMath.Silu((float)x) - silu) <= 1e-6);
    }
}
