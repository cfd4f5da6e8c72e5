using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>Interventions (SPEC "Interventions"), noise making and the completed ablation: identities without reference numbers.</summary>
public class InterventionTests
{
    static (Fixture Fx, Model Model, Session Session, int[] Tokens) Open(string fixture, int capacity = 48)
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        var s = new Session(model, new SessionOptions { Capacity = capacity, AllLogits = false });
        return (fx, model, s, Fixture.Ints(fx.Interp.GetProperty("clean_tokens")));
    }

    static float[] Last(Session s, int[] tokens) => InterpMath.LastRow(s.Run(tokens), s.Config.VocabSize).ToArray();

    static readonly SamplingOptions NoStop = new() { StopAtEos = false };

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma")]
    [InlineData("gpt_neox")]
    public void ScalingByOneAndSteeringByZeroChangeNothingBitForBit(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int T = tokens.Length;
            var clean = Last(s, tokens);
            var cleanGen = s.Generate(tokens, 8, NoStop);
            var dir = Enumerable.Range(0, c.DModel).Select(i => (float)Math.Sin(i + 1)).ToArray();
            Intervention[] edits =
            [
                new ScaleIntervention { Kind = HookKind.MlpPost, Layer = 1, Index = 3, Scale = 1, PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.Z, Layer = 0, Index = 1, Scale = 1, PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.ResidPre, Layer = 1, Scale = 1, PromptLength = T, AlsoGenerated = true },
                new ScaleIntervention { Kind = HookKind.Pattern, Layer = 1, Index = 0, Scale = 1, PromptLength = T, AlsoGenerated = true },
                new DirectionIntervention { Kind = HookKind.ResidPost, Layer = 0, Direction = dir, Scale = 1, PromptLength = T, AlsoGenerated = true },
                new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 1, Vector = dir, Coefficient = 0, PromptLength = T, AlsoGenerated = true },
            ];
            foreach (var e in edits)
            {
                using (e.Register(s))
                {
                    Assert.Equal(clean, Last(s, tokens));
                    Assert.Equal(cleanGen, s.Generate(tokens, 8, NoStop));
                }
            }
            Assert.Equal(0, s.Hooks.Count);
            var r = Steering.Compare(s, tokens, [ScaleIntervention.Neuron(0, 2, scale: 1)], 6, stopAtEos: false);
            Assert.Equal(r.LogitsBefore, r.LogitsAfter);
            Assert.Equal(r.ContinuationBefore, r.ContinuationAfter);
            Assert.Equal(0.0, r.Kl);
            // freezing attention without any edit is the clean run (the unfused pattern path is bit-identical)
            var frozen = Steering.Compare(s, tokens, [], 6, freezeAttention: true, stopAtEos: false);
            Assert.Equal(frozen.LogitsBefore, frozen.LogitsAfter);
            Assert.Equal(frozen.ContinuationBefore, frozen.ContinuationAfter);
            Assert.Equal(0, s.Hooks.Count);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    public void MinusTwoTimesANeuronIsSettingItToMinusTwiceItsCleanValue(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            int M = model.Config.DMlp, layer = 1, neuron = 5;
            var (_, cache) = s.RunWithCache(tokens, n => n == $"blocks.{layer}.mlp.hook_post");
            var post = cache[$"blocks.{layer}.mlp.hook_post"].Data;
            float[] viaScale, viaSet;
            using (ScaleIntervention.Neuron(layer, neuron, scale: -2).Register(s)) viaScale = Last(s, tokens);
            using (s.Hooks.Add(HookKind.MlpPost, layer, tap => { for (int t = 0; t < tap.Shape.D0; t++) tap.Data[t * M + neuron] = -2f * post[t * M + neuron]; }))
                viaSet = Last(s, tokens);
            Assert.Equal(viaSet, viaScale);
            Assert.NotEqual(Last(s, tokens), viaScale);
            // one position only: the others keep their clean values
            int p = tokens.Length - 1;
            using (new ScaleIntervention { Kind = HookKind.MlpPost, Layer = layer, Index = neuron, Scale = -2, Positions = [p] }.Register(s)) viaScale = Last(s, tokens);
            using (s.Hooks.Add(HookKind.MlpPost, layer, tap => tap.Data[p * M + neuron] = -2f * post[p * M + neuron])) viaSet = Last(s, tokens);
            Assert.Equal(viaSet, viaScale);
            // set: every selected value becomes V
            using (ScaleIntervention.Neuron(layer, neuron, set: 0.5).Register(s))
            using (s.Hooks.Add(HookKind.MlpPost, layer, tap => { for (int t = 0; t < tap.Shape.D0; t++) Assert.Equal(0.5f, tap.Data[t * M + neuron]); }))
                Last(s, tokens);
        }
    }

    [Fact]
    public void DirectionScaleZeroRemovesTheComponentAndGeneratedPositionsFollowTheFlag()
    {
        var (fx, model, s, tokens) = Open("llama");
        using (fx) using (model) using (s)
        {
            int D = model.Config.DModel, T = tokens.Length;
            var dir = Enumerable.Range(0, D).Select(i => (float)Math.Cos(0.3 * i)).ToArray();
            double norm = Math.Sqrt(dir.Sum(x => (double)x * x));
            var edit = new DirectionIntervention { Kind = HookKind.ResidPre, Layer = 1, Direction = dir, Scale = 0, PromptLength = T };
            var projections = new List<(int Pos, double Proj)>();
            using (edit.Register(s))
            using (s.Hooks.Add(HookKind.ResidPre, 1, tap =>
            {
                for (int t = 0; t < tap.Shape.D0; t++)
                {
                    double proj = 0;
                    for (int j = 0; j < D; j++) proj += tap.Data[t * D + j] * dir[j] / norm;
                    projections.Add((tap.Pos0 + t, proj));
                }
            }))
                s.Generate(tokens, 3, NoStop);
            // prompt rows lose their component along d; generated rows (no --also-generated) keep it
            Assert.All(projections.Where(p => p.Pos < T), p => Assert.True(Math.Abs(p.Proj) < 1e-4, $"pos {p.Pos}: {p.Proj}"));
            Assert.Contains(projections, p => p.Pos >= T && Math.Abs(p.Proj) > 1e-3);
            // a steering vector of a pair (a, a) is zero
            var v = SteeringVector.FromPairs(s, [(tokens, tokens)], HookKind.ResidPre, 1, SteeringPool.Mean);
            Assert.All(v.Vector, x => Assert.Equal(0f, x));
            Assert.Equal(0, v.Norm);
            // freezing attention keeps the clean patterns under an edit upstream
            var (_, clean) = s.RunWithCache(tokens, n => n == "blocks.1.attn.hook_pattern");
            float[]? seen = null;
            using (AttentionFreeze.Register(s, tokens))
            using (new SteeringIntervention { Kind = HookKind.ResidPre, Layer = 1, Vector = dir, Coefficient = 3 }.Register(s))
            using (s.Hooks.Add(HookKind.Pattern, 1, tap => seen = tap.Data.ToArray()))
                s.Run(tokens);
            Assert.Equal(clean["blocks.1.attn.hook_pattern"].Data, seen);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma")]
    public void NoiseMakingIsSeededAndZeroNoiseIsTheCleanRun(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int target = Session.ArgMax(Last(s, tokens));
            var metric = new MetricSpec(OutputMetric.Prob, target);
            var embed = new TapSelection(HookKind.Embed, -1, null, [1, 2]);
            var zero = NoiseMaking.Run(s, tokens, [embed], metric, new NoiseOptions { Sigma = 0, Samples = 3 });
            Assert.All(zero.Components[0].Samples, x => Assert.Equal(zero.Clean, x));
            Assert.Equal(0.0, zero.Components[0].Drop);
            var a = NoiseMaking.Run(s, tokens, [embed], metric, new NoiseOptions { SigmaRel = 3, Samples = 4, Seed = 7 });
            var b = NoiseMaking.Run(s, tokens, [embed], metric, new NoiseOptions { SigmaRel = 3, Samples = 4, Seed = 7 });
            var d = NoiseMaking.Run(s, tokens, [embed], metric, new NoiseOptions { SigmaRel = 3, Samples = 4, Seed = 8 });
            Assert.Equal(a.Components[0].Samples, b.Components[0].Samples);
            Assert.NotEqual(a.Components[0].Samples, d.Components[0].Samples);
            var st = a.Components[0];
            // relative sigma: 3 × the unbiased std of the clean hook_embed values over the prompt (all positions)
            var (_, cache) = s.RunWithCache(tokens, n => n == "hook_embed");
            var xs = cache["hook_embed"].Data.Select(x => (double)x).ToArray();
            double mean = xs.Average(), std = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Length - 1));
            Assert.Equal(std, st.ActivationStd, 9);
            Assert.Equal(3 * std, st.Sigma, 9);
            Assert.Equal(st.Samples.Average(), st.Mean, 12);
            Assert.Equal(a.Clean - st.Mean, st.Drop, 12);
            // sample 1 is reproduced by adding the same draws by hand
            var rng = new Random(7);
            int n = 2 * c.DModel;
            var draws = Enumerable.Range(0, 4 * n).Select(_ => (float)(st.Sigma * TraceNoiseGaussian(rng))).ToArray();
            var manual = InterpMath.RunLast(s, tokens, [(HookKind.Embed, -1, tap =>
            {
                int k = n;
                foreach (int p in new[] { 1, 2 }) for (int j = 0; j < c.DModel; j++) tap.Data[p * c.DModel + j] += draws[k++];
            })]);
            Assert.Equal(metric.Of(manual), st.Samples[1]);
            // a sweep over heads: the grid holds each component's drop; ranking by drop
            var sweep = NoiseMaking.RunSweep(s, tokens, NoiseSweep.Heads, metric, new NoiseOptions { SigmaRel = 1, Samples = 2 });
            Assert.Equal([c.NLayers, c.NHeads], sweep.DropGrid!.Shape);
            Assert.Equal(sweep.Components.Single(x => x.Component.Layer == 1 && x.Component.Index == 2).Drop, sweep.DropGrid[1, 2]);
            for (int i = 1; i < sweep.Ranked.Count; i++) Assert.True(sweep.Ranked[i - 1].Drop >= sweep.Ranked[i].Drop);
            var resid = NoiseMaking.RunSweep(s, tokens, NoiseSweep.Resid, metric, new NoiseOptions { Sigma = 0.5, Samples = 1, Positions = [0, 2] }, [0]);
            Assert.Equal(2, resid.Components.Count);
            Assert.True(double.IsNaN(resid.DropGrid![0, 1]) && double.IsNaN(resid.DropGrid[1, 0]));
        }
    }

    static double TraceNoiseGaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void ResampleAblationAndSweeps(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            var corrupt = Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"));
            // resampling from the prompt itself changes nothing
            // exact identities of the definition (one full pass per run); the sweep fast path agrees within 1e-5 (Sweeps tests)
            var self = HeadAblation.Run(s, tokens, null, new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [tokens], Sweep = SweepOptions.NaiveMode });
            Assert.All(self.Delta!.Data, v => Assert.Equal(0.0, v));
            // from the corrupted prompt: equal to patching z of that head from the corrupted run (noising)
            var one = HeadAblation.Run(s, tokens, null, new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [corrupt], Sweep = SweepOptions.NaiveMode });
            var (_, cc) = s.RunWithCache(corrupt, n => n.EndsWith("attn.hook_z"));
            var patched = ActivationPatching.RunPatched(s, tokens, cc, [new Site(HookKind.Z, 1, Head: 2)]);
            Assert.Equal(patched[one.Target] - one.Base, one.Delta![1, 2]);
            // several sources: the metric is averaged
            var two = HeadAblation.Run(s, tokens, one.Target, new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [tokens, corrupt], Sweep = SweepOptions.NaiveMode });
            Assert.Equal(one.Delta.Data.Select(x => x / 2), two.Delta!.Data, (x, y) => Math.Abs(x - y) < 1e-6);
            var e = Assert.Throws<Engine.Loader.UsageException>(() => HeadAblation.Run(s, tokens, null, new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [tokens[..^1]] }));
            Assert.Contains("--source-tokens", e.Message);
            // a neuron sweep of one layer, ranked by |delta|
            var sweep = HeadAblation.Run(s, tokens, null, new AblationOptions { Neurons = HeadAblation.AllNeurons(c, [0]), Top = 5, Metric = OutputMetric.LogProb });
            Assert.Equal(c.DMlp, sweep.Entries.Count);
            Assert.Equal(5, sweep.Ranked.Count);
            double fifth = Math.Abs(sweep.Ranked[4].Delta);
            Assert.All(sweep.Entries.Except(sweep.Ranked), x => Assert.True(Math.Abs(x.Delta) <= fifth));
            for (int i = 1; i < 5; i++) Assert.True(Math.Abs(sweep.Ranked[i - 1].Delta) >= Math.Abs(sweep.Ranked[i].Delta));
            Assert.Equal(InterpMath.LogProb(Last(s, tokens), sweep.Target), sweep.Base, 12);
        }
    }
}
