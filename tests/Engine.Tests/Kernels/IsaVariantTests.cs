using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Kernels;

/// <summary>
/// ImageSharp's FeatureTestRunner for the op grid: re-runs the whole grid (tests/Engine.KernelCheck, which compiles
/// OpGrid.*.cs) in child processes with instruction sets turned off, so that the 256-bit, 128-bit and scalar paths of
/// TensorPrimitives run on one AVX-512 machine. The child prints what the runtime saw; each variant asserts it.
/// Knob names drift between runtimes: on .NET 10 DOTNET_EnableAVX512F=0 alone leaves AVX-512 on, DOTNET_EnableAVX512=0
/// turns it off; both are set.
/// </summary>
public class IsaVariantTests
{
    public enum Variant { NoAvx512, NoAvx2, NoHwIntrinsic }

    static string[] Knobs(Variant v) => v switch
    {
        Variant.NoAvx512 => ["DOTNET_EnableAVX512F", "DOTNET_EnableAVX512"],
        Variant.NoAvx2 => ["DOTNET_EnableAVX2"],
        _ => ["DOTNET_EnableHWIntrinsic"],
    };

    [Theory]
    [InlineData(Variant.NoAvx512)]
    [InlineData(Variant.NoAvx2)]
    [InlineData(Variant.NoHwIntrinsic)]
    public void OpGridPassesWithInstructionSetsTurnedOff(Variant variant)
    {
        var (code, output) = RunKernelCheck(Knobs(variant));
        Assert.True(code == 0, $"Engine.KernelCheck with {string.Join(", ", Knobs(variant).Select(k => k + "=0"))} exited {code}:\n{Tail(output)}");

        string isa = output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith("isa ", StringComparison.Ordinal))
            ?? throw new Xunit.Sdk.XunitException("the child did not report its instruction sets:\n" + Tail(output));
        bool v256 = variant == Variant.NoAvx512 && Vector256.IsHardwareAccelerated;
        bool v128 = variant != Variant.NoHwIntrinsic && Vector128.IsHardwareAccelerated;
        Assert.Equal($"isa Vector512=False Vector256={v256} Vector128={v128}", isa);
        Assert.Contains("failures 0", output);
    }

    static string Tail(string s) => s.Length <= 8000 ? s : "...\n" + s[^8000..];

    static (int Code, string Output) RunKernelCheck(string[] knobs)
    {
        string dll = KernelCheckPath();
        var psi = new ProcessStartInfo(DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add("--quiet");
        // Start from a clean slate: no ISA knob inherited from the parent, then the variant's knobs.
        foreach (var key in psi.Environment.Keys.ToList())
            if (key.StartsWith("DOTNET_Enable", StringComparison.OrdinalIgnoreCase) || key.StartsWith("COMPlus_Enable", StringComparison.OrdinalIgnoreCase))
                psi.Environment.Remove(key);
        foreach (var k in knobs) psi.Environment[k] = "0";

        var output = new StringBuilder();
        using var p = new Process { StartInfo = psi };
        p.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.Start();
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            p.Kill(entireProcessTree: true);
            throw new Xunit.Sdk.XunitException($"Engine.KernelCheck timed out after 5 minutes:\n{Tail(output.ToString())}");
        }
        p.WaitForExit();                                                     // drains the asynchronous readers
        lock (output) return (p.ExitCode, output.ToString());
    }

    /// <summary>ENGINE_KERNELCHECK, else the path the build recorded (same configuration as these tests), else a search under the repository.</summary>
    static string KernelCheckPath()
    {
        string? env = Environment.GetEnvironmentVariable("ENGINE_KERNELCHECK");
        if (!string.IsNullOrEmpty(env) && File.Exists(env)) return env;
        string? recorded = typeof(IsaVariantTests).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "KernelCheckPath")?.Value;
        if (recorded != null && File.Exists(recorded)) return Path.GetFullPath(recorded);
        var found = new[] { Path.Combine(TestPaths.RepoRoot, "tests", "Engine.KernelCheck", "bin"), Path.Combine(TestPaths.RepoRoot, "artifacts") }
            .Where(Directory.Exists)
            .SelectMany(d => Directory.EnumerateFiles(d, "Engine.KernelCheck.dll", SearchOption.AllDirectories))
            .Where(f => File.Exists(Path.ChangeExtension(f, ".runtimeconfig.json")))
            .OrderByDescending(File.GetLastWriteTimeUtc)
            .FirstOrDefault();
        return found ?? throw new Xunit.Sdk.XunitException(
            $"Engine.KernelCheck.dll not found (looked at '{recorded}' and under tests/Engine.KernelCheck/bin); build the solution or set ENGINE_KERNELCHECK");
    }

    /// <summary>The dotnet host running these tests (DOTNET_HOST_PATH, the current process, or next to the runtime).</summary>
    static string DotnetHost()
    {
        string exe = OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet";
        string? env = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (!string.IsNullOrEmpty(env) && File.Exists(env)) return env;
        string? self = Environment.ProcessPath;
        if (self != null && Path.GetFileName(self).Equals(exe, StringComparison.OrdinalIgnoreCase)) return self;
        // <root>/shared/Microsoft.NETCore.App/<version>/
        string root = Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
        string candidate = Path.Combine(root, exe);
        return File.Exists(candidate) ? candidate : exe;
    }
}
