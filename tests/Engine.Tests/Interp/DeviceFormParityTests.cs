using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>
/// The library's edits now register as interventions resolved per call (device kernels on a GPU backend). On "cpu"
/// they must give bit for bit what the former host hooks gave: each test runs the method and, as the reference, the
/// former host hook's code (copied here verbatim: scale / fill, x += coef·v, Site.CopyInto, the ablation writes, the
/// trace noise hook, the noise-making hook, the attention freeze copy) and compares with exact equality, in prompts
/// and in decode steps through the KV cache.
/// </summary>
public class DeviceFormParityTests
{
    static (Fixture Fx, Model Model, Session Session, int[] Clean, int[] Corrupt) Open(string fixture, bool allLogits = true)
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        var s = new Session(model, new SessionOptions { Backend = "cpu", Capacity = 32, AllLogits = allLogits });
        return (fx, model, s, Fixture.Ints(fx.Interp.GetProperty("clean_tokens")), Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens")));
    }

    // ---- the former host hooks

    static HookFn OldScale(ScaleIntervention e) => tap =>
    {
        float s = (float)e.Scale;
        float v = (float)(e.SetTo ?? 0);
        bool set = e.SetTo != null;
        foreach (var (o, len, p) in new TapSelection(e.Kind, e.Layer, e.Index).Segments(tap.Shape, tap.Pos0, e.AppliesAt))
        {
            var x = tap.Data.Slice(o, len);
            if (set) x.Fill(v);
            else for (int j = 0; j < len; j++) x[j] *= s;
        }
    };

    static HookFn OldSteer(SteeringIntervention e) => tap =>
    {
        if (e.Coefficient == 0) return;
        int D = e.Vector.Length;
        float coef = (float)e.Coefficient;
        for (int t = 0; t < tap.Shape.D0; t++)
        {
            if (!e.AppliesAt(tap.Pos0 + t)) continue;
            var x = tap.Data.Slice(t * D, D);
            for (int j = 0; j < D; j++) x[j] += coef * e.Vector[j];
        }
    };

    static List<float[]> PromptAndDecode(Session s, int[] prompt, int[] next)
    {
        var all = new List<float[]> { s.Run(prompt).ToArray() };
        foreach (int t in next) all.Add(s.Forward([t]).ToArray());
        return all;
    }

    public static IEnumerable<object[]> Fixtures() => new[] { "gpt2", "llama", "gemma", "gpt_neox" }.Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void ScaleAndSteeringEqualTheFormerHostHooksBitForBit(string fixture)
    {
        var (fx, model, s, tokens, _) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int T = tokens.Length;
            var v = Enumerable.Range(0, c.DModel).Select(i => MathF.Sin(0.37f * i) * 1.3f).ToArray();
            Intervention[] edits =
            [
                new ScaleIntervention { Kind = HookKind.MlpPost, Layer = 1, Index = 5, Scale = -2, PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.Z, Layer = 0, Index = 1, SetTo = 0.37, Positions = [1, 3, 4], PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.V, Layer = 1, Index = 0, Scale = 0.1, Positions = [0, 2] },
                new ScaleIntervention { Kind = HookKind.Pattern, Layer = 1, Index = 2, Scale = 0.3, PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.AttnScores, Layer = 0, SetTo = -1.5, Positions = [T - 1] },
                new ScaleIntervention { Kind = HookKind.ResidPost, Layer = 0, Scale = 0.7 },
                new ScaleIntervention { Kind = HookKind.MlpOut, Layer = 0, SetTo = 0, Positions = [2], PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.Embed, Layer = -1, Index = 3, SetTo = -0.0 },
                new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 1, Vector = v, Coefficient = 2.7, PromptLength = T, AlsoGenerated = true },
                new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 2, Vector = v, Coefficient = -1.1, Positions = [], PromptLength = T, AlsoGenerated = true },
                new SteeringIntervention { Kind = HookKind.AttnOut, Layer = 0, Vector = v, Coefficient = 0.3, Positions = [0, 5] },
            ];
            int[] next = [7, 300, 42];
            var plain = PromptAndDecode(s, tokens, next);
            foreach (var e in edits)
            {
                Assert.True(e.HasDeviceForm);
                List<float[]> got, want;
                using (e.Register(s)) got = PromptAndDecode(s, tokens, next);
                var old = e is ScaleIntervention si ? OldScale(si) : OldSteer((SteeringIntervention)e);
                using (s.Hooks.Add(e.Kind, e.Layer, old)) want = PromptAndDecode(s, tokens, next);
                for (int i = 0; i < want.Count; i++) Assert.Equal(want[i], got[i]);
                Assert.True(Enumerable.Range(0, want.Count).Any(i => !want[i].SequenceEqual(plain[i])), $"{e.Describe()} changed nothing");
                // Apply (the host form, as a plain hook) is the same edit
                using (s.Hooks.Add(e.Kind, e.Layer, e.Apply)) got = PromptAndDecode(s, tokens, next);
                for (int i = 0; i < want.Count; i++) Assert.Equal(want[i], got[i]);
            }
            Assert.Equal(0, s.Hooks.Count);
        }
    }

    [Fact]
    public void BlocksMergeConsecutiveRowsAndFollowThePositionsOfEachCall()
    {
        var (fx, model, s, tokens, _) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int T = tokens.Length, d = c.HeadDim;
            var head = new ScaleIntervention { Kind = HookKind.Z, Layer = 0, Index = 2, Scale = 0.5, PromptLength = T, AlsoGenerated = true };
            var shape = HookPoints.Shape(c, HookKind.Z, T, T);
            // a head over every prompt position: one block of T rows, columns 2d .. 3d - 1
            var b = Assert.Single(head.Blocks(new TapCall(HookKind.Z, 0, shape, 0)));
            Assert.Equal((0, T, 2 * d, d, 0.5f), (b.RowStart, b.RowCount, b.ColStart, b.ColCount, b.Alpha));
            // a decode step at position T: the one row, only with AlsoGenerated
            var step = new TapCall(HookKind.Z, 0, HookPoints.Shape(c, HookKind.Z, 1, T + 1), T);
            Assert.Equal(1, Assert.Single(head.Blocks(step)).RowCount);
            Assert.Empty(new ScaleIntervention { Kind = HookKind.Z, Layer = 0, Index = 2, Scale = 0.5, PromptLength = T }.Blocks(step));
            // positions 1, 2 and 4: two blocks; a set reads one value array for all rows
            var set = new ScaleIntervention { Kind = HookKind.MlpPost, Layer = 1, Index = 7, SetTo = 2, Positions = [4, 1, 2] };
            var blocks = set.Blocks(new TapCall(HookKind.MlpPost, 1, HookPoints.Shape(c, HookKind.MlpPost, T, T), 0));
            Assert.Equal(new[] { (1, 2), (4, 1) }, blocks.Select(x => (x.RowStart, x.RowCount)).ToArray());
            Assert.Same(blocks[0].Values, blocks[1].Values);
            Assert.Equal(0, blocks[0].ValueStride);
            // a pattern head: rows h*T .. h*T + T - 1 of the [H*T, Tk] view
            var pat = new ScaleIntervention { Kind = HookKind.Pattern, Layer = 0, Index = 3, Scale = 0 };
            b = Assert.Single(pat.Blocks(new TapCall(HookKind.Pattern, 0, HookPoints.Shape(c, HookKind.Pattern, T, T), 0)));
            Assert.Equal((3 * T, T, 0, T), (b.RowStart, b.RowCount, b.ColStart, b.ColCount));
        }
    }

    // ---- ablation: the former HeadAblation.Hooks / ResampleHooks

    static List<(HookKind, int, HookFn)> OldAblationHooks(HeadRef[] heads, NeuronRef[] neurons, float[][]? zMean, float[][]? postMean, int d)
    {
        var hooks = new List<(HookKind, int, HookFn)>();
        foreach (var g in heads.GroupBy(h => h.Layer))
        {
            var sites = g.Select(h => new Site(HookKind.Z, g.Key, Head: h.Head)).ToArray();
            var mean = zMean?[g.Key];
            hooks.Add((HookKind.Z, g.Key, tap =>
            {
                foreach (var s in sites)
                    foreach (var (o, n, head) in s.Segments(tap.Shape))
                        if (mean == null) tap.Data.Slice(o, n).Clear();
                        else mean.AsSpan(head * d, d).CopyTo(tap.Data.Slice(o, n));
            }));
        }
        foreach (var g in neurons.GroupBy(n => n.Layer))
        {
            var idx = g.Select(n => n.Index).ToArray();
            var mean = postMean?[g.Key];
            hooks.Add((HookKind.MlpPost, g.Key, tap =>
            {
                int M = tap.Shape.D1;
                for (int t = 0; t < tap.Shape.D0; t++)
                    foreach (int i in idx) tap.Data[t * M + i] = mean?[i] ?? 0f;
            }));
        }
        return hooks;
    }

    static List<(HookKind, int, HookFn)> OldResampleHooks(HeadRef[] heads, NeuronRef[] neurons, ActivationCache src)
    {
        var hooks = new List<(HookKind, int, HookFn)>();
        foreach (var g in heads.GroupBy(h => h.Layer))
        {
            var sites = g.Select(h => new Site(HookKind.Z, g.Key, Head: h.Head)).ToArray();
            var z = src[HookPoints.Name(HookKind.Z, g.Key)].Data;
            hooks.Add((HookKind.Z, g.Key, tap => { foreach (var s in sites) s.CopyInto(tap, z); }));
        }
        foreach (var g in neurons.GroupBy(n => n.Layer))
        {
            var idx = g.Select(n => n.Index).ToArray();
            var post = src[HookPoints.Name(HookKind.MlpPost, g.Key)].Data;
            hooks.Add((HookKind.MlpPost, g.Key, tap =>
            {
                int M = tap.Shape.D1;
                for (int t = 0; t < tap.Shape.D0; t++)
                    foreach (int i in idx) tap.Data[t * M + i] = post[t * M + i];
            }));
        }
        return hooks;
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void AblationEqualsTheFormerHostHooksBitForBit(string fixture)
    {
        var (fx, model, s, tokens, corrupt) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int L = c.NLayers, d = c.HeadDim;
            HeadRef[] heads = [new(0, 1), new(0, 3), new(1, 2), new(L - 1, 0)];
            NeuronRef[] neurons = [new(0, 3), new(0, 9), new(1, 7)];
            var naive = SweepOptions.NaiveMode;
            // zero, one at a time and together
            foreach (bool together in new[] { false, true })
            {
                var r = HeadAblation.Run(s, tokens, null, new AblationOptions { Heads = heads, Neurons = neurons, Together = together, Sweep = naive });
                foreach (var e in r.Entries)
                    Assert.Equal(r.Metric.Of(InterpMath.RunLast(s, tokens, OldAblationHooks(e.Heads, e.Neurons, null, null, d))), e.Logit);
            }
            // mean over two reference prompts (the method's mean, recomputed here as it computes it)
            int[][] prompts = [corrupt, tokens[..5]];
            var zSum = new double[L][]; var postSum = new double[L][];
            long rows = 0;
            foreach (var p in prompts)
            {
                var (_, cache) = s.RunWithCache(p, n => n.EndsWith("attn.hook_z") || n.EndsWith("mlp.hook_post"));
                for (int l = 0; l < L; l++)
                {
                    Accumulate(ref zSum[l], cache[HookPoints.Name(HookKind.Z, l)].Data, c.QDim);
                    Accumulate(ref postSum[l], cache[HookPoints.Name(HookKind.MlpPost, l)].Data, c.DMlp);
                }
                rows += p.Length;
            }
            var zMean = zSum.Select(x => x.Select(v => (float)(v / rows)).ToArray()).ToArray();
            var postMean = postSum.Select(x => x.Select(v => (float)(v / rows)).ToArray()).ToArray();
            var m = HeadAblation.Run(s, tokens, null, new AblationOptions { Mode = AblationMode.Mean, Heads = heads, Neurons = neurons, MeanPrompts = prompts, Sweep = naive });
            foreach (var e in m.Entries)
                Assert.Equal(m.Metric.Of(InterpMath.RunLast(s, tokens, OldAblationHooks(e.Heads, e.Neurons, zMean, postMean, d))), e.Logit);
            Assert.Contains(m.Entries, e => e.Delta != 0);
            // resample from the corrupted prompt
            var rs = HeadAblation.Run(s, tokens, null, new AblationOptions { Mode = AblationMode.Resample, Heads = heads, Neurons = neurons, ResamplePrompts = [corrupt], Sweep = naive });
            var (_, src) = s.RunWithCache(corrupt, n => n.EndsWith("attn.hook_z") || n.EndsWith("mlp.hook_post"));
            foreach (var e in rs.Entries)
                Assert.Equal(rs.Metric.Of(InterpMath.RunLast(s, tokens, OldResampleHooks(e.Heads, e.Neurons, src))), e.Logit);
        }

        static void Accumulate(ref double[] sum, float[] data, int width)
        {
            sum ??= new double[width];
            for (int i = 0; i < data.Length; i++) sum[i % width] += data[i];
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    public void ActivationPatchingEqualsTheFormerHostHooksBitForBit(string fixture)
    {
        var (fx, model, s, clean, corrupt) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int T = clean.Length;
            foreach (var (act, perPos) in new[] { (PatchActivation.ResidPre, false), (PatchActivation.Z, true), (PatchActivation.Pattern, false), (PatchActivation.K, false) })
            {
                var r = ActivationPatching.Run(s, clean, corrupt, null, null, new PatchOptions { Activation = act, PerPosition = perPos, Sweep = SweepOptions.NaiveMode });
                var kind = ActivationPatching.Kind(act);
                var (_, cache) = s.RunWithCache(clean, n => HookPoints.TryParse(n, out var k, out _) && k == kind);
                int heads = act == PatchActivation.K ? c.NKvHeads : c.NHeads;
                for (int l = 0; l < c.NLayers; l++)
                {
                    var src = cache[HookPoints.Name(kind, l)].Data;
                    var sites = act == PatchActivation.ResidPre ? Enumerable.Range(0, T).Select(p => (Flat: l * T + p, Site: new Site(kind, l, Position: p)))
                        : perPos ? Enumerable.Range(0, T * heads).Select(i => (Flat: (l * T + i / heads) * heads + i % heads, Site: new Site(kind, l, Position: i / heads, Head: i % heads)))
                        : Enumerable.Range(0, heads).Select(h => (Flat: l * heads + h, Site: new Site(kind, l, Head: h)));
                    foreach (var (flat, site) in sites)
                    {
                        var last = InterpMath.RunLast(s, corrupt, [(kind, l, tap => site.CopyInto(tap, src))]);
                        Assert.Equal(ActivationPatching.Metric(last, r.Metric, r.AnswerToken, r.WrongToken), r.Patched.Data[flat]);
                    }
                }
            }
        }
    }

    [Fact]
    public void CausalTraceEqualsTheFormerHostHooksBitForBit()
    {
        var (fx, model, s, tokens, _) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int L = c.NLayers, T = tokens.Length;
            int[] subject = [1, 2, 4];
            var noise = TraceNoise.Generate(model, subject.Length, null, samples: 3, seed: 11);
            var r = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Window = 2, Sweep = SweepOptions.NaiveMode });
            var (_, clean) = s.RunWithCache(tokens, n => n.EndsWith("hook_resid_post") || n.EndsWith("hook_mlp_out") || n.EndsWith("hook_attn_out"));
            double Prob(int sample, List<(HookKind, int, HookFn)> restore)
            {
                var hooks = new List<(HookKind, int, HookFn)> { (HookKind.Embed, -1, CausalTrace.NoiseHook(noise, sample, subject)) };
                hooks.AddRange(restore);
                return InterpMath.Prob(InterpMath.RunLast(s, tokens, hooks), r.Target);
            }
            double corrupt = 0;
            for (int k = 0; k < noise.Samples; k++) corrupt += Prob(k, []);
            Assert.Equal(corrupt / noise.Samples, r.CorruptProb);
            foreach (var (kind, grid, windowed) in new[] { (HookKind.ResidPost, r.Resid!, false), (HookKind.MlpOut, r.Mlp!, true), (HookKind.AttnOut, r.Attn!, true) })
                for (int l = 0; l < L; l++)
                {
                    var (a, b) = windowed ? CausalTrace.WindowOf(l, 2, L) : (l, l + 1);
                    for (int t = 0; t < T; t++)
                    {
                        var restore = new List<(HookKind, int, HookFn)>();
                        for (int ll = a; ll < b; ll++)
                        {
                            var site = new Site(kind, ll, Position: t);
                            var src = clean[HookPoints.Name(kind, ll)].Data;
                            restore.Add((kind, ll, tap => site.CopyInto(tap, src)));
                        }
                        double sum = 0;
                        for (int k = 0; k < noise.Samples; k++) sum += Prob(k, restore);
                        Assert.Equal(sum / noise.Samples, grid[l, t]);
                    }
                }
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma")]
    public void NoiseMakingEqualsTheFormerHostHookBitForBit(string fixture)
    {
        var (fx, model, s, tokens, _) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int target = Session.ArgMax(InterpMath.LastRow(s.Run(tokens), c.VocabSize));
            var metric = new MetricSpec(OutputMetric.LogProb, target);
            TapSelection[] comps = [TapSelection.Head(1, 2, [2, 3, 5]), TapSelection.Neuron(0, 4), new(HookKind.ResidPre, 1, null, [5]), new(HookKind.Pattern, 0, 1, [6, 7]), new(HookKind.Embed, -1)];
            var options = new NoiseOptions { SigmaRel = 2, Samples = 3, Seed = 5 };
            var r = NoiseMaking.Run(s, tokens, comps, metric, options);
            var (_, cache) = s.RunWithCache(tokens, n => comps.Any(x => x.HookName == n));
            for (int ci = 0; ci < comps.Length; ci++)
            {
                var comp = comps[ci];
                var t = cache[comp.HookName];
                var shape = t.Shape.Length == 2 ? new TapShape(t.Shape[0], t.Shape[1]) : new TapShape(t.Shape[0], t.Shape[1], t.Shape[2]);
                int n = comp.Segments(shape, 0).Sum(x => x.Length);
                double sigma = r.Components[ci].Sigma;
                var rng = new Random(options.Seed);
                var noise = new float[options.Samples * n];
                for (int i = 0; i < noise.Length; i++) noise[i] = (float)(sigma * Gaussian(rng));
                for (int sample = 0; sample < options.Samples; sample++)
                {
                    int k0 = sample * n;
                    var last = InterpMath.RunLast(s, tokens, [(comp.Kind, comp.Layer, tap =>
                    {
                        int k = k0;
                        foreach (var (o, len, _) in comp.Segments(tap.Shape, tap.Pos0))
                        {
                            var dst = tap.Data.Slice(o, len);
                            for (int j = 0; j < len; j++) dst[j] += noise[k++];
                        }
                    })]);
                    Assert.Equal(metric.Of(last), r.Components[ci].Samples[sample]);
                }
            }
            Assert.Contains(r.Components, x => x.Drop != 0);
        }
    }

    /// <summary>The generator of NoiseMaking (Box–Muller on System.Random).</summary>
    static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }

    [Fact]
    public void FrozenAttentionEqualsTheFormerHostHookBitForBit()
    {
        var (fx, model, s, tokens, _) = Open("llama", allLogits: false);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int T = tokens.Length;
            var v = Enumerable.Range(0, c.DModel).Select(i => MathF.Cos(0.3f * i)).ToArray();
            var steer = new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 1, Vector = v, Coefficient = 3, PromptLength = T, AlsoGenerated = true };
            var r = Steering.Compare(s, tokens, [steer], 5, freezeAttention: true, stopAtEos: false);
            // the former freeze: every layer's pattern rows of the prompt copied from the clean run by a host hook
            var (_, cache) = s.RunWithCache(tokens, n => n.EndsWith(".attn.hook_pattern", StringComparison.Ordinal));
            var handles = new List<IDisposable>();
            for (int l = 0; l < c.NLayers; l++)
            {
                var clean = cache[HookPoints.Name(HookKind.Pattern, l)].Data;
                handles.Add(s.Hooks.Add(HookKind.Pattern, l, tap =>
                {
                    int H = tap.Shape.D0, rows = tap.Shape.D1, keys = tap.Shape.D2;
                    for (int h = 0; h < H; h++)
                        for (int t = 0; t < rows; t++)
                        {
                            int p = tap.Pos0 + t;
                            if (p >= T || keys > T) continue;
                            clean.AsSpan((h * T + p) * T, keys).CopyTo(tap.Data.Slice((h * rows + t) * keys, keys));
                        }
                }));
            }
            handles.Add(s.Hooks.Add(HookKind.ResidPre, 1, OldSteer(steer)));
            var after = InterpMath.LastRow(s.Run(tokens), c.VocabSize).ToArray();
            var cont = s.Generate(tokens, 5, new SamplingOptions { Temperature = 0, StopAtEos = false });
            foreach (var h in handles) h.Dispose();
            Assert.Equal(after, r.LogitsAfter);
            Assert.Equal(cont, r.ContinuationAfter);
            Assert.NotEqual(r.LogitsBefore, r.LogitsAfter);
        }
    }
}
