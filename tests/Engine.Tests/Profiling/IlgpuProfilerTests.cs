using Engine.Kernels;
using Engine.Kernels.Profiling;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Profiling;

/// <summary>The profiler on the ILGPU CPU accelerator: every op waits for the device, so per-op times add up.</summary>
[Collection("ilgpu")]
public class IlgpuProfilerTests
{
    [Fact]
    public void ProfilesWithDeviceSynchronisation()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        string? problem = null;
        for (int attempt = 0; attempt < 2 && (attempt == 0 || problem != null); attempt++)
        {
            using var backend = KernelRegistry.CreateBackend("ilgpu-cpu");
            Assert.False(backend.IsHost);
            var profile = Profiler.Run(model, backend, [1, 2, 3, 4], decode: 2, warmup: 1, trace: true);
            problem = ProfileChecks.CoverageProblem(profile);
            // the logits come back through a synchronisation and a download, both timed as ops of the pass
            Assert.Contains(profile.Stats, s => s.Op == "download" && s.Phase == "decode");
            var ms = new MemoryStream();
            using (var w = new System.Text.Json.Utf8JsonWriter(ms)) profile.WriteTrace(w, "ilgpu");
            ProfileChecks.AssertValidTrace(ProfileChecks.Parse(System.Text.Encoding.UTF8.GetString(ms.ToArray())), profile.Stats.Sum(s => s.Calls));
        }
        Assert.Null(problem);
        using var b = KernelRegistry.CreateBackend("ilgpu-cpu");
        using var prof = new ProfilingBackend(b, ownsInner: false);
        Assert.True(prof.Synchronizing);
    }

    [Fact]
    public void CliProfilesOnIlgpuCpu()
    {
        var r = Support.Cli.Run("profile", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--decode", "2", "--backend", "ilgpu-cpu", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        ProfilerTests.CliJsonChecks(ProfileChecks.Parse(r.Stdout), "ilgpu-cpu", synchronized: true);
    }
}
