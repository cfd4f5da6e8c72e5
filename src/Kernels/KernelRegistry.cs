using Engine.Kernels.Reference;
using Engine.Kernels.Simd;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>Backends by name, as the CLI's --backend, the tests and the benchmarks select them.</summary>
public static class KernelRegistry
{
    public const string Default = "cpu";
    public static IReadOnlyList<string> Names { get; } = ["cpu", "cpu-ref"];

    public static IKernels Create(string name) => name switch
    {
        "cpu" => new SimdKernels(),
        "cpu-ref" => new ReferenceKernels(),
        "ilgpu-cpu" or "ilgpu-cuda" => throw new UsageException($"--backend {name}: the ILGPU backend is not built into this engine yet (available: {string.Join(", ", Names)})"),
        _ => throw new UsageException($"--backend {name}: unknown backend (available: {string.Join(", ", Names)})"),
    };
}
