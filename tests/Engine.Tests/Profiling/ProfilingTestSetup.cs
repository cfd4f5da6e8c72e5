using System.Runtime.CompilerServices;

namespace Engine.Tests.Profiling;

/// <summary>
/// Keeps the tests out of the user's cache folder and off long measurements: every `engine sysinfo` / `engine profile`
/// of the test process (and of the engine processes it starts) caches its machine figures in a temporary folder, and
/// measures quickly (ENGINE_SYSINFO_QUICK=1: milliseconds instead of about a second; the CLI fuzz runs sysinfo a
/// thousand times).
/// </summary>
static class ProfilingTestModule
{
    public static string CacheFolder { get; } = Path.Combine(Path.GetTempPath(), $"engine-test-cache-{Environment.ProcessId}");

#pragma warning disable CA2255 // a module initializer in a test assembly is the point
    [ModuleInitializer]
    internal static void Setup()
    {
        Environment.SetEnvironmentVariable("ENGINE_CACHE_DIR", CacheFolder);
        Environment.SetEnvironmentVariable("ENGINE_SYSINFO_QUICK", "1");
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { if (Directory.Exists(CacheFolder)) Directory.Delete(CacheFolder, true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        };
    }
#pragma warning restore CA2255
}
