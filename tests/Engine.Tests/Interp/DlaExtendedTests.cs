using Engine.Interp;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>
/// DLA per neuron, accumulated and decomposed residual stream: the parts sum to the real logit on every fixture; and the
/// identities of the other fixture methods that hold on every fixture (last lens layer = output; patching a run with its
/// own values reproduces its metric).
/// </summary>
public class DlaExtendedTests
{
    public static IEnumerable<object[]> AllFixtures() => TestPaths.RandomFixtures.Select(f => new object[] { f });

    [Theory, MemberData(nameof(AllFixtures))]
    public void PartsSumToTheLogitPerNeuronAccumulatedAndDecomposed(string fixture)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var s = new Session(model, new SessionOptions { Capacity = 32, AllLogits = false });
        var c = model.Config;
        var dl = fx.Interp.GetProperty("direct_logit_attribution");
        var tokens = Fixture.Ints(dl.GetProperty("tokens"));
        int target = dl.GetProperty("target_token").GetInt32();
        var plain = DirectLogitAttribution.Run(s, tokens, target);
        Assert.Null(plain.Neurons);
        Assert.Null(plain.Accumulated);
        var r = DirectLogitAttribution.Run(s, tokens, target, new DlaOptions { PerNeuron = true, Accumulated = true, Decomposed = true, IncludeMid = !c.ParallelResidual });
        // the fixture fields are unchanged by the options
        Assert.Equal(plain.Heads.Data, r.Heads.Data);
        Assert.Equal(plain.Mlp, r.Mlp);
        Assert.Equal(plain.Embed, r.Embed);
        Assert.Equal(plain.SumOfParts, r.SumOfParts);
        double tol = 1e-4 * Math.Max(1, Math.Abs(r.Logit));

        // per neuron: Σ_i neuron[L][i] + mlp_bias[L] = mlp[L]; everything together = the logit
        double all = r.Embed + r.Heads.Data.Sum() + r.AttnBias.Sum() + r.LnFinalBiasTerm;
        for (int l = 0; l < c.NLayers; l++)
        {
            double layer = r.Neurons![l].Sum() + r.MlpBias![l];
            Assert.True(Math.Abs(layer - r.Mlp[l]) < tol, $"{fixture} layer {l}: neurons + bias {layer} vs mlp {r.Mlp[l]}");
            all += layer;
        }
        Assert.True(Math.Abs(all - r.Logit) < tol, $"{fixture}: per-neuron parts {all} vs logit {r.Logit}");

        // decomposed: embed (+ pos_embed) + heads + attn biases + mlps + the final-norm bias term = the logit
        var dec = r.Decomposed!;
        double sum = dec.Sum(x => x.Value) + r.LnFinalBiasTerm;
        Assert.True(Math.Abs(sum - r.Logit) < tol, $"{fixture}: decomposed {sum} vs logit {r.Logit}");
        Assert.Equal(c.Positions == Engine.Loader.PositionKind.Learned, dec.Any(x => x.Label == "pos_embed"));
        double embedParts = dec.Where(x => x.Label is "embed" or "pos_embed").Sum(x => x.Value);
        Assert.True(Math.Abs(embedParts - r.Embed) < tol, $"{fixture}: embed parts {embedParts} vs embed {r.Embed}");
        Assert.Equal(c.NLayers * c.NHeads, dec.Count(x => x.Label.Contains('H')));

        // accumulated: 0_pre = embed; final_post + bias term = the logit; each step adds that block's parts
        var acc = r.Accumulated!;
        Assert.Equal("0_pre", acc[0].Label);
        Assert.Equal("final_post", acc[^1].Label);
        Assert.True(Math.Abs(acc[0].Value - r.Embed) < 1e-9);
        Assert.True(Math.Abs(acc[^1].Value + r.LnFinalBiasTerm - r.Logit) < tol, $"{fixture}: final_post {acc[^1].Value} + bias vs logit {r.Logit}");
        var pre = acc.Where(x => x.Label.EndsWith("_pre")).Select(x => x.Value).Append(acc[^1].Value).ToArray();
        for (int l = 0; l < c.NLayers; l++)
        {
            double block = Enumerable.Range(0, c.NHeads).Sum(h => r.Heads[l, h]) + r.AttnBias[l] + r.Mlp[l];
            Assert.True(Math.Abs(pre[l + 1] - pre[l] - block) < tol, $"{fixture} layer {l}: accumulated step {pre[l + 1] - pre[l]} vs block parts {block}");
            if (!c.ParallelResidual)
            {
                double mid = acc.Single(x => x.Label == $"{l}_mid").Value;
                double attn = Enumerable.Range(0, c.NHeads).Sum(h => r.Heads[l, h]) + r.AttnBias[l];
                Assert.True(Math.Abs(mid - pre[l] - attn) < tol, $"{fixture} layer {l}: mid step vs attention parts");
            }
        }
    }

    [Theory, MemberData(nameof(AllFixtures))]
    public void LastLensLayerIsTheOutputAndSelfPatchingIsANoOp(string fixture)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var s = new Session(model, new SessionOptions { Capacity = 32, AllLogits = false });
        var c = model.Config;
        int V = c.VocabSize, L = c.NLayers;
        var tokens = Fixture.Ints(fx.Interp.GetProperty("logit_lens").GetProperty("tokens"));
        int P = tokens.Length - 1;
        var lens = LogitLens.Run(s, tokens, 5, target: 3);
        var real = InterpMath.LastRow(s.Run(tokens), V).ToArray();
        Assert.Equal(InterpMath.TopK(real, 5), lens.TopIds[L - 1][P]);
        for (int j = 0; j < 5; j++) Assert.True(Math.Abs(InterpMath.Prob(real, lens.TopIds[L - 1][P][j]) - lens.TopProbs[L - 1][P][j]) < 1e-6);
        Assert.True(Math.Abs(InterpMath.Prob(real, 3) - lens.TargetProb![L - 1, P]) < 1e-6);

        // patching a layer of the clean run with the clean run's own value reproduces the clean metric exactly
        var clean = Fixture.Ints(fx.Interp.GetProperty("clean_tokens"));
        int a = fx.Interp.GetProperty("answer_token").GetInt32(), w = fx.Interp.GetProperty("wrong_token").GetInt32();
        var (logits, cache) = s.RunWithCache(clean, n => n.EndsWith("hook_resid_pre") || n.EndsWith("hook_attn_out") || n.EndsWith("hook_mlp_out") || n.EndsWith("attn.hook_z"));
        double metric = ActivationPatching.Metric(InterpMath.LastRow(logits, V), PatchMetric.LogitDiff, a, w);
        for (int l = 0; l < L; l++)
            foreach (var k in new[] { HookKind.ResidPre, HookKind.AttnOut, HookKind.MlpOut, HookKind.Z })
            {
                var patched = ActivationPatching.RunPatched(s, clean, cache, [new Site(k, l)]);
                Assert.Equal(metric, ActivationPatching.Metric(patched, PatchMetric.LogitDiff, a, w));
            }
    }
}
