using System.Text;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Robustness;

/// <summary>
/// config.json parsing on mutated configs of every fixture family (fixed seed): ModelConfig.Load must give a valid
/// configuration or a one-line ModelConfigException naming the file and key. A share of the accepted configs is then
/// loaded with the fixture's real weights (binding must match shapes or fail with a typed error) and run for a few tokens.
/// </summary>
public class ConfigFuzzTests(ITestOutputHelper output)
{
    static void CheckInvariants(ModelConfig c)
    {
        if (c.NLayers <= 0 || c.DModel <= 0 || c.NHeads <= 0 || c.NKvHeads <= 0 || c.HeadDim <= 0 || c.DMlp <= 0 || c.VocabSize <= 0 || c.ContextLength <= 0)
            throw new InvalidOperationException("non-positive dimension accepted");
        if (c.NHeads % c.NKvHeads != 0) throw new InvalidOperationException("n_kv_heads does not divide n_heads");
        if (c.NLayers > ModelConfig.MaxLayers) throw new InvalidOperationException($"{c.NLayers} layers accepted");
        if (!(c.NormEps > 0) || !float.IsFinite(c.AttnScale)) throw new InvalidOperationException("bad eps or attention scale accepted");
        if (c.Positions == PositionKind.Rotary && (c.RotaryDim <= 0 || c.RotaryDim > c.HeadDim || c.RotaryDim % 2 != 0))
            throw new InvalidOperationException($"rotary dim {c.RotaryDim} accepted");
    }

    [Fact]
    public void MutatedConfigs()
    {
        using var dir = TempDir.InMemory();
        var r = new Random(4242);
        var outcomes = new FuzzOutcomes("config.json (ModelConfig.Load)");
        var models = new FuzzOutcomes("config.json + weights (Model.Load and a 3-token run)");
        var fixtures = TestPaths.RandomFixtures;
        var bases = fixtures.Select(f => File.ReadAllText(Path.Combine(TestPaths.Fixture(f), "config.json"))).ToArray();
        // One folder per fixture whose model.safetensors is a link to the fixture's (no copy); config.json is rewritten per case.
        var folders = new string[fixtures.Length];
        for (int k = 0; k < fixtures.Length; k++)
        {
            folders[k] = Path.Combine(dir.Path, fixtures[k]);
            Directory.CreateDirectory(folders[k]);
            File.CreateSymbolicLink(Path.Combine(folders[k], "model.safetensors"), Path.Combine(TestPaths.Fixture(fixtures[k]), "model.safetensors"));
        }
        for (int i = 0, n = FuzzLog.Scaled(10_000); i < n; i++)
        {
            int k = r.Next(bases.Length);
            string path = Path.Combine(folders[k], "config.json");
            byte[] bytes = r.Next(10) switch
            {
                < 7 => Encoding.UTF8.GetBytes(Mutate.Json(bases[k], r)),
                < 9 => Mutate.Bytes(Encoding.UTF8.GetBytes(bases[k]), r),
                _ => r.Next(3) switch
                {
                    0 => Encoding.UTF8.GetBytes(Mutate.Deep(r, 1 + r.Next(200))),
                    1 => [0xEF, 0xBB, 0xBF, .. Encoding.UTF8.GetBytes(bases[k])],
                    _ => [.. Encoding.UTF8.GetBytes(bases[k])[..^1], 0xC3, 0x28, (byte)'}'],
                },
            };
            File.WriteAllBytes(path, bytes);
            ModelConfig? cfg = null;
            outcomes.Run(() => Encoding.UTF8.GetString(bytes), () => { cfg = ModelConfig.Load(path); CheckInvariants(cfg); },
                e => e is not ModelConfigException ? "not a ModelConfigException" : !e.Message.StartsWith(path) ? "message does not name the file" : FuzzOutcomes.OneLine(e));
            if (cfg != null && (i % 3 == 0))
            {
                var rr = new Random(i);
                models.Run(() => Encoding.UTF8.GetString(bytes), () =>
                {
                    using var model = Model.Load(folders[k]);
                    using var session = new Session(model, new SessionOptions { Capacity = Math.Min(4, model.Config.ContextLength), Backend = rr.Next(2) == 0 ? "cpu" : "cpu-ref" });
                    int n = Math.Min(3, session.Capacity);
                    var tokens = Enumerable.Range(0, n).Select(_ => rr.Next(model.Config.VocabSize)).ToArray();
                    session.Run(tokens);
                }, e => e is ModelConfigException or ModelFormatException ? FuzzOutcomes.OneLine(e) : $"{e.GetType().Name}, expected a model file error");
            }
        }
        outcomes.Report(output, FuzzLog.Scaled(10_000));
        models.Report(output, FuzzLog.Scaled(500));
    }

    [Theory]
    [InlineData("\"n_layer\": 2147483647, \"n_embd\": 1, \"n_head\": 1", "n_layer")]
    [InlineData("\"n_layer\": 100000, \"n_embd\": 8, \"n_head\": 1", "n_layer")]
    [InlineData("\"n_layer\": 1, \"n_embd\": 2147483647, \"n_head\": 1", "too large")]
    [InlineData("\"n_layer\": 1, \"n_embd\": 64, \"n_head\": 4, \"vocab_size\": 2147483647", "too large")]
    [InlineData("\"n_layer\": 1, \"n_embd\": 64, \"n_head\": 4, \"n_positions\": -5", "n_positions")]
    [InlineData("\"n_layer\": 1, \"n_embd\": 64, \"n_head\": 0", "n_head")]
    [InlineData("\"n_layer\": 1, \"n_embd\": 64, \"n_head\": 4, \"layer_norm_epsilon\": 1e400", "layer_norm_epsilon")]
    public void AbsurdSizesAreRefusedBeforeAnyAllocation(string members, string fragment)
    {
        using var dir = new TempDir();
        string path = dir.File("config.json");
        File.WriteAllText(path, "{\"model_type\": \"gpt2\", " + members + "}");
        var e = Assert.Throws<ModelConfigException>(() => ModelConfig.Load(path));
        Assert.Contains(fragment, e.Message);
        Assert.StartsWith(path, e.Message);
    }
}
