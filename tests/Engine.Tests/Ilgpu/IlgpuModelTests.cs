using Engine.Kernels;
using Engine.Kernels.Ilgpu;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// Whole models on "ilgpu-cpu" (arena, KV cache and weights in ILGPU device memory): every fixture's logits, taps read
/// back, greedy continuation through the KV cache and a patched run, with the checks and tolerances of the CPU tests
/// (FixtureParityTests, RuntimeInvariantTests, Stories260kTests are called with the backend name).
/// </summary>
[Collection("ilgpu")]
public class IlgpuModelTests
{
    const string Backend = IlgpuBackends.CpuName;

    public static IEnumerable<object[]> Fixtures() => TestPaths.RandomFixtures.Select(f => new object[] { f });
    public static IEnumerable<object[]> Families() => RuntimeInvariantTests.Families.Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void LogitsOfEveryPromptMatch(string fixture) => new FixtureParityTests().LogitsOfEveryPromptMatch(fixture, Backend);

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void EveryTapOfPrompt0Matches(string fixture) => new FixtureParityTests().EveryTapOfPrompt0Matches(fixture, Backend);

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void GreedyContinuationMatchesThroughKvCache(string fixture) => new FixtureParityTests().GreedyContinuationMatchesThroughKvCache(fixture, Backend);

    [SharedFact("fixtures", "stories260k")]
    public void Stories260kMatchesReferenceLogitsTapsAndGreedy() => new Stories260kTests().MatchesReferenceLogitsTapsAndGreedy(Backend);

    /// <summary>
    /// Hooks that write (through the runtime's host round trip): one row of resid_pre overwritten, one head of z zeroed,
    /// mlp_out scaled. The patched logits match the same hooks on "cpu" and differ from the clean run.
    /// </summary>
    [Theory]
    [MemberData(nameof(Fixtures))]
    public void PatchedRunMatchesCpu(string fixture)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var c = model.Config;
        int[] tokens = [5, 17, 300, 42, 1, 0, 99, 7];
        float[] Run(string backend, bool patched)
        {
            using var s = new Session(model, new SessionOptions { Backend = backend, Capacity = 16 });
            if (!patched) return s.Run(tokens).ToArray();
            var fill = Enumerable.Range(0, c.DModel).Select(i => MathF.Sin(i) * 0.5f).ToArray();
            using var h1 = s.Hooks.Add("blocks.0.hook_resid_pre", tap => fill.CopyTo(tap.Row(2)));
            using var h2 = s.Hooks.Add($"blocks.{c.NLayers - 1}.attn.hook_z", tap =>
            {
                for (int t = 0; t < tap.Shape.D0; t++) tap.Row(t).Slice(0, c.HeadDim).Clear();   // head 0 ablated
            });
            using var h3 = s.Hooks.Add("blocks.0.hook_mlp_out", tap => { foreach (ref var x in tap.Data) x *= 0.5f; });
            return s.Run(tokens).ToArray();
        }
        var device = Run(Backend, true);
        var cpu = Run("cpu", true);
        Compare.Close(device, cpu, 1e-4, $"{fixture}: patched logits, {Backend} vs cpu");
        var clean = Run(Backend, false);
        Assert.True(Compare.MaxAbsDiff(device, clean, out _) > 1e-3, $"{fixture}: the patch changed nothing");
    }

    /// <summary>
    /// The same edits as <see cref="PatchedRunMatchesCpu"/> registered as interventions (HookRegistry.AddIntervention):
    /// on the device they run as kernels and no tap is copied to the host (the run downloads exactly what an unhooked
    /// run does: the logits); the logits equal the host hooks' on cpu, and on cpu interventions equal host hooks bit for bit.
    /// </summary>
    [Theory]
    [MemberData(nameof(Fixtures))]
    public void InterventionsRunOnTheDeviceWithoutHostCopies(string fixture)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var c = model.Config;
        int[] tokens = [5, 17, 300, 42, 1, 0, 99, 7];
        var fill = Enumerable.Range(0, c.DModel).Select(i => MathF.Sin(i) * 0.5f).ToArray();
        List<IDisposable> Edit(Session s) =>
        [
            s.Hooks.AddIntervention("blocks.0.hook_resid_pre", DeviceIntervention.SetRows(2, 1, c.DModel, fill)),
            s.Hooks.AddIntervention($"blocks.{c.NLayers - 1}.attn.hook_z", DeviceIntervention.ZeroColumns(tokens.Length, 0, c.HeadDim)),
            s.Hooks.AddIntervention("blocks.0.hook_mlp_out", DeviceIntervention.ScaleColumns(tokens.Length, 0, c.DModel, 0.5f)),
        ];
        List<IDisposable> HostHooks(Session s) =>
        [
            s.Hooks.Add("blocks.0.hook_resid_pre", tap => fill.CopyTo(tap.Row(2))),
            s.Hooks.Add($"blocks.{c.NLayers - 1}.attn.hook_z", tap => { for (int t = 0; t < tap.Shape.D0; t++) tap.Row(t).Slice(0, c.HeadDim).Clear(); }),
            s.Hooks.Add("blocks.0.hook_mlp_out", tap => { foreach (ref var x in tap.Data) x *= 0.5f; }),
        ];
        float[] Run(string backend, Func<Session, List<IDisposable>>? hooks, out long downloaded)
        {
            using var s = new Session(model, new SessionOptions { Backend = backend, Capacity = 16 });
            var handles = hooks?.Invoke(s) ?? [];
            long before = (s.Backend as IlgpuBackend)?.DownloadedFloats ?? 0;
            var logits = s.Run(tokens).ToArray();
            downloaded = ((s.Backend as IlgpuBackend)?.DownloadedFloats ?? 0) - before;
            foreach (var h in handles) h.Dispose();
            return logits;
        }
        var onDevice = Run(Backend, Edit, out long withEdits);
        Run(Backend, null, out long plain);
        Assert.Equal(plain, withEdits);
        var hostHooks = Run("cpu", HostHooks, out _);
        Compare.Close(onDevice, hostHooks, 1e-4, $"{fixture}: device interventions vs host hooks on cpu");
        var cpuEdits = Run("cpu", Edit, out _);
        Assert.Equal(hostHooks, cpuEdits);
    }

    // ---- the runtime's invariants on the device: no-op hooks are bit-identical (hooks on scores/pattern switch attention
    // ---- from the flash kernel to the three steps: within 1e-5 there, see RuntimeInvariantTests.AssertSameAsFused), the
    // ---- KV cache gives the logits of one run, patching reproduces another run, zeroing a head removes its share.

    [Theory]
    [MemberData(nameof(Families))]
    public void NoOpHooksLeaveLogitsBitIdentical(string fixture) => new RuntimeInvariantTests().NoOpHooksLeaveLogitsBitIdentical(fixture, Backend);

    [Theory]
    [MemberData(nameof(Families))]
    public void KvCacheGivesTheLogitsOfOneRun(string fixture) => new RuntimeInvariantTests().KvCacheGivesTheLogitsOfOneRun(fixture, Backend);

    [Theory]
    [MemberData(nameof(Families))]
    public void PatchingResidPreWithAnotherRunReproducesThatRunDownstream(string fixture) =>
        new RuntimeInvariantTests().PatchingResidPreWithAnotherRunReproducesThatRunDownstream(fixture, Backend);

    [Theory]
    [MemberData(nameof(Families))]
    public void ZeroingOneHeadOfZRemovesExactlyItsShareOfTheOutputProjection(string fixture) =>
        new RuntimeInvariantTests().ZeroingOneHeadOfZRemovesExactlyItsShareOfTheOutputProjection(fixture, Backend);

    [Theory]
    [MemberData(nameof(Families))]
    public void RunsAreBitIdentical(string fixture) => new RuntimeInvariantTests().RunsAreBitIdentical(fixture, Backend);

    [Fact]
    public void SessionKeepsItsArenaOnTheDevice()
    {
        using var model = Model.Load(TestPaths.Fixture("llama"));
        using var s = new Session(model, new SessionOptions { Backend = Backend, Capacity = 16 });
        Assert.IsType<IlgpuBackend>(s.Backend);
        Assert.False(s.Backend.IsHost);
        Assert.Throws<NotSupportedException>(() => s.Backend.HostView(new DeviceSpan(s.Backend.Allocate(4), 0, 4)));
        Assert.Equal(model.Config.VocabSize * 3, s.Run([1, 2, 3]).Length);
    }

    [Fact]
    public void CliRunsOnIlgpuCpu()
    {
        var cpu = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--json", "--backend", "cpu");
        var dev = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--json", "--backend", Backend);
        Assert.True(dev.ExitCode == 0, dev.Stderr);
        Assert.Equal(0, cpu.ExitCode);
        // The same argmax per position (the JSON carries it) on both backends.
        static string Argmax(string json) => System.Text.Json.JsonDocument.Parse(json).RootElement.GetProperty("argmax_per_position").GetRawText();
        Assert.Equal(Argmax(cpu.Stdout), Argmax(dev.Stdout));
        Assert.Contains(Backend, KernelRegistry.Names);
    }

    /// <summary>Without a CUDA device, asking for ilgpu-cuda fails loudly (exit 2, the reason), never falls back to the CPU.</summary>
    [Fact]
    public void IlgpuCudaWithoutADeviceFailsWithAClearMessage()
    {
        if (IlgpuDevice.CudaDeviceCount() > 0) return;   // a GPU machine: IlgpuCudaTests cover it
        var e = Assert.Throws<UsageException>(() => KernelRegistry.CreateBackend(IlgpuBackends.CudaName));
        Assert.StartsWith("--backend ilgpu-cuda: no CUDA device found (ILGPU", e.Message);
        var r = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--backend", IlgpuBackends.CudaName);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("no CUDA device found", r.Stderr);
    }
}
