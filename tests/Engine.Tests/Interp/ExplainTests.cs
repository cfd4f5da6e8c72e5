using System.Globalization;
using System.Text.Json;
using Engine.Interp;
using Engine.Interp.Explain;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>engine explain: top contexts against brute force, resume, weight logits, ablation effect, CLI and report.</summary>
public class ExplainTests
{
    static Corpus RandomCorpus(int vocab, int context, int? bos = null, int seed = 7)
    {
        var rng = new Random(seed);
        var docs = new List<CorpusDocument>();
        foreach (int len in new[] { 70, 23, 5, 41, 1, 64 })
            docs.Add(new CorpusDocument($"doc{docs.Count}", Enumerable.Range(0, len).Select(_ => rng.Next(vocab)).ToArray()));
        return Corpus.FromDocuments(docs, context, bos);
    }

    static float[] RandomDirection(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    static List<Feature> Features(ModelConfig c) =>
    [
        new NeuronFeature(0, 3),
        new NeuronFeature(c.NLayers - 1, c.DMlp - 1),
        new DirectionFeature(HookPoints.Name(HookKind.ResidPost, 1), RandomDirection(c.DModel, 1), "resid-dir"),
        new DirectionFeature(HookPoints.Name(HookKind.Z, 0), RandomDirection(c.NHeads * c.HeadDim, 2), "z-dir"),
    ];

    [Theory]
    [InlineData("gpt2", null)]
    [InlineData("llama", 1)]
    [InlineData("gpt_neox", null)]
    public void TopContextsAreTheBruteForceMaxima(string fixture, int? bos)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var c = model.Config;
        var corpus = RandomCorpus(c.VocabSize, 16, bos);
        var features = Features(c);
        using var s = new Session(model, new SessionOptions { Capacity = 16, AllLogits = false });
        var r = FeatureExplainer.Run(s, corpus, features, new ExplainOptions { Top = 5, EffectWindows = 0 });
        Assert.True(r.Complete);
        for (int i = 0; i < features.Count; i++)
        {
            var all = FeatureExplainer.AllActivations(s, corpus, features[i]);
            // brute force: every window's first maximal position, sorted by value (desc) then window
            var expected = all.Select((a, w) =>
            {
                int best = -1;
                for (int t = 0; t < a.Length; t++) if (!float.IsNaN(a[t]) && (best < 0 || a[t] > a[best])) best = t;
                return (Window: w, Pos: best, Value: best < 0 ? float.NaN : a[best]);
            }).Where(x => x.Pos >= 0).OrderByDescending(x => x.Value).ThenBy(x => x.Window).Take(5).ToList();
            var got = r.Features[i].Top;
            Assert.Equal(expected.Count, got.Count);
            for (int k = 0; k < got.Count; k++)
            {
                Assert.Equal(expected[k].Window, got[k].Window);
                Assert.Equal(expected[k].Pos, got[k].MaxPosition);
                Assert.Equal(expected[k].Value, got[k].Value);
                Assert.Equal(all[got[k].Window], got[k].Activations);
                Assert.Equal(corpus.Windows[got[k].Window].Tokens, got[k].Tokens);
            }
            var finite = all.SelectMany(a => a).Where(v => !float.IsNaN(v)).ToArray();
            Assert.Equal(finite.Length, r.Features[i].Stats.Positions);
            Assert.Equal(finite.Max(), r.Features[i].Stats.Max);
            Assert.Equal(finite.Average(v => (double)v), r.Features[i].Stats.Mean, 1e-9);
        }
        if (bos != null) Assert.All(r.Features.SelectMany(f => f.Top), t => Assert.True(t.MaxPosition > 0 && float.IsNaN(t.Activations[0])));
    }

    [Fact]
    public void ResumeAfterAnInterruptionGivesTheUninterruptedResult()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        var corpus = RandomCorpus(model.Config.VocabSize, 12);
        var features = Features(model.Config);
        using var s = new Session(model, new SessionOptions { Capacity = 12, AllLogits = false });
        using var tmp = new TempDir();
        var opts = new ExplainOptions { Top = 4, EffectWindows = 3, LogitTop = 5 };
        var full = FeatureExplainer.Run(s, corpus, features, opts);

        // 1. a clean stop after 7 windows (state written at the stop), then resume
        string state = tmp.File("state.json");
        var part = FeatureExplainer.Run(s, corpus, features, opts with { StatePath = state, StopAfter = 7, CheckpointEvery = 3 });
        Assert.False(part.Complete);
        Assert.Equal(7, part.WindowsDone);
        Assert.Null(part.Features[0].Logits);
        var resumed = FeatureExplainer.Run(s, corpus, features, opts with { StatePath = state, Resume = true, CheckpointEvery = 3 });
        Assert.Equal(7, resumed.ResumedFrom);
        AssertSame(full, resumed);

        // 2. a crash between checkpoints (the process dies in window 11; the last checkpoint is at 9): resume redoes 9, 10
        string state2 = tmp.File("state2.json");
        Assert.Throws<InvalidOperationException>(() => FeatureExplainer.Run(s, corpus, features, opts with
        {
            StatePath = state2, CheckpointEvery = 3, Progress = (done, _) => { if (done == 11) throw new InvalidOperationException("killed"); },
        }));
        s.Hooks.Clear();
        Assert.Equal(9, JsonDocument.Parse(File.ReadAllText(state2)).RootElement.GetProperty("windows_done").GetInt32());
        var again = FeatureExplainer.Run(s, corpus, features, opts with { StatePath = state2, Resume = true });
        Assert.Equal(9, again.ResumedFrom);
        AssertSame(full, again);

        // 3. a state of another run is refused
        var ex = Assert.Throws<UsageException>(() => FeatureExplainer.Run(s, corpus, features, opts with { Top = 3, StatePath = state2, Resume = true }));
        Assert.Contains("different run", ex.Message);
    }

    static void AssertSame(ExplainResult a, ExplainResult b)
    {
        Assert.True(b.Complete);
        Assert.Equal(a.Features.Count, b.Features.Count);
        for (int i = 0; i < a.Features.Count; i++)
        {
            var x = a.Features[i];
            var y = b.Features[i];
            Assert.Equal(x.Stats, y.Stats);            // sums bit for bit
            Assert.Equal(x.Top.Count, y.Top.Count);
            for (int k = 0; k < x.Top.Count; k++)
            {
                Assert.Equal(x.Top[k].Window, y.Top[k].Window);
                Assert.Equal(x.Top[k].MaxPosition, y.Top[k].MaxPosition);
                Assert.Equal(x.Top[k].Value, y.Top[k].Value);
                Assert.Equal(x.Top[k].Activations, y.Top[k].Activations);
            }
            Assert.Equal(x.Logits?.Promoted, y.Logits?.Promoted);
            Assert.Equal(x.Effect?.MeanKl, y.Effect?.MeanKl);
        }
    }

    [Theory]
    [InlineData("gpt2")]       // LayerNorm: v centred
    [InlineData("llama")]      // RMSNorm
    [InlineData("gemma")]      // RMSNorm with 1 + w
    public void PromotedTokensAreTheTopOfTheUnembeddedOutputVector(string fixture)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var c = model.Config;
        var w = model.Weights;
        int layer = c.NLayers - 1, neuron = 5;
        var (v, _, _) = FeatureExplainer.OutputVector(model, new NeuronFeature(layer, neuron));
        // independent: W_out[:, i] read element by element, then W_U (w_ln ⊙ v')
        var lin = w.Layers[layer].MlpOut;
        var col = Enumerable.Range(0, c.DModel).Select(o => (double)InterpMath.Weight(lin, o, neuron)).ToArray();
        Assert.Equal(col, v!);
        double mean = c.Norm == NormKind.LayerNorm ? col.Average() : 0;
        var x = Enumerable.Range(0, c.DModel).Select(i => (w.FinalNormWeight[i] + (double)c.NormWeightOffset) * (col[i] - mean)).ToArray();
        var logits = Enumerable.Range(0, c.VocabSize).Select(id => Enumerable.Range(0, c.DModel).Sum(i => InterpMath.Weight(w.Unembed, id, i) * x[i])).ToArray();
        var wl = FeatureExplainer.WeightBasedLogits(model, v!, "test", 8);
        var top = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).Take(8).ToArray();
        var bottom = Enumerable.Range(0, logits.Length).OrderBy(i => logits[i]).ThenBy(i => i).Take(8).ToArray();
        Assert.Equal(top, wl.Promoted.Select(p => p.Id));
        Assert.Equal(bottom, wl.Suppressed.Select(p => p.Id));
        for (int k = 0; k < 8; k++) Assert.Equal(logits[top[k]], wl.Promoted[k].Value, 1e-9);

        // a direction in the residual stream equal to that vector gives the same logits
        var dir = new DirectionFeature(HookPoints.Name(HookKind.ResidPost, layer), col.Select(z => (float)z).ToArray(), "d");
        var (v2, _, _) = FeatureExplainer.OutputVector(model, dir);
        var wl2 = FeatureExplainer.WeightBasedLogits(model, v2!, "test", 8);
        Assert.Equal(wl.Promoted.Select(p => p.Id), wl2.Promoted.Select(p => p.Id));
    }

    [Fact]
    public void AUnitDirectionInHookPostIsTheNeuron()
    {
        using var model = Model.Load(TestPaths.Fixture("llama"));
        var c = model.Config;
        var unit = new float[c.DMlp];
        unit[9] = 1;
        Feature neuron = new NeuronFeature(1, 9), dir = new DirectionFeature(HookPoints.Name(HookKind.MlpPost, 1), unit, "e9");
        var corpus = RandomCorpus(c.VocabSize, 10);
        using var s = new Session(model, new SessionOptions { Capacity = 10, AllLogits = false });
        var r = FeatureExplainer.Run(s, corpus, [neuron, dir], new ExplainOptions { Top = 3, EffectWindows = 2, LogitTop = 4 });
        var (a, b) = (r.Features[0], r.Features[1]);
        Assert.Equal(a.Top.Select(t => (t.Window, t.MaxPosition, t.Value)), b.Top.Select(t => (t.Window, t.MaxPosition, t.Value)));
        Assert.Equal(a.Logits!.Promoted.Select(p => p.Id), b.Logits!.Promoted.Select(p => p.Id));
        // zeroing the neuron = projecting out e_i
        Assert.Equal(a.Effect!.MeanKl, b.Effect!.MeanKl, 12);
        Assert.True(a.Effect.MeanKl > 0 && a.Effect.MaxKl >= a.Effect.MeanKl);
        Assert.Equal(20, a.Effect.Positions);
        // probability changes sum to ~0 over the vocabulary; the top increase is positive
        Assert.True(a.Effect.Increased[0].Value >= 0 && a.Effect.Decreased[0].Value <= 0);
    }

    [Fact]
    public void AblationKlMatchesTwoPlainRuns()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        int[] prompt = [3, 99, 14, 250, 7];
        var f = new NeuronFeature(1, 11);
        using var s = new Session(model, new SessionOptions { Capacity = 5 });
        var e = FeatureExplainer.MeasureAblation(s, [prompt], [f], 3, "p")[0];
        int V = model.Config.VocabSize;
        var clean = s.Run(prompt).ToArray();
        float[] abl;
        using (s.Hooks.Add(HookKind.MlpPost, 1, tap => { for (int t = 0; t < 5; t++) tap.Row(t)[11] = 0; })) abl = s.Run(prompt).ToArray();
        double kl = 0;
        for (int t = 0; t < 5; t++)
        {
            var pc = Engine.Cli.Common.Softmax(clean.AsSpan(t * V, V));
            var pa = Engine.Cli.Common.Softmax(abl.AsSpan(t * V, V));
            for (int v = 0; v < V; v++) kl += pc[v] * Math.Log(pc[v] / pa[v]);
        }
        Assert.Equal(kl / 5, e.MeanKl, 1e-9);
    }

    [Fact]
    public void CliExplainJsonReportResumeAndNoTokenizer()
    {
        using var fx = new Fixture("gpt2");     // vocabulary 512, no tokenizer: text is read as UTF-8 bytes
        using var tmp = new TempDir();
        Directory.CreateDirectory(tmp.File("corpus"));
        File.WriteAllText(tmp.File("corpus/a.txt"), "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n");
        File.WriteAllText(tmp.File("corpus/b.ids"), "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 300, 301, 302, 303");
        string[] args = ["explain", "--model", fx.Folder, "--corpus", tmp.File("corpus"), "--neuron", "0:3,2:7", "--context", "16", "--top", "4", "--effect-windows", "2"];
        var (code, o, e) = Cli([.. args, "--json"]);
        Assert.True(code == 0, e);
        var doc = JsonDocument.Parse(o).RootElement;
        Assert.Equal("explain", doc.GetProperty("command").GetString());
        Assert.Contains("utf-8 bytes", doc.GetProperty("corpus").GetProperty("tokenization").GetString());
        var f0 = doc.GetProperty("features")[0];
        Assert.Equal("L0N3", f0.GetProperty("label").GetString());
        var ctx = f0.GetProperty("top_contexts");
        Assert.Equal(4, ctx.GetArrayLength());
        double prev = double.PositiveInfinity;
        foreach (var cx in ctx.EnumerateArray())
        {
            double v = cx.GetProperty("value").GetDouble();
            Assert.True(v <= prev);
            prev = v;
            int p = cx.GetProperty("max_position").GetInt32();
            Assert.Equal(v, cx.GetProperty("activations")[p].GetDouble());
            Assert.Equal(cx.GetProperty("activations").EnumerateArray().Max(a => a.GetDouble()), v);
            Assert.StartsWith("<", cx.GetProperty("token_texts")[0].GetString());    // no tokenizer: <id>
        }
        Assert.Equal(10, f0.GetProperty("output_logits").GetProperty("promoted").GetArrayLength());
        Assert.True(f0.GetProperty("ablation").GetProperty("mean_kl").GetDouble() >= 0);

        // resumable through the CLI: stop after 2 windows, resume, same features as the uninterrupted run
        string state = tmp.File("s.json");
        (code, _, e) = Cli([.. args, "--state", state, "--stop-after", "2", "--json"]);
        Assert.True(code == 0, e);
        Assert.False(JsonDocument.Parse(File.ReadAllText(state)).RootElement.GetProperty("windows_done").GetInt32() == 0);
        (code, _, e) = Cli([.. args, "--state", state, "--json"]);
        Assert.Equal(2, code);
        Assert.Contains("--resume", e);
        var (code2, o2, e2) = Cli([.. args, "--state", state, "--resume", "--json"]);
        Assert.True(code2 == 0, e2);
        var doc2 = JsonDocument.Parse(o2).RootElement;
        Assert.Equal(2, doc2.GetProperty("resumed_from").GetInt32());
        Assert.Equal(doc.GetProperty("features").GetRawText(), doc2.GetProperty("features").GetRawText());

        // report folder: contexts highlighted in the HTML, CSV of every context token equal to the JSON
        string dir = tmp.File("report");
        (code, o, e) = Cli([.. args, "--out", dir]);
        Assert.True(code == 0, e);
        Assert.Contains("top contexts", o);
        var html = ReportsTests.AssertHtml(dir, "class=\"ctx\"", "class=\"t max\"", "L2N7: top-activating contexts");
        ReportsTests.AssertPng(Path.Combine(dir, "figure.png"));
        ReportsTests.AssertPng(Path.Combine(dir, "figure-L2N7.png"));
        var rows = ReportsTests.ReadCsv(Path.Combine(dir, "context_tokens.csv")).Where(r => r["feature"] == "L0N3" && r["rank"] == "0").ToList();
        var acts = ctx[0].GetProperty("activations").EnumerateArray().Select(a => a.GetDouble()).ToArray();
        Assert.Equal(acts, rows.Select(r => double.Parse(r["activation"], CultureInfo.InvariantCulture)));
        Assert.Single(rows, r => r["is_max"] == "true");
    }

    [Fact]
    public void DefaultSampleCorpusWithATokenizer()
    {
        Assert.True(Corpus.SampleFiles.Count >= 5);
        using var fx = new Fixture("gpt2-vocab50257");
        var (code, o, e) = Cli("explain", "--model", fx.Folder, "--neuron", "1:2", "--top", "3", "--effect-windows", "1", "--logit-top", "3", "--json");
        Assert.True(code == 0, e);
        var doc = JsonDocument.Parse(o).RootElement;
        Assert.Contains("sample corpus", doc.GetProperty("corpus").GetProperty("origin").GetString());
        Assert.True(doc.GetProperty("corpus").GetProperty("windows").GetInt32() > 50);
        var top = doc.GetProperty("features")[0].GetProperty("top_contexts")[0];
        Assert.DoesNotContain(top.GetProperty("token_texts").EnumerateArray(), t => System.Text.RegularExpressions.Regex.IsMatch(t.GetString()!, @"^<\d+>$"));
        Assert.Equal(3, doc.GetProperty("features")[0].GetProperty("output_logits").GetProperty("promoted").GetArrayLength());
    }

    [Theory]
    [InlineData("--neuron", "9:0")]
    [InlineData("--neuron", "x")]
    [InlineData("--context", "0")]
    [InlineData("--hook", "blocks.0.hook_resid_post")]
    [InlineData("--resume", null)]
    [InlineData("--corpus", "/no/such/corpus")]
    public void BadExplainOptionsAreUsageErrors(string option, string? value)
    {
        using var fx = new Fixture("gpt2");
        string[] args = option == "--neuron" ? ["explain", "--model", fx.Folder, option, value!] :
            value == null ? ["explain", "--model", fx.Folder, "--neuron", "0:1", option] : ["explain", "--model", fx.Folder, "--neuron", "0:1", option, value];
        var (code, o, e) = Cli(args);
        Assert.Equal(2, code);
        Assert.Equal("", o);
        Assert.Contains(option, e);
    }

    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Engine.Cli.Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }
}
