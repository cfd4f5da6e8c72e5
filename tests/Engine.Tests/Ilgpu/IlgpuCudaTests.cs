using Engine.Kernels.Ilgpu;
using Engine.Tests.Kernels;
using Engine.Tests.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// The same checks on a real GPU ("ilgpu-cuda"): skipped, with the reason, where ILGPU finds no CUDA device. Run on a GPU
/// machine with --filter "Category=Gpu" (src/Kernels.Ilgpu/README.md). The launch shapes are those of Tuning.Cuda.
/// </summary>
[Collection("ilgpu")]
[Trait("Category", "Gpu")]
public class IlgpuCudaTests
{
    const string Backend = IlgpuBackends.CudaName;

    static readonly Lazy<GuardedDeviceKernels> s_kernels = new(() => new GuardedDeviceKernels(new IlgpuBackend(IlgpuDevice.Cuda, Backend)));

    /// <summary>Every op, dtype and layout on small shapes, plus the cases that cut through the GPU tiles.</summary>
    public static IEnumerable<object[]> GridCases() =>
        OpGrid.All.Where((c, i) => i % 7 == 0 || c.ToString().Contains("nonfinite")).Select(c => new object[] { c.ToString() })
            .Concat(IlgpuOpGridTests.CudaShapeCases()).DistinctBy(r => (string)r[0]);

    [GpuTheory]
    [MemberData(nameof(GridCases))]
    public void OpGridMatchesReference(string opCase)
    {
        var failures = OpGrid.Check(OpGrid.ByName[opCase], s_kernels.Value);
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    public static IEnumerable<object[]> Fixtures() => TestPaths.RandomFixtures.Select(f => new object[] { f });

    [GpuTheory]
    [MemberData(nameof(Fixtures))]
    public void FixtureLogitsTapsAndGreedyMatch(string fixture)
    {
        var t = new FixtureParityTests();
        t.LogitsOfEveryPromptMatch(fixture, Backend);
        t.EveryTapOfPrompt0Matches(fixture, Backend);
        t.GreedyContinuationMatchesThroughKvCache(fixture, Backend);
    }

    [GpuTheory]
    [MemberData(nameof(IlgpuModelTests.Families), MemberType = typeof(IlgpuModelTests))]
    public void NoOpHooksLeaveLogitsBitIdentical(string fixture) => new RuntimeInvariantTests().NoOpHooksLeaveLogitsBitIdentical(fixture, Backend);

    [GpuFact]
    public void DeviceIsACudaAccelerator()
    {
        var d = IlgpuDevice.Cuda;
        Assert.True(d.IsCuda, d.Description);
        Assert.Equal(32, d.Accelerator.WarpSize);
    }
}
