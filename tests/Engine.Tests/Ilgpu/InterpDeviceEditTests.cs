using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Kernels.Ilgpu;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// The interpretability library's edits (scale / set, steering, activation patching, zero / mean / resample ablation,
/// causal-trace noise and restorations, noise making, attention freezing) on "ilgpu-cpu": they register as
/// interventions resolved per call, so they run as device kernels. Each method's results equal the "cpu" backend's
/// within the foundation tolerance (1e-4 on logits, as IlgpuModelTests), and a run downloads and uploads exactly what
/// an unhooked run of the same tokens does (the logits): no tap makes a host round trip, in prompts and in decode steps
/// through the KV cache alike. (Value arrays, e.g. another run's cached tensor, are uploaded once per array through the
/// backend's vector cache, which these counters do not count.)
/// </summary>
[Collection("ilgpu")]
public class InterpDeviceEditTests
{
    const string Device = IlgpuBackends.CpuName;
    const double Tol = 1e-4;

    /// <summary>
    /// The prompt, then decode steps of forced tokens through the KV cache (1 row at Pos0 = n): every call's logits, and
    /// the traffic of the whole sequence.
    /// </summary>
    static List<float[]> PromptAndDecode(Session s, int[] prompt, int[] next)
    {
        var all = new List<float[]> { s.Run(prompt).ToArray() };
        foreach (int t in next) all.Add(s.Forward([t]).ToArray());
        return all;
    }

    public static IEnumerable<object[]> Edits()
    {
        foreach (var fixture in new[] { "gpt2", "llama" })
        {
            yield return [fixture, "scale neuron -2, prompt and generated", 0];
            yield return [fixture, "set head 1 of z to 0.5 at positions 1,3 and generated", 1];
            yield return [fixture, "scale pattern head 0 by 0.5", 2];
            yield return [fixture, "steer resid_pre by 3 v on generated tokens only", 3];
            yield return [fixture, "zero a whole row of mlp_out at position 2", 4];
        }
    }

    static Intervention MakeEdit(int which, ModelConfig c, int T) => which switch
    {
        0 => new ScaleIntervention { Kind = HookKind.MlpPost, Layer = 1, Index = 5, Scale = -2, PromptLength = T, AlsoGenerated = true },
        1 => new ScaleIntervention { Kind = HookKind.Z, Layer = 0, Index = 1, SetTo = 0.5, Positions = [1, 3], PromptLength = T, AlsoGenerated = true },
        2 => new ScaleIntervention { Kind = HookKind.Pattern, Layer = 1, Index = 0, Scale = 0.5, PromptLength = T, AlsoGenerated = true },
        3 => new SteeringIntervention
        {
            Kind = HookKind.ResidPre, Layer = 1, Coefficient = 3, Positions = [], PromptLength = T, AlsoGenerated = true,
            Vector = Enumerable.Range(0, c.DModel).Select(i => MathF.Sin(0.7f * i + 1)).ToArray(),
        },
        _ => new ScaleIntervention { Kind = HookKind.MlpOut, Layer = 0, SetTo = 0, Positions = [2], PromptLength = T },
    };

    [Theory]
    [MemberData(nameof(Edits))]
    public void InterventionsRunOnTheDeviceInPromptAndDecodeSteps(string fixture, string what, int which)
    {
        using var p = new CpuDevicePair(fixture);
        var c = p.Model.Config;
        int T = p.Clean.Length;
        var edit = MakeEdit(which, c, T);
        Assert.True(edit.HasDeviceForm);
        // forced decode tokens (the same on both backends), so every step is compared on the same input
        var plainCpu = PromptAndDecode(p.Cpu, p.Clean, [7, 300, 42]);
        var (plainDown, plainUp) = p.Traffic(() => PromptAndDecode(p.Dev, p.Clean, [7, 300, 42]));
        List<float[]> dev, cpu;
        using (edit.Register(p.Cpu)) cpu = PromptAndDecode(p.Cpu, p.Clean, [7, 300, 42]);
        (long Down, long Up) edited;
        using (edit.Register(p.Dev))
        {
            List<float[]>? got = null;
            edited = p.Traffic(() => got = PromptAndDecode(p.Dev, p.Clean, [7, 300, 42]));
            dev = got!;
        }
        Assert.True(plainDown > 0);
        Assert.Equal(plainDown, edited.Down);
        Assert.Equal(plainUp, edited.Up);
        for (int i = 0; i < cpu.Count; i++)
            Compare.Close(dev[i], cpu[i], Tol, $"{fixture}, {what}: call {i} ({(i == 0 ? "prompt" : "decode")}), {Device} vs cpu");
        // the edit did something where it should: the prompt (unless it edits generated tokens only) and the decode steps
        bool promptEdited = which != 3;
        Assert.Equal(promptEdited, Compare.MaxAbsDiff(cpu[0], plainCpu[0], out _) > 1e-4);
        if (which != 4) Assert.True(Compare.MaxAbsDiff(cpu[^1], plainCpu[^1], out _) > 1e-4, $"{what}: decode steps unchanged");
        // generation (sampling the edited model greedily): the same continuation, and no more traffic than unedited
        var (gPlainDown, _) = p.Traffic(() => p.Dev.Generate(p.Clean, 5, new SamplingOptions { Temperature = 0, StopAtEos = false }));
        List<int> gDev = [], gCpu;
        (long Down, long Up) gEdited;
        using (edit.Register(p.Dev)) gEdited = p.Traffic(() => gDev = p.Dev.Generate(p.Clean, 5, new SamplingOptions { Temperature = 0, StopAtEos = false }));
        using (edit.Register(p.Cpu)) gCpu = p.Cpu.Generate(p.Clean, 5, new SamplingOptions { Temperature = 0, StopAtEos = false });
        Assert.Equal(gPlainDown, gEdited.Down);
        Assert.Equal(gCpu, gDev);
    }

    /// <summary>
    /// A host hook on the same tap (a reader) makes that tap go through the host (one download and upload of it): the
    /// edit still applies there, before the reader, as on cpu.
    /// </summary>
    [Fact]
    public void AnInterventionBesideAHostHookStillApplies()
    {
        using var p = new CpuDevicePair("gpt2");
        var c = p.Model.Config;
        int T = p.Clean.Length, M = c.DMlp;
        var edit = MakeEdit(0, c, T);
        var clean = p.Cpu.RunWithCache(p.Clean, n => n == "blocks.1.mlp.hook_post").Cache["blocks.1.mlp.hook_post"].Data;
        float[] Seen(Session s)
        {
            float[]? seen = null;
            using (edit.Register(s))
            using (s.Hooks.Add(HookKind.MlpPost, 1, tap => seen = tap.Data.ToArray()))
                s.Run(p.Clean);
            return seen!;
        }
        long plain = p.Traffic(() => p.Dev.Run(p.Clean)).Down;
        float[] dev = [];
        long down = p.Traffic(() => dev = Seen(p.Dev)).Down;
        Assert.Equal(plain + T * M, down);
        var cpu = Seen(p.Cpu);
        Compare.Close(dev, cpu, Tol, "mlp.hook_post after the edit, read by a host hook");
        for (int t = 0; t < T; t++)
        {
            Assert.Equal(-2f * clean[t * M + 5], cpu[t * M + 5]);
            Assert.Equal(clean[t * M + 6], cpu[t * M + 6]);
        }
    }

    [Theory]
    [InlineData("gpt2", new[] { PatchActivation.ResidPre })]
    [InlineData("llama", new[] { PatchActivation.Z, PatchActivation.Pattern })]
    public void ActivationPatchingRunsOnTheDevice(string fixture, PatchActivation[] activations)
    {
        using var p = new CpuDevicePair(fixture);
        foreach (var act in activations)
        {
            var options = new PatchOptions { Activation = act, Sweep = SweepOptions.NaiveMode };
            var cpu = ActivationPatching.Run(p.Cpu, p.Clean, p.Corrupt, null, null, options);
            var dev = ActivationPatching.Run(p.Dev, p.Clean, p.Corrupt, null, null, options);
            Assert.Equal(cpu.AnswerToken, dev.AnswerToken);
            Assert.Equal(cpu.WrongToken, dev.WrongToken);
            CloseGrid(dev.Patched.Data, cpu.Patched.Data, $"{fixture} patching {act}");
        }
        // one patched run (a per-position head of z, a pattern row, a residual row at once) against a plain run
        var names = new HashSet<string> { "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.0.hook_resid_pre" };
        var (_, sourceDev) = p.Dev.RunWithCache(p.Clean, names.Contains);
        var (_, sourceCpu) = p.Cpu.RunWithCache(p.Clean, names.Contains);
        Site[] sites = [new(HookKind.Z, 1, Position: 3, Head: 1), new(HookKind.Pattern, 1, Position: 5, Head: 0), new(HookKind.ResidPre, 0, Position: 2)];
        var plain = p.Traffic(() => p.Dev.Run(p.Corrupt));
        float[] got = [];
        var patched = p.Traffic(() => got = ActivationPatching.RunPatched(p.Dev, p.Corrupt, sourceDev, sites));
        Assert.Equal(plain, patched);
        Compare.Close(got, ActivationPatching.RunPatched(p.Cpu, p.Corrupt, sourceCpu, sites), Tol, $"{fixture}: RunPatched");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void AblationRunsOnTheDevice(string fixture)
    {
        using var p = new CpuDevicePair(fixture);
        var c = p.Model.Config;
        HeadRef[] heads = [new(0, 1), new(1, 2), new(c.NLayers - 1, 0)];
        NeuronRef[] neurons = [new(0, 3), new(1, 7)];
        var modes = new[]
        {
            new AblationOptions { Heads = heads, Neurons = neurons, Sweep = SweepOptions.NaiveMode },
            new AblationOptions { Mode = AblationMode.Mean, Heads = heads, Neurons = neurons, MeanPrompts = [p.Corrupt, p.Clean[..5]], Sweep = SweepOptions.NaiveMode },
            new AblationOptions { Mode = AblationMode.Resample, Heads = heads, Neurons = neurons, ResamplePrompts = [p.Corrupt], Together = true, Sweep = SweepOptions.NaiveMode },
        };
        long plain = p.Traffic(() => p.Dev.Run(p.Clean)).Down;
        // what the method caches: z of the heads' layers and hook_post of the neurons' layers
        bool Cached(string name) => HookPoints.TryParse(name, out var k, out int l)
            && ((k == HookKind.Z && heads.Any(h => h.Layer == l)) || (k == HookKind.MlpPost && neurons.Any(n => n.Layer == l)));
        foreach (var o in modes)
        {
            var cpu = HeadAblation.Run(p.Cpu, p.Clean, null, o);
            var prompts = o.Mode == AblationMode.Mean ? o.MeanPrompts! : o.Mode == AblationMode.Resample ? o.ResamplePrompts! : [];
            long cacheRuns = 0;
            foreach (var prompt in prompts) cacheRuns += p.Traffic(() => p.Dev.RunWithCache(prompt, Cached)).Down;
            AblationResult dev = null!;
            var traffic = p.Traffic(() => dev = HeadAblation.Run(p.Dev, p.Clean, cpu.Target, o));
            Assert.Equal(cpu.Entries.Count, dev.Entries.Count);
            for (int i = 0; i < cpu.Entries.Count; i++)
                Assert.True(Math.Abs(cpu.Entries[i].Logit - dev.Entries[i].Logit) <= Tol, $"{fixture} {o.Mode} {cpu.Entries[i].Label}: {dev.Entries[i].Logit} vs {cpu.Entries[i].Logit}");
            Assert.Contains(cpu.Entries, e => Math.Abs(e.Delta) > 1e-4);
            // the method's cache runs, the prompt run and one run per ablation (and source), each downloading only its logits
            int runs = dev.Entries.Count * Math.Max(1, o.ResamplePrompts?.Count ?? 0);
            Assert.Equal(cacheRuns + (1 + runs) * plain, traffic.Down);
        }
    }

    [Fact]
    public void CausalTraceRunsOnTheDevice()
    {
        using var p = new CpuDevicePair("gpt2");
        var c = p.Model.Config;
        int[] tokens = p.Clean[..5], subject = [1, 2];
        var noise = TraceNoise.Generate(p.Model, subject.Length, null, samples: 2, seed: 3);
        var options = new TraceOptions { Mlp = false, Window = 2, Sweep = SweepOptions.NaiveMode };
        var cpu = CausalTrace.Run(p.Cpu, tokens, subject, noise, null, options);
        var names = new HashSet<string>(Enumerable.Range(0, c.NLayers).SelectMany(l => new[] { HookPoints.Name(HookKind.ResidPost, l), HookPoints.Name(HookKind.AttnOut, l) }));
        long cacheRun = p.Traffic(() => p.Dev.RunWithCache(tokens, names.Contains)).Down;
        long plain = p.Traffic(() => p.Dev.Run(tokens)).Down;
        TraceResult dev = null!;
        var traffic = p.Traffic(() => dev = CausalTrace.Run(p.Dev, tokens, subject, noise, cpu.Target, options));
        Assert.True(Math.Abs(cpu.CorruptProb - dev.CorruptProb) <= Tol);
        Assert.True(Math.Abs(cpu.CleanProb - cpu.CorruptProb) > 1e-3, "the noise changed nothing");
        CloseGrid(dev.Resid!.Data, cpu.Resid!.Data, "causal trace resid");
        CloseGrid(dev.Attn!.Data, cpu.Attn!.Data, "causal trace attn");
        // the clean run with its cache, then S corrupted runs and S runs per (kind, layer, position): logits only
        int runs = noise.Samples * (1 + 2 * c.NLayers * tokens.Length);
        Assert.Equal(cacheRun + runs * plain, traffic.Down);
        // the corrupted sample's base for the batched path registers the noise as an intervention too
        var fast = CausalTrace.Run(p.Dev, tokens, subject, noise, cpu.Target, options with { Sweep = SweepOptions.Default });
        Assert.True(Math.Abs(cpu.CorruptProb - fast.CorruptProb) <= Tol);
        CloseGrid(fast.Resid!.Data, cpu.Resid!.Data, "causal trace resid, batched");
    }

    [Fact]
    public void NoiseMakingRunsOnTheDevice()
    {
        using var p = new CpuDevicePair("llama");
        var c = p.Model.Config;
        int target = Session.ArgMax(InterpMath.LastRow(p.Cpu.Run(p.Clean), c.VocabSize));
        var metric = new MetricSpec(OutputMetric.LogProb, target);
        TapSelection[] comps = [TapSelection.Head(1, 2, [2, 3, 4]), TapSelection.Neuron(0, 4), new(HookKind.ResidPre, 1, null, [5]), new(HookKind.Pattern, 0, 1, [6])];
        var options = new NoiseOptions { SigmaRel = 2, Samples = 2, Seed = 5 };
        var cpu = NoiseMaking.Run(p.Cpu, p.Clean, comps, metric, options);
        var names = comps.Select(x => x.HookName).ToHashSet();
        long cacheRun = p.Traffic(() => p.Dev.RunWithCache(p.Clean, names.Contains)).Down;
        long plain = p.Traffic(() => p.Dev.Run(p.Clean)).Down;
        NoiseResult dev = null!;
        var traffic = p.Traffic(() => dev = NoiseMaking.Run(p.Dev, p.Clean, comps, metric, options));
        for (int i = 0; i < comps.Length; i++)
        {
            Assert.Equal(cpu.Components[i].Sigma, dev.Components[i].Sigma, 5);
            CloseGrid(dev.Components[i].Samples, cpu.Components[i].Samples, $"noise on {comps[i].Label}");
        }
        Assert.Contains(cpu.Components, x => Math.Abs(x.Drop) > 1e-4);
        Assert.Equal(cacheRun + comps.Length * options.Samples * plain, traffic.Down);
    }

    [Fact]
    public void SteeringCompareWithFrozenAttentionRunsOnTheDevice()
    {
        using var p = new CpuDevicePair("gpt2", allLogits: false);
        var c = p.Model.Config;
        var v = Enumerable.Range(0, c.DModel).Select(i => MathF.Cos(0.3f * i)).ToArray();
        Intervention[] edits =
        [
            new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 1, Vector = v, Coefficient = 4, PromptLength = p.Clean.Length, AlsoGenerated = true },
            ScaleIntervention.Head(0, 2, scale: 0),
        ];
        var cpu = Steering.Compare(p.Cpu, p.Clean, edits, 6, freezeAttention: true, stopAtEos: false);
        var (plain, _) = p.Traffic(() => Steering.Compare(p.Dev, p.Clean, [], 6, freezeAttention: true, stopAtEos: false));
        SteerResult dev = null!;
        var (down, _) = p.Traffic(() => dev = Steering.Compare(p.Dev, p.Clean, edits, 6, freezeAttention: true, stopAtEos: false));
        Compare.Close(dev.LogitsAfter, cpu.LogitsAfter, Tol, "steered logits");
        Assert.Equal(cpu.ContinuationAfter, dev.ContinuationAfter);
        Assert.True(cpu.Kl > 1e-6);
        Assert.Equal(plain, down);
    }

    static void CloseGrid(double[] got, double[] want, string what)
    {
        Assert.Equal(want.Length, got.Length);
        for (int i = 0; i < want.Length; i++)
            Assert.True(Math.Abs(got[i] - want[i]) <= Tol * Math.Max(1, Math.Abs(want[i]) / 10), $"{what}: [{i}] {got[i]} vs {want[i]}");
    }
}
