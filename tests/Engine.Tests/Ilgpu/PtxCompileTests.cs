using Engine.Kernels.Ilgpu;
using ILGPU.Backends;
using ILGPU.Backends.EntryPoints;
using ILGPU.Backends.PTX;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// Offline PTX: every kernel of the backend compiles for an H100 (sm_90, PTX ISA 8.4) without a GPU or a driver, through
/// ILGPU's PTX backend (STACK.md 1.2). ILGPU 1.5.3 clamps the target to sm_80; the driver JITs that to sm_90.
/// </summary>
[Collection("ilgpu")]
public class PtxCompileTests
{
    public static IEnumerable<object[]> Kernels() => IlgpuDevice.KernelMethods.Select(m => new object[] { m.DeclaringType!.Name + "." + m.Name });

    [Theory]
    [MemberData(nameof(Kernels))]
    public void CompilesForSm90(string kernel)
    {
        var method = IlgpuDevice.KernelMethods.Single(m => m.DeclaringType!.Name + "." + m.Name == kernel);
        string ptx = IlgpuDevice.CompilePtx(method, CudaArchitecture.SM_90, CudaInstructionSet.ISA_84);
        Assert.Contains(".version 8.4", ptx);
        Assert.Contains(".target sm_", ptx);
        Assert.Contains(".entry", ptx);
        if (kernel.Contains("MatMulTiled") || kernel.Contains("Softmax") || kernel.Contains("Norm"))
        {
            Assert.Contains("bar.sync", ptx);
            Assert.Contains(".shared", ptx);
        }
        if (kernel.Contains("Flash"))
        {
            Assert.Contains("bar.warp.sync", ptx);   // warps of a group are independent: warp barriers only
            Assert.DoesNotContain("bar.sync", ptx);
            Assert.Contains(".shared", ptx);
            Assert.Contains("ex2.approx.f32", ptx);
        }
        if (kernel.Contains("MatMul") || kernel.Contains("Gemv")) Assert.Contains("cvt.f32.f16", ptx);   // F16 widened in the kernel
    }
}
