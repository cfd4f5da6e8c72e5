using System.Runtime.CompilerServices;
using Engine.Kernels.Ilgpu;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>Registers "ilgpu-cpu" and "ilgpu-cuda" in the test process, so KernelRegistry and Session can create them.</summary>
static class IlgpuTestModule
{
#pragma warning disable CA2255 // a module initializer in a test assembly is the point
    [ModuleInitializer]
    internal static void Register() => IlgpuBackends.Register();
#pragma warning restore CA2255
}

/// <summary>
/// Every ILGPU test class joins this collection: they share one CPU accelerator (about a thousand OS threads) and must
/// not run in parallel with each other; xunit runs the collection on its own after the parallel ones.
/// </summary>
[CollectionDefinition("ilgpu", DisableParallelization = true)]
public sealed class IlgpuCollection;

/// <summary>A fact that needs a CUDA device: skipped with the reason when ILGPU finds none.</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (IlgpuDevice.CudaDeviceCount() == 0) Skip = $"skipped: no CUDA device ({IlgpuDevice.CudaProbe})";
    }
}

/// <summary>A theory that needs a CUDA device: skipped with the reason when ILGPU finds none.</summary>
public sealed class GpuTheoryAttribute : TheoryAttribute
{
    public GpuTheoryAttribute()
    {
        if (IlgpuDevice.CudaDeviceCount() == 0) Skip = $"skipped: no CUDA device ({IlgpuDevice.CudaProbe})";
    }
}
