using System.Diagnostics;
using System.Runtime.Intrinsics.X86;
using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Embedding;

/// <summary>
/// The CI step for the embeddable build: publishes the CLI as a NativeAOT, trimmed binary (into a temporary folder, with
/// its own artifacts path so the test run's binaries are not touched), requires zero trim/AOT warnings (IL2xxx/IL3xxx),
/// then runs the binary on a fixture and compares its logits with the JIT engine in this process. Reports size and
/// start-up time (reported, not asserted). About 1.5 minutes on 2 cores; needs the ILCompiler package from NuGet (the
/// package registry is reachable in CI; restored once).
/// </summary>
public class AotPublishTests(ITestOutputHelper output)
{
    [Fact]
    [Trait("Category", "Aot")]
    public void NativeAotBinaryPublishesWithoutWarningsAndMatchesTheJitEngine()
    {
        if (!OperatingSystem.IsLinux() || !(X86Base.IsSupported))
        {
            output.WriteLine("skipped: the AOT check publishes for linux-x64 and runs here only on a Linux x64 machine");
            return;
        }
        using var dir = new TempDir();
        string outDir = dir.File("out");
        // the binary must run on this machine: AVX-512 build (the project's default) only where AVX-512 is there
        string isa = Avx512F.IsSupported ? "x86-64-v4" : "x86-64-v3";
        var publish = RunProcess("dotnet", ["publish", Path.Combine(TestPaths.RepoRoot, "src", "Cli"), "-c", "Release", "-r", "linux-x64",
            "-p:PublishAot=true", $"-p:IlcInstructionSet={isa}", "--artifacts-path", dir.File("artifacts"), "-o", outDir, "-nologo"], TimeSpan.FromMinutes(8));
        Assert.True(publish.Code == 0, $"dotnet publish failed ({publish.Code}):\n{publish.Stdout}\n{publish.Stderr}");
        var warnings = Regex.Matches(publish.Stdout + publish.Stderr, @"warning IL[23]\d{3}[^\r\n]*").Select(m => m.Value).Distinct().ToList();
        Assert.True(warnings.Count == 0, "trim/AOT warnings:\n" + string.Join("\n", warnings));

        string exe = Path.Combine(outDir, "engine");
        Assert.True(File.Exists(exe), "no engine binary in the publish folder");
        long size = new FileInfo(exe).Length;
        output.WriteLine($"NativeAOT engine ({isa}): {size / 1048576.0:F1} MiB (+ libSkiaSharp.so {new FileInfo(Path.Combine(outDir, "libSkiaSharp.so")).Length / 1048576.0:F1} MiB for pictures)");
        Assert.True(size < 64L << 20, $"binary of {size} bytes");

        var starts = new List<double>();
        for (int i = 0; i < 5; i++)
        {
            var sw = Stopwatch.StartNew();
            var v = RunProcess(exe, ["--version"], TimeSpan.FromSeconds(30));
            starts.Add(sw.Elapsed.TotalMilliseconds);
            Assert.Equal(0, v.Code);
        }
        starts.Sort();
        output.WriteLine($"start-up (engine --version), median of 5: {starts[2]:F1} ms");

        string fixture = TestPaths.Fixture("llama");
        string[] args = ["run", "--model", fixture, "--tokens", "1,5,9,200,3", "--top", "5", "--json"];
        var aot = RunProcess(exe, args, TimeSpan.FromMinutes(1));
        Assert.True(aot.Code == 0, aot.Stderr);
        var jit = Support.Cli.Run(args);
        Assert.True(jit.ExitCode == 0, jit.Stderr);
        using (var a = JsonDocument.Parse(aot.Stdout))
        using (var j = JsonDocument.Parse(jit.Stdout))
        {
            var ta = a.RootElement.GetProperty("top").EnumerateArray().ToArray();
            var tj = j.RootElement.GetProperty("top").EnumerateArray().ToArray();
            Assert.Equal(tj.Length, ta.Length);
            for (int i = 0; i < ta.Length; i++)
            {
                Assert.Equal(tj[i].GetProperty("id").GetInt32(), ta[i].GetProperty("id").GetInt32());
                Assert.Equal(tj[i].GetProperty("logit").GetDouble(), ta[i].GetProperty("logit").GetDouble(), 1e-5);
            }
        }

        // pictures through SkiaSharp's native library next to the binary
        var lens = RunProcess(exe, ["lens", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--out", dir.File("lens")], TimeSpan.FromMinutes(1));
        Assert.True(lens.Code == 0, lens.Stderr);
        Assert.True(new FileInfo(Path.Combine(dir.File("lens"), "figure.png")).Length > 1000);
        // the GPU backend is not in the AOT build: a clear one-line refusal
        var gpu = RunProcess(exe, ["run", "--model", fixture, "--tokens", "1", "--backend", "ilgpu-cpu"], TimeSpan.FromMinutes(1));
        Assert.Equal(2, gpu.Code);
        Assert.Contains("NativeAOT", gpu.Stderr);
        Assert.DoesNotContain("   at ", gpu.Stderr);
        // bad input: one line, non-zero
        var bad = RunProcess(exe, ["run", "--model", dir.File("nope"), "--tokens", "1"], TimeSpan.FromMinutes(1));
        Assert.NotEqual(0, bad.Code);
        Assert.StartsWith("engine: error: ", bad.Stderr);
    }

    internal static (int Code, string Stdout, string Stderr) RunProcess(string file, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("ENGINE_DEBUG");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"{file} {string.Join(" ", args)} did not finish in {timeout}");
        }
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}

/// <summary>
/// dotnet pack (of the already built Release tree): the CPU engine's packages and the ILGPU backend's package come out
/// separately, and no CPU package depends on ILGPU; the ILGPU package does.
/// </summary>
public class PackTests(ITestOutputHelper output)
{
    [Fact]
    public void PacksTheCpuEngineAndTheIlgpuBackendSeparately()
    {
        using var dir = new TempDir();
        var pack = AotPublishTests.RunProcess("dotnet", ["pack", Path.Combine(TestPaths.RepoRoot, "Engine.sln"), "-c", "Release", "--no-build", "-o", dir.Path, "-nologo"], TimeSpan.FromMinutes(3));
        Assert.True(pack.Code == 0, pack.Stdout + pack.Stderr);
        var packages = Directory.GetFiles(dir.Path, "*.nupkg").Select(Path.GetFileName).Order().ToArray();
        output.WriteLine(string.Join(", ", packages));
        string[] cpu = ["Engine.Loader", "Engine.Kernels", "Engine.Runtime", "Engine.Interp", "Engine.Training"];
        foreach (var id in cpu.Append("Engine.Kernels.Ilgpu"))
            Assert.Contains(packages, f => f!.StartsWith(id + ".0", StringComparison.Ordinal));
        Assert.DoesNotContain(packages, f => f!.StartsWith("engine", StringComparison.Ordinal) || f!.Contains("Tests") || f!.Contains("Bench"));
        foreach (var file in Directory.GetFiles(dir.Path, "*.nupkg"))
        {
            using var zip = System.IO.Compression.ZipFile.OpenRead(file);
            var nuspec = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal));
            using var reader = new StreamReader(nuspec.Open());
            string xml = reader.ReadToEnd();
            bool ilgpuPackage = Path.GetFileName(file).StartsWith("Engine.Kernels.Ilgpu", StringComparison.Ordinal);
            Assert.True(ilgpuPackage == xml.Contains("id=\"ILGPU\"", StringComparison.Ordinal), $"{Path.GetFileName(file)}: ILGPU dependency {(ilgpuPackage ? "missing" : "present")}");
            Assert.True(zip.Entries.Any(e => e.FullName.EndsWith(".xml", StringComparison.Ordinal) && e.FullName.StartsWith("lib/", StringComparison.Ordinal)),
                $"{Path.GetFileName(file)}: no XML documentation in lib/");
        }
    }
}
