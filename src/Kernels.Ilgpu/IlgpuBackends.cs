namespace Engine.Kernels.Ilgpu;

/// <summary>Registers the ILGPU backends with <see cref="KernelRegistry"/> (the CLI at start-up, the tests in a module initializer).</summary>
public static class IlgpuBackends
{
    public const string CpuName = "ilgpu-cpu";
    public const string CudaName = "ilgpu-cuda";

    /// <summary>
    /// "ilgpu-cpu": ILGPU's CPU accelerator (CUDA-like warps of 32 and groups of up to 1024 threads; slow, for tests).
    /// "ilgpu-cuda": CUDA device 0; creating it fails with a UsageException when ILGPU finds no CUDA device.
    /// Nothing is created here: the accelerator starts when a backend is first asked for.
    /// </summary>
    public static void Register()
    {
        KernelRegistry.Register(CpuName, () => new IlgpuBackend(IlgpuDevice.Cpu, CpuName));
        KernelRegistry.Register(CudaName, () => new IlgpuBackend(IlgpuDevice.Cuda, CudaName));
    }
}
