using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Kernels;
using Engine.Kernels.Ilgpu;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// The batched sweeps' lane hooks on "ilgpu-cpu" through their device form (<see cref="LaneHook.Device"/>): a lane tap
/// whose hooks all have one is edited by kernels where it lives. <see cref="Session.RunLanes(ReadOnlySpan{SweepLane})"/>
/// then downloads and uploads exactly what the same lanes without hooks do (their logits), gives the same logits bit
/// for bit as the host form on the same backend (which copies each hooked lane tap to the host and back), and matches
/// the "cpu" backend within the foundation tolerance (1e-4, as IlgpuModelTests). The methods' fast paths (activation
/// patching of resid_pre per position and of z per head, zero-ablation of every head, causal tracing) download only
/// their base runs and one logits row (or the metric's columns) per cell, and upload nothing beyond their cache run's.
/// </summary>
[Collection("ilgpu")]
public class LaneDeviceHookTests
{
    const string Device = IlgpuBackends.CpuName;
    const double Tol = 1e-4;

    /// <summary>
    /// Lanes of one base with the kinds of lane hooks the sweeps build (copies from another run's tensors by position,
    /// head, (position, head), pattern row and neuron; zero and per-head mean fills; a constant fill), some from z, some
    /// keeping only their last row (a hook in the last layer at T − 1 then sees one row at Pos0 = T − 1).
    /// </summary>
    static SweepLane[] Lanes(ModelConfig c, SweepBase b, Func<HookKind, int, float[]> source, float[] mean, int differs)
    {
        int T = b.Length, N = c.NLayers, last = N - 1;
        SitePatch P(Site s) => new(s, HookPoints.Shape(c, s.Kind, T, T));
        LaneHook Copy(Site s) => P(s).CopyHook(s.Kind, s.Layer, source(s.Kind, s.Layer));
        return
        [
            new(b, 1, 2, [Copy(new Site(HookKind.ResidPre, 1, Position: 2))]),
            new(b, 0, differs, [Copy(new Site(HookKind.ResidPre, 0, Position: differs))], LastRowOnly: true),
            new(b, 0, 0, [Copy(new Site(HookKind.Z, 0, Head: 1))], FromZ: true),
            new(b, last - 1, 3, [Copy(new Site(HookKind.Z, last - 1, Position: 3, Head: 0))], FromZ: true),
            new(b, last, T - 1, [Copy(new Site(HookKind.Z, last, Position: T - 1, Head: c.NHeads - 1))], LastRowOnly: true, FromZ: true),
            new(b, last, 0, [Copy(new Site(HookKind.AttnOut, last, Position: T - 1))], LastRowOnly: true, FromZ: true),
            new(b, 1, 0, [Copy(new Site(HookKind.Pattern, 1, Position: 5, Head: 0))]),
            new(b, last, 0, [Copy(new Site(HookKind.Pattern, last, Position: T - 1, Head: 1))], LastRowOnly: true),
            new(b, 0, 0, [Copy(new Site(HookKind.MlpPost, 0, Index: 3)), Copy(new Site(HookKind.MlpOut, last, Position: T - 1))], LastRowOnly: true, FromZ: true),
            new(b, 0, 0, [P(new Site(HookKind.Z, 0, Head: 2)).FillHook(HookKind.Z, 0, 0f), P(new Site(HookKind.Z, 1, Head: 0)).SetPerHeadHook(HookKind.Z, 1, mean)], FromZ: true),
            new(b, 1, 1, [P(new Site(HookKind.ResidPre, 1, Position: 1)).FillHook(HookKind.ResidPre, 1, 0.25f)]),
            new(b, 0, 0),   // no hook
        ];
    }

    static SweepLane[] Strip(SweepLane[] lanes, Func<LaneHook, LaneHook?> f) =>
        lanes.Select(x => x with { Hooks = x.Hooks?.Select(f).Where(h => h != null).Select(h => h!.Value).ToList() }).ToArray();

    static bool BitIdentical(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) return false;
        for (int i = 0; i < a.Length; i++)
            if (BitConverter.SingleToInt32Bits(a[i]) != BitConverter.SingleToInt32Bits(b[i])) return false;
        return true;
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void LaneHooksWithADeviceFormMakeNoHostRoundTrip(string fixture)
    {
        using var p = new CpuDevicePair(fixture);
        var c = p.Model.Config;
        int V = c.VocabSize;
        // the other run's tensors (one host array per tap, shared by both backends' lanes)
        var (_, cache) = p.Cpu.RunWithCache(p.Corrupt, _ => true);
        float[] Source(HookKind k, int l) => cache[HookPoints.Name(k, l)].Data;
        var mean = Enumerable.Range(0, c.QDim).Select(i => MathF.Cos(0.1f * i)).ToArray();
        using var bDev = p.Dev.CaptureBase(p.Clean);
        using var bCpu = p.Cpu.CaptureBase(p.Clean);
        int differs = Enumerable.Range(0, p.Clean.Length).First(i => p.Clean[i] != p.Corrupt[i]);   // a position whose token the runs do not share
        var lanesDev = Lanes(c, bDev, Source, mean, differs);
        var lanesCpu = Lanes(c, bCpu, Source, mean, differs);
        int B = lanesDev.Length;

        var plainDev = Strip(lanesDev, _ => null);
        float[] unhooked = [], device = [], host = [];
        var plain = p.Traffic(() => unhooked = p.Dev.RunLanes(plainDev).ToArray());
        var dev = p.Traffic(() => device = p.Dev.RunLanes(lanesDev).ToArray());
        var viaHost = p.Traffic(() => host = p.Dev.RunLanes(Strip(lanesDev, h => h with { Device = null })).ToArray());
        Assert.Equal(((long)B * V, 0L), plain);
        Assert.Equal(plain, dev);
        Assert.True(viaHost.Down > plain.Down && viaHost.Up > 0, $"the host form made no round trip ({viaHost})");
        Assert.True(BitIdentical(device, host), $"{fixture}: device form and host form of the lane hooks differ on {Device}");
        var cpu = p.Cpu.RunLanes(lanesCpu).ToArray();
        var cpuPlain = p.Cpu.RunLanes(Strip(lanesCpu, _ => null)).ToArray();
        for (int i = 0; i < B; i++)
        {
            string what = $"{fixture}: lane {i} (layer {lanesDev[i].FirstLayer}, row {lanesDev[i].FromRow}, last row only {lanesDev[i].LastRowOnly}, from z {lanesDev[i].FromZ})";
            Compare.Close(device.AsSpan(i * V, V), cpu.AsSpan(i * V, V), Tol, $"{what}, {Device} vs cpu");
            Compare.Close(unhooked.AsSpan(i * V, V), cpuPlain.AsSpan(i * V, V), Tol, $"{what} unhooked, {Device} vs cpu");
            bool hooked = lanesCpu[i].Hooks is { Count: > 0 };
            Assert.True(hooked == Compare.MaxAbsDiff(cpu.AsSpan(i * V, V), cpuPlain.AsSpan(i * V, V), out _) > 1e-6, $"{what}: hooked {hooked}, but the logits say otherwise");
        }
        // the selected-columns form downloads only those columns
        int[] columns = [3, 1];
        var sel = p.Traffic(() => p.Dev.RunLanes(lanesDev, columns));
        Assert.Equal(((long)B * columns.Length, 0L), sel);
    }

    /// <summary>
    /// A session intervention and a lane device form on the same tap both run on the device (session first, then the
    /// lane's, as on cpu); a session host hook there sends that tap through the host (one round trip of the lane's rows)
    /// with the same result.
    /// </summary>
    [Fact]
    public void LaneDeviceFormsBesideSessionHooks()
    {
        using var p = new CpuDevicePair("gpt2");
        var c = p.Model.Config;
        int V = c.VocabSize, D = c.DModel, T = p.Clean.Length;
        var src = p.Cpu.RunWithCache(p.Corrupt, n => n == "blocks.1.hook_resid_pre").Cache["blocks.1.hook_resid_pre"].Data;
        var shape = HookPoints.Shape(c, HookKind.ResidPre, T, T);
        SweepLane[] Make(SweepBase b) =>
        [
            new(b, 1, 2, [new SitePatch(new Site(HookKind.ResidPre, 1, Position: 3), shape).CopyHook(HookKind.ResidPre, 1, src)]),
            new(b, 1, 0, [new SitePatch(new Site(HookKind.ResidPre, 1, Position: 0), shape).CopyHook(HookKind.ResidPre, 1, src)], LastRowOnly: true),
        ];
        using var bDev = p.Dev.CaptureBase(p.Clean);
        using var bCpu = p.Cpu.CaptureBase(p.Clean);
        var lanesDev = Make(bDev);
        var lanesCpu = Make(bCpu);
        var unhookedLanes = Strip(lanesDev, _ => null);
        int rows = (T - 2) + T;   // the two lanes' resid_pre rows at layer 1
        // the session scales row 0 of each lane's tap by 0.5 (an intervention); with reader, a host hook reads the tap too
        float[] Run(Session s, SweepLane[] lanes, bool reader)
        {
            using (s.Hooks.AddIntervention(HookKind.ResidPre, 1, DeviceIntervention.ScaleColumns(1, 0, D, 0.5f)))
            using (reader ? s.Hooks.Add(HookKind.ResidPre, 1, _ => { }) : null)
                return s.RunLanes(lanes).ToArray();
        }
        var want = Run(p.Cpu, lanesCpu, false);
        float[] dev = [], withReader = [];
        var plain = p.Traffic(() => Run(p.Dev, unhookedLanes, false));
        var traffic = p.Traffic(() => dev = Run(p.Dev, lanesDev, false));
        Assert.Equal(plain, traffic);
        Assert.Equal((2L * V, 0L), plain);
        Compare.Close(dev, want, Tol, "session intervention + lane device forms");
        var readerTraffic = p.Traffic(() => withReader = Run(p.Dev, lanesDev, true));
        Assert.Equal((2L * V + rows * D, (long)rows * D), readerTraffic);
        Assert.True(BitIdentical(dev, withReader), "a session reader changed the result");
        // the session's block applied first (scales row 0 of each lane's tap), then the lane's copy, as on cpu
        var copyOnly = p.Cpu.RunLanes(lanesCpu).ToArray();
        Assert.True(Compare.MaxAbsDiff(want, copyOnly, out _) > 1e-5, "the session intervention did nothing");
    }

    static void CloseGrid(double[] got, double[] want, string what)
    {
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(got[i] - want[i]) <= Tol * Math.Max(1, Math.Abs(want[i]) / 10), $"{what}: [{i}] {got[i]} vs {want[i]}");
    }

    [Theory]
    [InlineData("gpt2", PatchActivation.ResidPre, false)]
    [InlineData("gpt2", PatchActivation.Z, false)]
    [InlineData("llama", PatchActivation.Z, true)]
    public void FastActivationPatchingMakesNoTapRoundTrip(string fixture, PatchActivation act, bool perPosition)
    {
        using var p = new CpuDevicePair(fixture);
        var c = p.Model.Config;
        var cells = new List<SweepCell>();
        var options = new PatchOptions { Activation = act, PerPosition = perPosition, Sweep = SweepOptions.Default with { OnCell = cells.Add } };
        var cpu = ActivationPatching.Run(p.Cpu, p.Clean, p.Corrupt, null, null, options);
        var kind = ActivationPatching.Kind(act);
        var names = Enumerable.Range(0, c.NLayers).Select(l => HookPoints.Name(kind, l)).ToHashSet();
        var cacheRun = p.Traffic(() => p.Dev.RunWithCache(p.Clean, names.Contains));
        var plain = p.Traffic(() => p.Dev.Run(p.Corrupt));
        cells.Clear();
        PatchResult dev = null!;
        var traffic = p.Traffic(() => dev = ActivationPatching.Run(p.Dev, p.Clean, p.Corrupt, null, null, options));
        Assert.Equal(cpu.AnswerToken, dev.AnswerToken);
        Assert.Equal(cpu.WrongToken, dev.WrongToken);
        CloseGrid(dev.Patched.Data, cpu.Patched.Data, $"{fixture} fast patching {act}");
        Assert.Contains(cpu.Normalized.Data, v => Math.Abs(v) > 0.05);
        // the source run with its cache, the target's base (an ordinary run), two logits (logit_diff) per cell
        Assert.True(cells.Count > 0 && cells.All(x => x.Patches.All(h => h.Hook.Device != null)));
        Assert.Equal(cacheRun.Down + plain.Down + 2L * cells.Count, traffic.Down);
        Assert.Equal(cacheRun.Up + plain.Up, traffic.Up);
    }

    [Fact]
    public void FastZeroAblationOfEveryHeadMakesNoTapRoundTrip()
    {
        using var p = new CpuDevicePair("gpt2");
        var options = new AblationOptions();
        var cpu = HeadAblation.Run(p.Cpu, p.Clean, null, options);
        var plain = p.Traffic(() => p.Dev.Run(p.Clean));
        AblationResult dev = null!;
        var traffic = p.Traffic(() => dev = HeadAblation.Run(p.Dev, p.Clean, null, options));
        Assert.Equal(cpu.Target, dev.Target);
        Assert.Equal(cpu.Entries.Count, dev.Entries.Count);
        for (int i = 0; i < cpu.Entries.Count; i++)
            Assert.True(Math.Abs(cpu.Entries[i].Logit - dev.Entries[i].Logit) <= Tol, $"{cpu.Entries[i].Label}: {dev.Entries[i].Logit} vs {cpu.Entries[i].Logit}");
        Assert.Contains(cpu.Entries, e => Math.Abs(e.Delta) > 1e-3);
        // the prompt's base (an ordinary run), then one logit (the target's) per head
        Assert.Equal((plain.Down + cpu.Entries.Count, plain.Up), traffic);
    }

    [Fact]
    public void FastCausalTraceMakesNoTapRoundTrip()
    {
        using var p = new CpuDevicePair("gpt2");
        var c = p.Model.Config;
        int[] tokens = p.Clean[..6], subject = [1, 2];
        var noise = TraceNoise.Generate(p.Model, subject.Length, null, samples: 2, seed: 3);
        var options = new TraceOptions { Window = 2 };
        var cpu = CausalTrace.Run(p.Cpu, tokens, subject, noise, null, options);
        var names = new HashSet<string>(Enumerable.Range(0, c.NLayers).SelectMany(l =>
            new[] { HookKind.ResidPost, HookKind.MlpOut, HookKind.AttnOut }.Select(k => HookPoints.Name(k, l))));
        var cacheRun = p.Traffic(() => p.Dev.RunWithCache(tokens, names.Contains));
        var plain = p.Traffic(() => p.Dev.Run(tokens));
        TraceResult dev = null!;
        var traffic = p.Traffic(() => dev = CausalTrace.Run(p.Dev, tokens, subject, noise, cpu.Target, options));
        Assert.True(Math.Abs(cpu.CorruptProb - dev.CorruptProb) <= Tol);
        Assert.True(Math.Abs(cpu.CleanProb - cpu.CorruptProb) > 1e-3, "the noise changed nothing");
        CloseGrid(dev.Resid!.Data, cpu.Resid!.Data, "fast causal trace resid");
        CloseGrid(dev.Mlp!.Data, cpu.Mlp!.Data, "fast causal trace mlp");
        CloseGrid(dev.Attn!.Data, cpu.Attn!.Data, "fast causal trace attn");
        // the clean run with its cache; per sample its corrupted base (an ordinary run) and one logits row per restoration
        long cells = 3L * c.NLayers * tokens.Length;
        Assert.Equal(cacheRun.Down + noise.Samples * (plain.Down + cells * c.VocabSize), traffic.Down);
        Assert.Equal(cacheRun.Up + noise.Samples * plain.Up, traffic.Up);
    }
}
