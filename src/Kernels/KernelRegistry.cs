using Engine.Kernels.Reference;
using Engine.Kernels.Simd;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// Backends by name, as the CLI's --backend, the tests and the benchmarks select them. "cpu" and "cpu-ref" are built
/// in; other assemblies (the ILGPU backend) register theirs with <see cref="Register"/> so that the CPU engine builds
/// and ships without them.
/// </summary>
public static class KernelRegistry
{
    public const string Default = "cpu";
    static readonly object Gate = new();
    static readonly Dictionary<string, Func<IBackend>> Plugins = new(StringComparer.Ordinal);
    static readonly Dictionary<string, string> Unavailable = new(StringComparer.Ordinal);

    /// <summary>Every name that can be created now (built-in first).</summary>
    public static IReadOnlyList<string> Names
    {
        get { lock (Gate) return ["cpu", "cpu-ref", .. Plugins.Keys.Order(StringComparer.Ordinal)]; }
    }

    /// <summary>Adds a backend by name (e.g. "ilgpu-cpu"); a later registration of the same name replaces it.</summary>
    public static void Register(string name, Func<IBackend> factory)
    {
        lock (Gate) { Plugins[name] = factory; Unavailable.Remove(name); }
    }

    /// <summary>Records why a known backend cannot be created in this build or on this machine (shown in its error).</summary>
    public static void MarkUnavailable(string name, string why)
    {
        lock (Gate) if (!Plugins.ContainsKey(name)) Unavailable[name] = why;
    }

    /// <summary>The backend the runtime runs on.</summary>
    public static IBackend CreateBackend(string name)
    {
        if (name is "cpu" or "cpu-ref") return new HostBackend(Create(name));
        Func<IBackend>? f;
        string? why;
        lock (Gate) { Plugins.TryGetValue(name, out f); Unavailable.TryGetValue(name, out why); }
        if (f != null) return f();
        if (why != null) throw new UsageException($"--backend {name}: {why}");
        if (name.StartsWith("ilgpu", StringComparison.Ordinal))
            throw new UsageException($"--backend {name}: the ILGPU backend is not part of this build (available: {string.Join(", ", Names)})");
        throw new UsageException($"--backend {name}: unknown backend (available: {string.Join(", ", Names)})");
    }

    /// <summary>Span-based kernels of a backend (for device backends: every call goes through device buffers).</summary>
    public static IKernels Create(string name) => name switch
    {
        "cpu" => new SimdKernels(),
        "cpu-ref" => new ReferenceKernels(),
        _ => CreateBackend(name) is var b && b.IsHost ? b.HostKernels : new BackendKernels(b),
    };
}
