using System.Text.Json;
using System.Xml.Linq;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>The CLI forms that tools/check_cli.py drives, in-process, plus the options around them.</summary>
public class InterpCliTests
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
        var (code, o, e) = Cli(args);
        Assert.True(code == 0, $"engine {string.Join(' ', args)} -> {code}: {e}");
        using var doc = JsonDocument.Parse(o);   // exactly one JSON document: Parse refuses trailing text
        return doc.RootElement.Clone();
    }

    static string Ids(JsonElement e) => string.Join(",", Fixture.Ints(e));

    [Theory]
    [InlineData("gpt2")]
    [InlineData("gpt_neox")]
    [InlineData("llama-bf16")]
    public void CheckCliFormsMatchTheFixture(string fixture)
    {
        using var fx = new Fixture(fixture);
        var it = fx.Interp;
        string m = fx.Folder;

        var ll = it.GetProperty("logit_lens");
        var lens = Json("lens", "--model", m, "--tokens", Ids(ll.GetProperty("tokens")), "--top", ll.GetProperty("k").GetRawText(), "--json");
        Assert.Equal("lens", lens.GetProperty("command").GetString());
        Assert.Equal(1, lens.GetProperty("schema_version").GetInt32());
        Assert.Equal(Fixture.Doubles(ll.GetProperty("top_ids")), Fixture.Doubles(lens.GetProperty("top_ids")));
        InterpFixtureTests.Near(Fixture.Doubles(lens.GetProperty("top_probs")), ll.GetProperty("top_probs"), 1e-5, "lens top_probs");

        var rp = it.GetProperty("resid_pre_patching");
        var patch = Json("patch", "--model", m, "--clean-tokens", Ids(it.GetProperty("clean_tokens")), "--corrupt-tokens", Ids(it.GetProperty("corrupt_tokens")),
            "--answer", it.GetProperty("answer_token").GetRawText(), "--wrong", it.GetProperty("wrong_token").GetRawText(), "--act", "resid_pre", "--json");
        Assert.Equal("resid_pre", patch.GetProperty("act").GetString());
        Assert.Equal("denoise", patch.GetProperty("direction").GetString());
        InterpFixtureTests.Near(Fixture.Doubles(patch.GetProperty("patched")), rp.GetProperty("patched"), 1e-4, "patched");
        InterpFixtureTests.Near(Fixture.Doubles(patch.GetProperty("normalized")), rp.GetProperty("normalized"), 1e-3, "normalized");
        InterpFixtureTests.Near(patch.GetProperty("clean_metric").GetDouble(), rp.GetProperty("clean_metric"), 1e-4, "clean_metric");

        var ha = it.GetProperty("head_zero_ablation");
        var ablate = Json("ablate", "--model", m, "--tokens", Ids(ha.GetProperty("tokens")), "--target", ha.GetProperty("target_token").GetRawText(), "--heads", "all", "--mode", "zero", "--json");
        Assert.Equal("zero", ablate.GetProperty("mode").GetString());
        InterpFixtureTests.Near(Fixture.Doubles(ablate.GetProperty("delta")), ha.GetProperty("delta"), 1e-4, "delta");
        InterpFixtureTests.Near(ablate.GetProperty("base").GetDouble(), ha.GetProperty("base"), 1e-4, "base");

        var ct = it.GetProperty("causal_trace");
        var trace = Json("trace", "--model", m, "--tokens", Ids(ct.GetProperty("tokens")), "--subject-positions", Ids(ct.GetProperty("subject_positions")),
            "--target", ct.GetProperty("target_token").GetRawText(), "--noise", Path.Combine(m, ct.GetProperty("noise_file").GetString()!), "--window", ct.GetProperty("window").GetRawText(), "--json");
        foreach (var k in new[] { "resid", "mlp", "attn", "clean_prob", "corrupt_prob" })
            InterpFixtureTests.Near(Fixture.Doubles(JsonDocument.Parse($"[{trace.GetProperty(k).GetRawText()}]").RootElement), JsonDocument.Parse($"[{ct.GetProperty(k).GetRawText()}]").RootElement, 1e-5, "trace " + k);
        Assert.StartsWith("file ", trace.GetProperty("noise_source").GetString());
        Assert.True(trace.TryGetProperty("indirect_effect", out var ie) && ie.TryGetProperty("mlp", out _));

        var dl = it.GetProperty("direct_logit_attribution");
        var dla = Json("dla", "--model", m, "--tokens", Ids(dl.GetProperty("tokens")), "--target", dl.GetProperty("target_token").GetRawText(), "--json");
        InterpFixtureTests.Near(Fixture.Doubles(dla.GetProperty("heads")), dl.GetProperty("heads"), 1e-4, "dla heads");
        InterpFixtureTests.Near(Fixture.Doubles(dla.GetProperty("mlp")), dl.GetProperty("mlp"), 1e-4, "dla mlp");
        foreach (var k in new[] { "attn_bias", "embed", "ln_final_bias_term", "logit", "sum_of_parts" }) Assert.True(dla.TryGetProperty(k, out _), k);
    }

    [Fact]
    public void OutputFilesPicturesAndTables()
    {
        using var fx = new Fixture("gpt2");
        string m = fx.Folder;
        string dir = Path.Combine(Path.GetTempPath(), "interp-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string json = Path.Combine(dir, "t.json"), svg = Path.Combine(dir, "t.svg");
            string[] trace = ["trace", "--model", m, "--tokens", "1,45,46,47,200,301,5,77", "--subject-positions", "1,2,3", "--window", "3", "--samples", "2", "--json-out", json, "--svg", svg];
            var (code, o, e) = Cli(trace);
            Assert.True(code == 0, e);
            Assert.Contains("causal trace", o);                 // readable table without --json
            var doc = JsonDocument.Parse(File.ReadAllText(json)).RootElement;
            Assert.Contains("subject", doc.GetProperty("noise_source").GetString());
            Assert.True(doc.GetProperty("noise_std").GetDouble() > 0);
            var x = XDocument.Parse(File.ReadAllText(svg));     // well-formed SVG
            Assert.Equal("svg", x.Root!.Name.LocalName);
            Assert.Contains("Restored MLP", File.ReadAllText(svg));
            // refuses to overwrite without --force, then overwrites with it
            (code, _, e) = Cli(trace);
            Assert.Equal(2, code);
            Assert.Contains("--json-out", e);
            (code, _, e) = Cli([.. trace, "--force"]);
            Assert.True(code == 0, e);

            foreach (var (cmd, extra) in new (string, string[])[]
            {
                ("lens", ["--tokens", "1,45,46,47", "--target", "491"]),
                ("patch", ["--clean-tokens", "1,45,46,47", "--corrupt-tokens", "1,88,89,90", "--act", "z", "--per-position", "--metric", "normalized"]),
                ("patch", ["--clean-tokens", "1,45,46,47", "--corrupt-tokens", "1,88,89,90", "--act", "pattern", "--direction", "noise", "--metric", "prob"]),
                ("ablate", ["--tokens", "1,45,46,47", "--heads", "0:1,1:*", "--neurons", "2:5", "--mode", "mean"]),
                ("dla", ["--tokens", "1,45,46,47"]),
            })
            {
                string stem = Path.Combine(dir, cmd + Guid.NewGuid().ToString("N"));
                (code, o, e) = Cli([cmd, "--model", m, .. extra, "--svg", stem + ".svg", "--png", stem + ".png", "--json"]);
                Assert.True(code == 0, $"{cmd}: {e}");
                using var _ = JsonDocument.Parse(o);
                XDocument.Parse(File.ReadAllText(stem + ".svg"));
                ReportsTests.AssertPng(stem + ".png");
                (code, o, e) = Cli([cmd, "--model", m, .. extra]);
                Assert.True(code == 0 && o.Length > 0, $"{cmd} table: {e}");
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("--act", "resid_middle", "patch")]
    [InlineData("--metric", "kl", "patch")]
    [InlineData("--direction", "sideways", "patch")]
    [InlineData("--mode", "resample", "ablate")]
    [InlineData("--heads", "7:0", "ablate")]
    [InlineData("--neurons", "x", "ablate")]
    [InlineData("--kinds", "embed", "trace")]
    [InlineData("--target", "99999", "dla")]
    public void BadValuesAreUsageErrorsNamingTheOption(string option, string value, string command)
    {
        using var fx = new Fixture("gpt2");
        string[] args = command switch
        {
            "patch" => ["patch", "--model", fx.Folder, "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,4,3", option, value],
            "ablate" => ["ablate", "--model", fx.Folder, "--tokens", "1,2,3", option, value],
            "trace" => ["trace", "--model", fx.Folder, "--tokens", "1,2,3", "--subject-positions", "1", option, value],
            _ => [command, "--model", fx.Folder, "--tokens", "1,2,3", option, value],
        };
        var (code, o, e) = Cli(args);
        Assert.Equal(2, code);
        Assert.Equal("", o);
        Assert.Contains(option, e);
        Assert.Single(e.Trim().Split('\n'));
    }

    [Fact]
    public void ParallelResidualModelsRefuseResidMidAndLengthsMustMatch()
    {
        using var fx = new Fixture("gpt_neox");
        var (code, _, e) = Cli("patch", "--model", fx.Folder, "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,4,3", "--act", "resid_mid");
        Assert.Equal(2, code);
        Assert.Contains("resid_mid", e);
        (code, _, e) = Cli("patch", "--model", fx.Folder, "--clean-tokens", "1,2,3", "--corrupt-tokens", "1,4");
        Assert.Equal(2, code);
        Assert.Contains("--corrupt-tokens", e);
    }

    [Fact]
    public void TextFormsUseTheTokenizer()
    {
        using var fx = new Fixture("gpt2-vocab50257");
        string m = fx.Folder;
        var t = Json("trace", "--model", m, "--prompt", "<|endoftext|>The capital of France is the city", "--subject", "France", "--window", "2", "--samples", "2", "--kinds", "resid", "--json");
        Assert.Equal([4], Fixture.Ints(t.GetProperty("subject_positions")));
        Assert.Equal(" France", t.GetProperty("token_texts")[4].GetString());
        var p = Json("patch", "--model", m, "--clean-prompt", "<|endoftext|>The capital of France is the city",
            "--corrupt-prompt", "<|endoftext|>The capital of Germany is the city", "--answer", " of", "--act", "mlp_out", "--json");
        Assert.Equal(Fixture.Ints(fx.Interp.GetProperty("clean_tokens")), Fixture.Ints(p.GetProperty("clean_tokens")));
        Assert.Equal(286, p.GetProperty("answer_token").GetInt32());
        var (code, _, e) = Cli("trace", "--model", m, "--prompt", "The capital of France", "--subject", "Berlin", "--samples", "1");
        Assert.Equal(2, code);
        Assert.Contains("--subject", e);
    }
}
