using Engine.Interp;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>
/// Identities of neuron-level attribution (Yu &amp; Ananiadou 2024; SPEC "Methods without fixtures") and of the
/// comparative neuron analysis, on every fixture.
/// </summary>
public class NeuronAttributionTests
{
    public static IEnumerable<object[]> AllFixtures() => TestPaths.RandomFixtures.Select(f => new object[] { f });

    static (Fixture Fx, Model Model, Session Session, int[] Tokens) Open(string fixture)
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        var s = new Session(model, new SessionOptions { Capacity = 32, AllLogits = false });
        return (fx, model, s, Fixture.Ints(fx.Interp.GetProperty("direct_logit_attribution").GetProperty("tokens")));
    }

    [Theory, MemberData(nameof(AllFixtures))]
    public void NeuronVectorsAndFrozenNormIdentities(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int P = tokens.Length - 1, D = c.DModel, M = c.DMlp, V = c.VocabSize, L = c.NLayers;
            var (logits, cache) = s.RunWithCache(tokens, n => n.EndsWith("mlp.hook_post") || n.EndsWith("hook_mlp_out") || n == "ln_final.hook_scale" || n == $"blocks.{L - 1}.hook_resid_post");
            // Σ_i m_i W_out[:, i] + b_out = hook_mlp_out at P, for every layer
            for (int l = 0; l < L; l++)
            {
                var cols = DenseWeights.Columns(model.Weights.Layers[l].MlpOut);
                var m = cache[$"blocks.{l}.mlp.hook_post"].Data.AsSpan(P * M, M);
                var sum = new double[D];
                for (int i = 0; i < M; i++) for (int r = 0; r < D; r++) sum[r] += m[i] * (double)cols[i * D + r];
                if (model.Weights.Layers[l].MlpOut.Bias is { } b) for (int r = 0; r < D; r++) sum[r] += b[r];
                var real = cache[$"blocks.{l}.hook_mlp_out"].Data.AsSpan(P * D, D).ToArray();
                Compare.Close(real, sum, 1e-4, $"{fixture} layer {l}: sum of neuron vectors + bias vs hook_mlp_out");
            }
            // the frozen-norm softmax of the real final residual, with the bias, is the real output distribution
            double scale = cache["ln_final.hook_scale"].Data[P];
            var norm = new FrozenFinalNorm(s, scale);
            var final = DenseWeights.ToDouble(cache[$"blocks.{L - 1}.hook_resid_post"].Data.AsSpan(P * D, D));
            var frozen = norm.Logits(final, withBias: true);
            var real2 = InterpMath.LastRow(logits, V);
            double lseF = LogSumExp(frozen), lseR = InterpMath.LogSumExp(real2);
            for (int v = 0; v < V; v++)
                Assert.True(Math.Abs(Math.Exp(frozen[v] - lseF) - Math.Exp(real2[v] - lseR)) < 1e-5, $"{fixture}: p[{v}] frozen {Math.Exp(frozen[v] - lseF)} vs real {Math.Exp(real2[v] - lseR)}");
            // Imp of a zero vector is 0 (both the double and the batched kernel path); the two paths agree
            int target = Session.ArgMax(real2);
            var imp = new LogProbIncrease(norm, final, target);
            Assert.Equal(0.0, imp.Of(new double[D]));
            var rows = new float[3 * D];
            var rng = new Random(5);
            for (int i = D; i < rows.Length; i++) rows[i] = (float)(rng.NextDouble() - 0.5);
            var batch = imp.Of(rows, 3);
            Assert.Equal(0.0, batch[0]);
            for (int k = 1; k < 3; k++)
            {
                double single = imp.Of(DenseWeights.ToDouble(rows.AsSpan(k * D, D)));
                Assert.True(Math.Abs(single - batch[k]) < 1e-4, $"{fixture}: batched Imp {batch[k]} vs double {single}");
            }
        }
    }

    static double LogSumExp(double[] x)
    {
        double max = x.Max(), sum = 0;
        foreach (var v in x) sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gemma")]
    [InlineData("gpt_neox")]
    public void AttributionMatchesItsDefinitionAndQuerySharesSumToImp(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            int P = tokens.Length - 1, D = c.DModel, L = c.NLayers, H = c.NHeads, d = c.HeadDim;
            var r = NeuronAttribution.Run(s, tokens, null, new NeuronAttributionOptions { Top = 1_000_000, QueryFrom = 1 });
            var logits = InterpMath.LastRow(s.Run(tokens), c.VocabSize).ToArray();
            Assert.Equal(Session.ArgMax(logits), r.Target);
            Assert.Equal(InterpMath.LogProb(logits, r.Target), r.TargetLogProb, 9);
            Assert.Equal(c.ParallelResidual, r.MlpBaseline.StartsWith("resid_pre"));
            // the head Imps are the definition: log p(w | head + resid_pre) - log p(w | resid_pre), frozen norm, no bias
            var (_, cache) = s.RunWithCache(tokens, n => n.EndsWith("hook_resid_pre") || n.EndsWith("attn.hook_z") || n == "ln_final.hook_scale");
            var norm = new FrozenFinalNorm(s, cache["ln_final.hook_scale"].Data[P]);
            Assert.Equal(r.FinalScale, norm.Scale);
            for (int l = 0; l < L; l++)
            {
                var h0 = DenseWeights.ToDouble(cache[$"blocks.{l}.hook_resid_pre"].Data.AsSpan(P * D, D));
                var imp = new LogProbIncrease(norm, h0, r.Target);
                var heads = DenseWeights.HeadVectors(cache[$"blocks.{l}.attn.hook_z"].Data.AsSpan(P * H * d, H * d), DenseWeights.Columns(model.Weights.Layers[l].O), H, d, D);
                for (int h = 0; h < H; h++)
                    Assert.True(Math.Abs(imp.Of(heads[h]) - r.HeadImp[l, h]) < 1e-4, $"{fixture} L{l}H{h}: {imp.Of(heads[h])} vs {r.HeadImp[l, h]}");
            }
            // rankings are consistent with the tables
            double best = r.NeuronImp.SelectMany(x => x).Max();
            Assert.Equal(best, r.TopNeurons[0].Score);
            Assert.Equal(r.HeadImp.Data.Max(), r.TopHeads[0].Score);
            for (int i = 1; i < r.TopNeurons.Count; i++) Assert.True(r.TopNeurons[i - 1].Score >= r.TopNeurons[i].Score);
            // query scores for one value neuron n: the shares of all lower components sum to 1, so the scores sum to Imp(n)
            var n = r.TopNeurons[0];
            double total = r.QueryNeurons.Sum(x => x.Score) + r.QueryHeads.Sum(x => x.Score) + r.QueryOther.Sum(x => x.Score);
            Assert.True(Math.Abs(total - n.Score) < 1e-6 * Math.Max(1, Math.Abs(n.Score)), $"{fixture}: query scores sum {total} vs Imp {n.Score}");
            // only components below n are scored
            Assert.All(r.QueryNeurons, q => Assert.True(q.Layer < n.Layer));
            Assert.All(r.QueryHeads, q => Assert.True(c.ParallelResidual ? q.Layer < n.Layer : q.Layer <= n.Layer));
            // the lower components decompose the residual stream the MLP reads: Σ_c <c, k> = <resid_mid (resid_pre) at P, k>
            Assert.Equal(n, r.QueryValues.Single());
            var k = NeuronAttribution.Key(s, n.Layer, n.Index);
            string input = c.ParallelResidual ? $"blocks.{n.Layer}.hook_resid_pre" : $"blocks.{n.Layer}.hook_resid_mid";
            var (_, c2) = s.RunWithCache(tokens, x => x == input);
            double dot = 0;
            for (int i = 0; i < D; i++) dot += c2[input].Data[P * D + i] * k[i];
            Assert.True(Math.Abs(dot - r.QueryDenominators[0]) < 1e-4 * Math.Max(1, Math.Abs(dot)), $"{fixture}: sum of <c, k> {r.QueryDenominators[0]} vs <input, k> {dot}");
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("qwen2")]
    [InlineData("gpt_neox")]
    public void ComparativeNeuronAnalysisLeavesLowerLayersUnchanged(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            var head = new HeadRef(1, 1);
            var r = ComparativeNeuronAnalysis.Run(s, tokens, head, null, 10);
            // neurons of layers below the head (and of its own layer for a parallel residual) see the same input: CNA exactly 0
            for (int l = 0; l < c.NLayers; l++)
            {
                bool unaffected = l < head.Layer || (l == head.Layer && c.ParallelResidual);
                if (unaffected) Assert.All(r.Cna[l], v => Assert.Equal(0.0, v));
            }
            Assert.Contains(r.Cna[c.NLayers - 1], v => v != 0);
            // the original Imps are those of the attribution; the ablated log p is a plain head-zeroed run's
            var a = NeuronAttribution.Run(s, tokens, r.Target, new NeuronAttributionOptions { QueryFrom = 0 });
            for (int l = 0; l < c.NLayers; l++) Assert.Equal(a.NeuronImp[l], r.ImpOriginal[l]);
            var zero = new Site(HookKind.Z, head.Layer, Head: head.Head);
            var last = InterpMath.RunLast(s, tokens, [(HookKind.Z, head.Layer, tap => zero.Fill(tap, 0f))]);
            Assert.Equal(InterpMath.LogProb(last, r.Target), r.AblatedLogProb, 12);
            Assert.Equal(r.Cna.SelectMany(x => x).Max(), r.Top[0].Score);
        }
    }
}
