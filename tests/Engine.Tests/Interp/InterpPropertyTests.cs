using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>Properties of the methods that hold without reference numbers (SPEC "Methods without fixtures" and identities).</summary>
public class InterpPropertyTests
{
    static (Fixture Fx, Model Model, Session Session) Open(string fixture, string backend = "cpu")
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        return (fx, model, new Session(model, new SessionOptions { Backend = backend, Capacity = 32, AllLogits = false }));
    }

    static (int[] Clean, int[] Corrupt, int Answer, int Wrong) Pair(Fixture fx) =>
        (Fixture.Ints(fx.Interp.GetProperty("clean_tokens")), Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens")),
         fx.Interp.GetProperty("answer_token").GetInt32(), fx.Interp.GetProperty("wrong_token").GetInt32());

    static double Metric(float[] last, int a, int w) => ActivationPatching.Metric(last, PatchMetric.LogitDiff, a, w);

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma")]
    [InlineData("gpt_neox")]
    public void PatchingEveryPositionOfLayer0ResidPreReproducesTheOtherRunExactly(string fixture)
    {
        var (fx, model, s) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            var filter = (string n) => n == "blocks.0.hook_resid_pre";
            var (cleanLogits, cleanCache) = s.RunWithCache(clean, filter);
            var (corruptLogits, corruptCache) = s.RunWithCache(corrupt, filter);
            double cleanMetric = Metric(cleanLogits, a, w), corruptMetric = Metric(corruptLogits, a, w);
            Site[] all = [new Site(HookKind.ResidPre, 0)];
            // denoising: corrupted run + every clean row = the clean run; noising: the reverse
            Assert.Equal(cleanMetric, Metric(ActivationPatching.RunPatched(s, corrupt, cleanCache, all), a, w));
            Assert.Equal(corruptMetric, Metric(ActivationPatching.RunPatched(s, clean, corruptCache, all), a, w));
        }
    }

    [Fact]
    public void DenoisingAndNoisingAreSymmetricOnPositionsWhereThePromptsAgree()
    {
        var (fx, model, s) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            // exact identities of the definition (one full pass per cell); the sweep fast path agrees within 1e-5 (Sweeps tests)
            var de = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Sweep = SweepOptions.NaiveMode });
            var no = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Direction = PatchDirection.Noise, Sweep = SweepOptions.NaiveMode });
            Assert.Equal(de.CleanMetric, no.CleanMetric);
            Assert.Equal(de.CorruptMetric, no.CorruptMetric);
            for (int p = 0; p < clean.Length; p++)
                if (clean[p] == corrupt[p])
                {
                    // at layer 0 a position whose token is the same in both prompts carries no difference
                    Assert.Equal(de.CorruptMetric, de.Patched[0, p]);
                    Assert.Equal(no.CleanMetric, no.Patched[0, p]);
                }
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gpt_neox")]
    public void PatchingEveryHeadOfZEqualsPatchingAttnOut(string fixture)
    {
        var (fx, model, s) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            var (_, cache) = s.RunWithCache(clean, n => n.EndsWith("attn.hook_z") || n.EndsWith("hook_attn_out"));
            int L = model.Config.NLayers, H = model.Config.NHeads;
            for (int l = 0; l < L; l++)
            {
                // all positions at once, and one position at a time
                double viaZ = Metric(ActivationPatching.RunPatched(s, corrupt, cache, [new Site(HookKind.Z, l)]), a, w);
                double viaOut = Metric(ActivationPatching.RunPatched(s, corrupt, cache, [new Site(HookKind.AttnOut, l)]), a, w);
                Assert.True(Math.Abs(viaZ - viaOut) < 1e-5, $"layer {l}: z {viaZ} vs attn_out {viaOut}");
                for (int p = 0; p < clean.Length; p++)
                {
                    var heads = Enumerable.Range(0, H).Select(h => new Site(HookKind.Z, l, Position: p, Head: h)).ToArray();
                    double z = Metric(ActivationPatching.RunPatched(s, corrupt, cache, heads), a, w);
                    double o = Metric(ActivationPatching.RunPatched(s, corrupt, cache, [new Site(HookKind.AttnOut, l, Position: p)]), a, w);
                    Assert.True(Math.Abs(z - o) < 1e-5, $"layer {l} position {p}: z {z} vs attn_out {o}");
                }
            }
        }
    }

    [Fact]
    public void HeadVariantsHaveTheRightShapesUnderGqaAndPattern0IsANoOp()
    {
        var (fx, model, s) = Open("llama");
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            var c = model.Config;
            Assert.True(c.NKvHeads < c.NHeads);
            var k = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Activation = PatchActivation.K });
            Assert.Equal([c.NLayers, c.NKvHeads], k.Patched.Shape);
            Assert.Equal("kv_head", k.Axes[1]);
            var q = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Activation = PatchActivation.Q });
            Assert.Equal([c.NLayers, c.NHeads], q.Patched.Shape);
            var zp = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Activation = PatchActivation.Z, PerPosition = true });
            Assert.Equal([c.NLayers, clean.Length, c.NHeads], zp.Patched.Shape);
            var pat = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Activation = PatchActivation.Pattern, PerPosition = true, Metric = PatchMetric.Prob, Sweep = SweepOptions.NaiveMode });
            // the destination row 0 of a causal pattern is [1, 0, ...] in every run: patching it changes nothing
            for (int l = 0; l < c.NLayers; l++)
                for (int h = 0; h < c.NHeads; h++)   // (the pattern tap switches attention to the unfused kernels, which are bit-identical)
                    Assert.True(pat.Patched[l, 0, h] == pat.CorruptMetric, $"L{l}H{h}: {pat.Patched[l, 0, h]:R} vs {pat.CorruptMetric:R}");
            // every metric variant is consistent with the raw logits
            var lp = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Metric = PatchMetric.LogProb, Activation = PatchActivation.MlpOut });
            var pr = ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Metric = PatchMetric.Prob, Activation = PatchActivation.MlpOut });
            for (int i = 0; i < lp.Patched.Data.Length; i++) Assert.True(Math.Abs(Math.Exp(lp.Patched.Data[i]) - pr.Patched.Data[i]) < 1e-9);
        }
    }

    [Fact]
    public void ResidMidDoesNotExistForParallelResidualModels()
    {
        var (fx, model, s) = Open("gpt_neox");
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            var e = Assert.Throws<UsageException>(() => ActivationPatching.Run(s, clean, corrupt, a, w, new PatchOptions { Activation = PatchActivation.ResidMid }));
            Assert.Contains("resid_mid", e.Message);
            Assert.Contains("parallel", e.Message);
        }
    }

    [Fact]
    public void DefaultAnswerAndWrongFollowTheFixtureRule()
    {
        var (fx, model, s) = Open("qwen2");
        using (fx) using (model) using (s)
        {
            var (clean, corrupt, a, w) = Pair(fx);
            var r = ActivationPatching.Run(s, clean, corrupt);
            Assert.Equal(a, r.AnswerToken);
            Assert.Equal(w, r.WrongToken);
        }
    }

    [Fact]
    public void AblationVariants()
    {
        var (fx, model, s) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            var tokens = Fixture.Ints(fx.Interp.GetProperty("head_zero_ablation").GetProperty("tokens"));
            int target = fx.Interp.GetProperty("head_zero_ablation").GetProperty("target_token").GetInt32();
            // exact identities of the definition (one full pass per run); the sweep fast path agrees within 1e-5 (Sweeps tests)
            var all = HeadAblation.Run(s, tokens, target, new AblationOptions { Sweep = SweepOptions.NaiveMode });
            // one head "together" is the same run as that head alone
            var one = HeadAblation.Run(s, tokens, target, new AblationOptions { Heads = [new HeadRef(1, 2)], Together = true, Sweep = SweepOptions.NaiveMode });
            Assert.Null(one.Delta);
            Assert.Equal(all.Delta![1, 2], one.Entries.Single().Delta);
            // a subset leaves the other cells NaN
            var some = HeadAblation.Run(s, tokens, target, new AblationOptions { Heads = [new HeadRef(0, 1)], Sweep = SweepOptions.NaiveMode });
            Assert.Equal(all.Delta[0, 1], some.Delta![0, 1]);
            Assert.True(double.IsNaN(some.Delta[2, 3]));
            // mean ablation over a one-token prompt replaces z by itself: nothing changes
            var single = HeadAblation.Run(s, [tokens[0]], null, new AblationOptions { Mode = AblationMode.Mean, Sweep = SweepOptions.NaiveMode });
            Assert.All(single.Entries, e => Assert.Equal(0.0, e.Delta));
            // mean over reference prompts differs from zero ablation, and neurons can be ablated
            var mean = HeadAblation.Run(s, tokens, target, new AblationOptions { Mode = AblationMode.Mean, MeanPrompts = [tokens, Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"))] });
            Assert.NotEqual(all.Delta.Data, mean.Delta!.Data);
            var neurons = HeadAblation.Run(s, tokens, target, new AblationOptions { Neurons = [new NeuronRef(0, 3), new NeuronRef(2, 7)] });
            Assert.Equal(2, neurons.Entries.Count);
            Assert.Null(neurons.Delta);
            // zeroing every neuron of the last MLP removes exactly its output (minus the bias): compare with a patched mlp_out
            int M = model.Config.DMlp, Lm = model.Config.NLayers - 1;
            var every = HeadAblation.Run(s, tokens, target, new AblationOptions { Neurons = Enumerable.Range(0, M).Select(i => new NeuronRef(Lm, i)).ToList(), Together = true });
            var bias = model.Weights.Layers[Lm].MlpOut.Bias!;
            var manual = InterpMath.RunLast(s, tokens, [(HookKind.MlpOut, Lm, tap => { for (int t = 0; t < tap.Shape.D0; t++) bias.CopyTo(tap.Row(t)); })]);
            Assert.True(Math.Abs(every.Entries.Single().Logit - manual[target]) < 1e-5);
        }
    }

    [Fact]
    public void CausalTraceIdentitiesAndWindows()
    {
        Assert.Equal((0, 5), CausalTrace.WindowOf(0, 10, 12));
        Assert.Equal((1, 11), CausalTrace.WindowOf(6, 10, 12));   // L-5 .. L+4
        Assert.Equal((2, 5), CausalTrace.WindowOf(3, 3, 12));
        Assert.Equal((2, 4), CausalTrace.WindowOf(3, 2, 12));
        Assert.Equal((10, 12), CausalTrace.WindowOf(11, 2, 12));
        Assert.Equal((6, 12), CausalTrace.WindowOf(11, 10, 12));
        var (fx, model, s) = Open("llama");
        using (fx) using (model) using (s)
        {
            var ct = fx.Interp.GetProperty("causal_trace");
            var tokens = Fixture.Ints(ct.GetProperty("tokens"));
            var subject = Fixture.Ints(ct.GetProperty("subject_positions"));
            var noise = TraceNoise.FromFile(Path.Combine(fx.Folder, "noise.safetensors"), model.Config.DModel);
            Assert.Equal(subject, noise.FileSubjectPositions);
            var r = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Window = 2, Mlp = false });
            int L = model.Config.NLayers, P = tokens.Length - 1;
            Assert.Null(r.Mlp);
            // restoring the last residual at the last position restores the output
            Assert.True(Math.Abs(r.Resid![L - 1, P] - r.CleanProb) < 1e-6);
            // a position before the subject is never corrupted: restoring it changes nothing
            Assert.True(Math.Abs(r.Resid[0, 0] - r.CorruptProb) < 1e-7);
            Assert.Equal(r.CleanProb - r.CorruptProb, r.TotalEffect);
            // default target = the clean argmax
            var logits = InterpMath.LastRow(s.Run(tokens), model.Config.VocabSize);
            Assert.Equal(Session.ArgMax(logits), r.Target);
        }
    }

    [Fact]
    public void GeneratedNoiseIsSeededAndScaledByTheEmbeddingStd()
    {
        using var fx = new Fixture("gpt2");
        using var model = Model.Load(fx.Folder);
        int[] subjectTokens = [45, 46, 47];
        var a = TraceNoise.Generate(model, 3, subjectTokens, samples: 10, scale: 3, seed: 1);
        var b = TraceNoise.Generate(model, 3, subjectTokens, samples: 10, scale: 3, seed: 1);
        var c = TraceNoise.Generate(model, 3, subjectTokens, samples: 10, scale: 3, seed: 2);
        Assert.Equal(a.Data, b.Data);
        Assert.NotEqual(a.Data, c.Data);
        Assert.Equal(10 * 3 * model.Config.DModel, a.Data.Length);
        Assert.Contains("subject", a.Source);
        // std by hand: all elements of the three embedding rows, unbiased
        var xs = subjectTokens.SelectMany(t => Enumerable.Range(0, model.Config.DModel).Select(j => (double)model.Weights.TokenEmbedding.Get((long)t * model.Config.DModel + j))).ToArray();
        double mean = xs.Average(), std = Math.Sqrt(xs.Sum(x => (x - mean) * (x - mean)) / (xs.Length - 1));
        Assert.Equal(std, a.Std!.Value, 9);
        // the sample std of the noise is close to 3 x std
        double nm = a.Data.Average(x => (double)x), ns = Math.Sqrt(a.Data.Sum(x => (x - nm) * (x - nm)) / (a.Data.Length - 1));
        Assert.InRange(ns / (3 * std), 0.9, 1.1);
        var whole = TraceNoise.Generate(model, 3, null);
        Assert.Contains("whole embedding matrix", whole.Source);
        Assert.Equal(TraceNoise.EmbeddingStd(model, null), whole.Std);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma-bf16")]
    public void LastLayerOfTheLensIsTheRealOutput(string fixture)
    {
        var (fx, model, s) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var tokens = Fixture.Ints(fx.Interp.GetProperty("logit_lens").GetProperty("tokens"));
            int V = model.Config.VocabSize, L = model.Config.NLayers, P = tokens.Length - 1;
            var r = LogitLens.Run(s, tokens, 5, target: 7);
            var real = InterpMath.LastRow(s.Run(tokens), V).ToArray();
            Assert.Equal(InterpMath.TopK(real, 5), r.TopIds[L - 1][P]);
            for (int j = 0; j < 5; j++) Assert.True(Math.Abs(InterpMath.Prob(real, r.TopIds[L - 1][P][j]) - r.TopProbs[L - 1][P][j]) < 1e-6);
            Assert.Equal(InterpMath.Rank(real, 7), (int)r.TargetRank![L - 1, P]);
            Assert.True(Math.Abs(InterpMath.Prob(real, 7) - r.TargetProb![L - 1, P]) < 1e-6);
        }
    }

    [Fact]
    public void TopKBreaksTiesByLowerId()
    {
        Assert.Equal([1, 2, 3], InterpMath.TopK([1f, 3f, 3f, 2f, float.NaN], 3));
        Assert.Equal([2, 0, 1], InterpMath.TopK([5f, 5f, 9f], 5));
        Assert.Equal(1, InterpMath.Rank([1f, 3f, 3f, 2f], 2));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma")]
    [InlineData("gpt_neox")]
    public void DlaHeadsAndBiasAddUpToTheAttentionOutput(string fixture)
    {
        var (fx, model, s) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var tokens = Fixture.Ints(fx.Interp.GetProperty("direct_logit_attribution").GetProperty("tokens"));
            var r = DirectLogitAttribution.Run(s, tokens);
            Assert.True(Math.Abs(r.SumOfParts - r.Logit) < 1e-4);
            // Σ_h head[L][h] + attn_bias[L] = the frozen-norm attribution of the whole hook_attn_out[L][P]
            var c = model.Config;
            int P = tokens.Length - 1, D = c.DModel;
            var (_, cache) = s.RunWithCache(tokens, n => n.EndsWith("hook_attn_out") || n == "ln_final.hook_scale");
            double scale = cache["ln_final.hook_scale"].Data[P];
            var u = InterpMath.UnembedRow(model, r.Target);
            for (int l = 0; l < c.NLayers; l++)
            {
                var x = cache[$"blocks.{l}.hook_attn_out"].Data.AsSpan(P * D, D).ToArray();
                double mean = c.Norm == NormKind.LayerNorm ? x.Average(v => (double)v) : 0, attr = 0;
                for (int i = 0; i < D; i++) attr += (x[i] - mean) / scale * (c.NormWeightOffset + model.Weights.FinalNormWeight[i]) * u[i];
                double parts = Enumerable.Range(0, c.NHeads).Sum(h => r.Heads[l, h]) + r.AttnBias[l];
                Assert.True(Math.Abs(parts - attr) < 1e-4, $"layer {l}: heads + bias {parts} vs attn_out {attr}");
            }
        }
    }
}
