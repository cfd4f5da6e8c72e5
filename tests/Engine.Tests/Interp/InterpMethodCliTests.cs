using System.Text.Json;
using Engine.Interp;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>End-to-end CLI tests of attribute, noise (and CNA), steer, and the extended dla / ablate: the numbers, not only the files.</summary>
public class InterpMethodCliTests
{
    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Engine.Cli.Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    static JsonElement Json(params string[] args)
    {
        var (code, o, e) = Cli([.. args, "--json"]);
        Assert.True(code == 0, $"engine {string.Join(' ', args)} -> {code}: {e}");
        using var doc = JsonDocument.Parse(o);
        return doc.RootElement.Clone();
    }

    static string Ids(int[] t) => string.Join(",", t);

    static (Fixture Fx, Model Model, Session Session, int[] Tokens) Open(string fixture)
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        var s = new Session(model, new SessionOptions { Capacity = 48, AllLogits = false });
        return (fx, model, s, Fixture.Ints(fx.Interp.GetProperty("clean_tokens")));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    public void AttributeReportsTheLibraryNumbers(string fixture)
    {
        var (fx, model, s, tokens) = Open(fixture);
        using (fx) using (model) using (s)
        {
            var j = Json("attribute", "--model", fx.Folder, "--tokens", Ids(tokens), "--top", "5", "--query-from", "10");
            var r = NeuronAttribution.Run(s, tokens, null, new NeuronAttributionOptions { Top = 5, QueryFrom = 10 });
            Assert.Equal("attribute", j.GetProperty("command").GetString());
            Assert.Equal(1, j.GetProperty("schema_version").GetInt32());
            Assert.Contains("frozen", j.GetProperty("variant").GetString());
            Assert.Equal(r.Target, j.GetProperty("target_token").GetInt32());
            Assert.Equal(r.HeadImp.Data, Fixture.Doubles(j.GetProperty("head_imp")));
            Assert.Equal(r.MlpLayerImp, Fixture.Doubles(j.GetProperty("mlp_layer_imp")));
            var topN = j.GetProperty("top_neurons");
            Assert.Equal(5, topN.GetArrayLength());
            Assert.Equal(r.NeuronImp.SelectMany(x => x).Max(), topN[0].GetProperty("imp").GetDouble());
            Assert.Equal(r.TopNeurons[0].Index, topN[0].GetProperty("neuron").GetInt32());
            Assert.Equal(r.QueryNeurons[0].Score, j.GetProperty("query").GetProperty("neurons")[0].GetProperty("score").GetDouble());
            Assert.Equal(10, j.GetProperty("query").GetProperty("from").GetInt32());
            Assert.Equal(model.Config.ParallelResidual, j.GetProperty("baselines").GetProperty("ffn").GetString()!.StartsWith("resid_pre"));
            var (code, o, _) = Cli("attribute", "--model", fx.Folder, "--tokens", Ids(tokens), "--top", "3");
            Assert.Equal(0, code);
            Assert.Contains("top FFN neurons", o);
        }
    }

    [Fact]
    public void NoiseSweepsAndCnaReportTheLibraryNumbers()
    {
        var (fx, model, s, tokens) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            string m = fx.Folder;
            var zero = Json("noise", "--model", m, "--tokens", Ids(tokens), "--sigma", "0", "--samples", "2");
            Assert.Equal("none", zero.GetProperty("sweep").GetString());
            Assert.Equal("hook_embed", zero.GetProperty("components")[0].GetProperty("hook").GetString());
            Assert.Equal(zero.GetProperty("clean_metric").GetDouble(), zero.GetProperty("components")[0].GetProperty("mean").GetDouble());
            Assert.Equal(0.0, zero.GetProperty("components")[0].GetProperty("drop").GetDouble());

            int target = Session.ArgMax(InterpMath.LastRow(s.Run(tokens), model.Config.VocabSize));
            var j = Json("noise", "--model", m, "--tokens", Ids(tokens), "--sweep", "heads", "--sigma-rel", "1", "--samples", "2", "--seed", "3");
            var lib = NoiseMaking.RunSweep(s, tokens, NoiseSweep.Heads, new MetricSpec(OutputMetric.Prob, target), new NoiseOptions { SigmaRel = 1, Samples = 2, Seed = 3 });
            Assert.Equal(lib.DropGrid!.Data, Fixture.Doubles(j.GetProperty("drop")));
            Assert.Equal(lib.Ranked[0].Label, j.GetProperty("ranked")[0].GetProperty("label").GetString());
            Assert.Equal(lib.Clean, j.GetProperty("clean_metric").GetDouble());

            var one = Json("noise", "--model", m, "--tokens", Ids(tokens), "--neuron", "1:4", "--positions", "2,3", "--sigma", "0.5", "--metric", "logprob", "--samples", "3");
            var lib1 = NoiseMaking.Run(s, tokens, [TapSelection.Neuron(1, 4, [2, 3])], new MetricSpec(OutputMetric.LogProb, target), new NoiseOptions { Sigma = 0.5, Samples = 3 });
            Assert.Equal(lib1.Components[0].Samples, Fixture.Doubles(one.GetProperty("components")[0].GetProperty("sample_metrics")));
            Assert.Equal("logprob", one.GetProperty("metric").GetString());

            var cna = Json("noise", "--model", m, "--tokens", Ids(tokens), "--cna-head", "1.1", "--top", "3");
            var libC = ComparativeNeuronAnalysis.Run(s, tokens, new HeadRef(1, 1), null, 3);
            var top = cna.GetProperty("cna").GetProperty("top_neurons");
            Assert.Equal(3, top.GetArrayLength());
            Assert.Equal(libC.Top[0].Score, top[0].GetProperty("cna").GetDouble());
            Assert.Equal(libC.LogProb - libC.AblatedLogProb, cna.GetProperty("cna").GetProperty("head_effect").GetDouble());
        }
    }

    [Fact]
    public void SteerReportsTheShiftAndIdentityEditsChangeNothing()
    {
        var (fx, model, s, tokens) = Open("llama");
        using (fx) using (model) using (s)
        {
            string m = fx.Folder;
            var same = Json("steer", "--model", m, "--tokens", Ids(tokens), "--neuron", "1:3", "--scale", "1", "--max-new-tokens", "5", "--also-generated");
            Assert.Equal(0.0, same.GetProperty("next_token").GetProperty("kl").GetDouble());
            Assert.Equal(Fixture.Ints(same.GetProperty("continuation").GetProperty("before")), Fixture.Ints(same.GetProperty("continuation").GetProperty("after")));
            Assert.Equal("scale", same.GetProperty("variant").GetString());

            var j = Json("steer", "--model", m, "--tokens", Ids(tokens), "--head", "1.2", "--scale", "-2", "--max-new-tokens", "4", "--no-stop");
            // the CLI edits the prompt positions only (no --also-generated): PromptLength = T
            var lib = Steering.Compare(s, tokens, [new ScaleIntervention { Kind = HookKind.Z, Layer = 1, Index = 2, Scale = -2, PromptLength = tokens.Length }], 4, stopAtEos: false);
            Assert.Equal(lib.Kl, j.GetProperty("next_token").GetProperty("kl").GetDouble());
            Assert.True(lib.Kl > 0);
            Assert.Equal(lib.ContinuationAfter, Fixture.Ints(j.GetProperty("continuation").GetProperty("after")));
            Assert.Equal(InterpMath.TopK(lib.LogitsAfter, 10), Fixture.Ints(j.GetProperty("next_token").GetProperty("after").GetProperty("top_ids")));

            // a steering vector from identical prompts is zero: nothing changes; a real pair shifts the distribution
            var zero = Json("steer", "--model", m, "--tokens", Ids(tokens), "--layer", "1", "--positive-tokens", "1,5,6", "--negative-tokens", "1,5,6", "--coef", "4", "--max-new-tokens", "3");
            Assert.Equal(0.0, zero.GetProperty("next_token").GetProperty("kl").GetDouble());
            Assert.Equal(0.0, zero.GetProperty("steering_vector").GetProperty("norm").GetDouble());
            var sv = Json("steer", "--model", m, "--tokens", Ids(tokens), "--layer", "1", "--act", "resid_post", "--pool", "mean",
                "--positive-tokens", "1,5,6;1,7", "--negative-tokens", "1,9,9;1,8", "--coef", "4", "--max-new-tokens", "3", "--freeze-attention");
            var vec = SteeringVector.FromPairs(s, [([1, 5, 6], [1, 9, 9]), ([1, 7], [1, 8])], HookKind.ResidPost, 1, SteeringPool.Mean);
            var libS = Steering.Compare(s, tokens, [new SteeringIntervention { Kind = HookKind.ResidPost, Layer = 1, Vector = vec.Vector, Coefficient = 4, PromptLength = tokens.Length }], 3, freezeAttention: true);
            Assert.Equal(vec.Norm, sv.GetProperty("steering_vector").GetProperty("norm").GetDouble());
            Assert.Equal(libS.Kl, sv.GetProperty("next_token").GetProperty("kl").GetDouble());
            Assert.True(sv.GetProperty("freeze_attention").GetBoolean());
            // the same pairs from a file (no tokenizer: comma-separated ids), '#' lines and blank lines skipped
            using (var pt = new TempDir())
            {
                File.WriteAllText(pt.File("pairs.tsv"), "# positive\tnegative\n1,5,6\t1,9,9\n\n1,7\t1,8\n");
                var sf = Json("steer", "--model", m, "--tokens", Ids(tokens), "--layer", "1", "--act", "resid_post", "--pool", "mean",
                    "--pairs", pt.File("pairs.tsv"), "--coef", "4", "--max-new-tokens", "3", "--freeze-attention");
                Assert.Equal(2, sf.GetProperty("steering_vector").GetProperty("pairs").GetInt32());
                Assert.Equal(libS.Kl, sf.GetProperty("next_token").GetProperty("kl").GetDouble());
            }

            // a direction from a file, scaled by 1: no change
            using var tmp = new TempDir();
            string file = tmp.File("dir.safetensors");
            var dir = Enumerable.Range(0, model.Config.DModel).Select(i => (float)(i % 3 - 1)).ToArray();
            Engine.Loader.SafeTensorWriter.Write(file, [Engine.Loader.SafeTensorWriter.F32("direction", [dir.Length], dir)]);
            var d1 = Json("steer", "--model", m, "--tokens", Ids(tokens), "--direction", file, "--hook", "blocks.1.hook_resid_pre", "--scale", "1", "--max-new-tokens", "3");
            Assert.Equal(0.0, d1.GetProperty("next_token").GetProperty("kl").GetDouble());
            var d0 = Json("steer", "--model", m, "--tokens", Ids(tokens), "--direction", file, "--hook", "blocks.1.hook_resid_pre", "--scale", "0", "--max-new-tokens", "3");
            Assert.True(d0.GetProperty("next_token").GetProperty("kl").GetDouble() > 0);
            var (code, o, _) = Cli("steer", "--model", m, "--tokens", Ids(tokens), "--neuron", "0:1", "--set", "0", "--max-new-tokens", "2");
            Assert.Equal(0, code);
            Assert.Contains("continuation after", o);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gemma")]
    public void DlaAndAblateExtensionsKeepTheFixtureFieldsAndAddUp(string fixture)
    {
        using var fx = new Fixture(fixture);
        string m = fx.Folder;
        var dl = fx.Interp.GetProperty("direct_logit_attribution");
        var tokens = Fixture.Ints(dl.GetProperty("tokens"));
        var j = Json("dla", "--model", m, "--tokens", Ids(tokens), "--target", dl.GetProperty("target_token").GetRawText(), "--per-neuron", "--top", "4", "--accumulated", "--decomposed");
        InterpFixtureTests.Near(Fixture.Doubles(j.GetProperty("heads")), dl.GetProperty("heads"), 1e-4, "dla heads");
        InterpFixtureTests.Near(Fixture.Doubles(j.GetProperty("mlp")), dl.GetProperty("mlp"), 1e-4, "dla mlp");
        double logit = j.GetProperty("logit").GetDouble();
        Assert.True(Math.Abs(j.GetProperty("decomposed_sum").GetDouble() - logit) < 1e-4 * Math.Max(1, Math.Abs(logit)));
        var sums = Fixture.Doubles(j.GetProperty("per_neuron").GetProperty("layer_sums"));
        var mlp = Fixture.Doubles(j.GetProperty("mlp"));
        for (int l = 0; l < mlp.Length; l++) Assert.True(Math.Abs(sums[l] - mlp[l]) < 1e-4, $"layer {l}: {sums[l]} vs {mlp[l]}");
        Assert.Equal(4, j.GetProperty("per_neuron").GetProperty("top_neurons").GetArrayLength());
        var acc = j.GetProperty("accumulated");
        Assert.Equal("final_post", acc.GetProperty("labels")[mlp.Length].GetString());
        double final = Fixture.Doubles(acc.GetProperty("values"))[mlp.Length];
        Assert.True(Math.Abs(final + j.GetProperty("ln_final_bias_term").GetDouble() - logit) < 1e-4 * Math.Max(1, Math.Abs(logit)));

        // exact: the definition (--naive: one full pass per run); the default sweep agrees within 1e-5 (Sweeps tests)
        var self = Json("ablate", "--model", m, "--tokens", Ids(tokens), "--mode", "resample", "--source-tokens", Ids(tokens), "--heads", "all", "--naive");
        Assert.All(Fixture.Doubles(self.GetProperty("delta")), v => Assert.Equal(0.0, v));
        Assert.Equal("resample", self.GetProperty("mode").GetString());
        var corrupt = Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"));
        var clean = Fixture.Ints(fx.Interp.GetProperty("clean_tokens"));
        var rs = Json("ablate", "--model", m, "--tokens", Ids(clean), "--mode", "resample", "--source-tokens", Ids(corrupt), "--heads", "1:*", "--top", "2");
        using (var model = Model.Load(m))
        using (var s = new Session(model, new SessionOptions { Capacity = 32, AllLogits = false }))
        {
            var lib = HeadAblation.Run(s, clean, null, new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [corrupt], Heads = [.. Enumerable.Range(0, model.Config.NHeads).Select(h => new HeadRef(1, h))], Top = 2 });
            Assert.Equal(lib.Delta!.Data.Where(x => !double.IsNaN(x)), Fixture.Doubles(rs.GetProperty("delta").EnumerateArray().ElementAt(1)));
            Assert.Equal(lib.Ranked[0].Label, rs.GetProperty("ranked")[0].GetProperty("label").GetString());
            if (fixture != "gpt2") return;                     // the neuron sweep (d_mlp runs) on one fixture
            var sw = Json("ablate", "--model", m, "--tokens", Ids(clean), "--neurons", "all", "--layers", "2", "--top", "3", "--metric", "logprob");
            var results = sw.GetProperty("results").EnumerateArray().Select(e => (Label: e.GetProperty("label").GetString(), Delta: e.GetProperty("delta").GetDouble())).ToList();
            Assert.Equal(model.Config.DMlp, results.Count);
            var want = results.OrderByDescending(e => Math.Abs(e.Delta)).Take(3).ToList();
            Assert.Equal(want.Select(e => e.Label), sw.GetProperty("ranked").EnumerateArray().Select(e => e.GetProperty("label").GetString()));
            var first = HeadAblation.Run(s, clean, null, new AblationOptions { Neurons = [new NeuronRef(2, 7)], Metric = OutputMetric.LogProb });
            // alone vs inside the sweep's batched passes: the same cell, equal within the sweep tolerance
            Assert.Equal(first.Entries[0].Delta, results.Single(e => e.Label == "L2N7").Delta, 1e-5);
            Assert.Equal("logprob", sw.GetProperty("metric").GetString());
        }
    }

    [Theory]
    [InlineData("attribute", "--top", "0")]
    [InlineData("attribute", "--query-from", "-1")]
    [InlineData("noise", "--sweep", "rows")]
    [InlineData("noise", "--sigma", "-1")]
    [InlineData("noise", "--hook", "blocks.9.hook_resid_pre")]
    [InlineData("noise", "--positions", "7")]
    [InlineData("noise", "--cna-head", "0.9")]
    [InlineData("noise", "--metric", "kl")]
    [InlineData("steer", "--scale", "x")]
    [InlineData("steer", "--neuron", "0:99999")]
    [InlineData("steer", "--layer", "9")]
    [InlineData("ablate", "--source-tokens", "1,2,3")]
    [InlineData("ablate", "--mode", "resample")]
    [InlineData("dla", "--incl-mid", null)]
    public void BadValuesAreOneLineUsageErrorsNamingTheOption(string command, string option, string? value)
    {
        using var fx = new Fixture("gpt2");
        var args = new List<string> { command, "--model", fx.Folder, "--tokens", "1,2,3" };
        if (command == "steer" && option is "--scale") args.AddRange(["--neuron", "0:1"]);
        if (command == "steer" && option is "--neuron") args.AddRange(["--scale", "2"]);
        if (command == "steer" && option is "--layer") args.AddRange(["--positive-tokens", "1,2", "--negative-tokens", "1,3"]);
        args.Add(option);
        if (value != null) args.Add(value);
        var (code, o, e) = Cli([.. args]);
        Assert.True(code == 2, $"{string.Join(' ', args)} -> {code}: {e}");
        Assert.Equal("", o);
        Assert.Contains(option, e);
        Assert.Single(e.Trim().Split('\n'));
    }
}
