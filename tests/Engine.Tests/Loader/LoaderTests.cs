using System.Text.Json;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Loader;

public class LoaderTests
{
    static float[] Logits(string folder, int[] tokens)
    {
        using var model = Model.Load(folder);
        using var s = new Session(model);
        return s.Run(tokens).ToArray();
    }

    static readonly int[] Prompt = [1, 45, 46, 47, 200, 301, 5, 77];

    /// <summary>Reads every tensor of a file into writer entries (keeping dtypes).</summary>
    static List<SafeTensorWriter.Entry> Entries(string file)
    {
        using var f = SafeTensorFile.Open(file);
        return f.Tensors.Values.OrderBy(t => t.FileOffset).Select(t =>
        {
            var bytes = f.View(t).AsBytes().ToArray();
            return new SafeTensorWriter.Entry(t.Name, t.Shape, t.DType, bytes);
        }).ToList();
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    [InlineData("llama-bf16")]
    public void ShardedCheckpointGivesTheSameLogits(string fixture)
    {
        using var dir = new TempDir();
        string m = dir.CopyModel(fixture);
        string single = Path.Combine(m, "model.safetensors");
        var entries = Entries(single);
        File.Delete(single);
        var shard1 = entries.Where((_, i) => i % 2 == 0).ToList();
        var shard2 = entries.Where((_, i) => i % 2 == 1).ToList();
        SafeTensorWriter.Write(Path.Combine(m, "model-00001-of-00002.safetensors"), shard1);
        SafeTensorWriter.Write(Path.Combine(m, "model-00002-of-00002.safetensors"), shard2);
        var map = shard1.Select(e => (e.Name, "model-00001-of-00002.safetensors")).Concat(shard2.Select(e => (e.Name, "model-00002-of-00002.safetensors")));
        File.WriteAllText(Path.Combine(m, "model.safetensors.index.json"),
            JsonSerializerHelper.Index(map));
        using (var model = Model.Load(m)) Assert.Empty(model.UnusedTensors);
        Assert.Equal(Logits(TestPaths.Fixture(fixture), Prompt), Logits(m, Prompt));
    }

    [Fact]
    public void IndexNamingAMissingShardIsAnError()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.Delete(Path.Combine(m, "model.safetensors"));
        File.WriteAllText(Path.Combine(m, "model.safetensors.index.json"), "{\"weight_map\": {\"transformer.wte.weight\": \"model-00001-of-00009.safetensors\"}}");
        var e = Assert.Throws<ModelFormatException>(() => Model.Load(m));
        Assert.Contains("model-00001-of-00009.safetensors", e.Message);
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama-f16")]
    public void UnalignedTensorsLoadAndGiveTheSameLogits(string fixture)
    {
        using var dir = new TempDir();
        string m = dir.CopyModel(fixture);
        string file = Path.Combine(m, "model.safetensors");
        var entries = Entries(file);
        // A 1-element F16 tensor first: every following tensor starts 2 bytes off its natural alignment.
        entries.Insert(0, SafeTensorWriter.Convert("aaa.padding", [1], [0f], DType.F16));
        SafeTensorWriter.Write(file, entries);
        using (var f = SafeTensorFile.Open(file))
            Assert.Contains(f.Tensors.Values, t => t.DType == DType.F32 || t.DType == DType.F16 ? (f.DataStart + (t.FileOffset - f.DataStart)) % 4 != 0 : false);
        using (var model = Model.Load(m)) Assert.Equal(["aaa.padding"], model.UnusedTensors);
        Assert.Equal(Logits(TestPaths.Fixture(fixture), Prompt), Logits(m, Prompt));
    }

    [Fact]
    public void RepoIdResolvesInTheLocalHuggingFaceCache()
    {
        using var dir = new TempDir();
        string hub = Path.Combine(dir.Path, "hub");
        string snap = Path.Combine(hub, "models--tiny-org--tiny-llama", "snapshots", "0123abcd");
        Directory.CreateDirectory(snap);
        foreach (var f in new[] { "config.json", "model.safetensors" }) File.Copy(Path.Combine(TestPaths.Fixture("llama"), f), Path.Combine(snap, f));
        Directory.CreateDirectory(Path.Combine(hub, "models--tiny-org--tiny-llama", "refs"));
        File.WriteAllText(Path.Combine(hub, "models--tiny-org--tiny-llama", "refs", "main"), "0123abcd\n");
        string? old = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        try
        {
            Environment.SetEnvironmentVariable("HF_HUB_CACHE", hub);
            Assert.Equal(Path.GetFullPath(snap), ModelFolder.Resolve("tiny-org/tiny-llama"));
            var e = Assert.Throws<UsageException>(() => ModelFolder.Resolve("tiny-org/not-downloaded"));
            Assert.Contains("not-downloaded", e.Message);
            Assert.Contains("no network", e.Message);
            Assert.Equal(Logits(TestPaths.Fixture("llama"), Prompt), Logits("tiny-org/tiny-llama", Prompt));
        }
        finally { Environment.SetEnvironmentVariable("HF_HUB_CACHE", old); }
    }

    public static IEnumerable<object[]> Fixtures => TestPaths.RandomFixtures.Select(f => new object[] { f });

    /// <summary>config.json resolves to the architecture facts the reference derived (expected.json "summary").</summary>
    [Theory]
    [MemberData(nameof(Fixtures))]
    public void ConfigResolvesToTheReferenceSummary(string fixture)
    {
        using var fx = new Fixture(fixture);
        var c = ModelConfig.Load(Path.Combine(fx.Folder, "config.json"));
        var s = fx.Expected.GetProperty("summary");
        Assert.Equal(s.GetProperty("n_layers").GetInt32(), c.NLayers);
        Assert.Equal(s.GetProperty("d_model").GetInt32(), c.DModel);
        Assert.Equal(s.GetProperty("n_heads").GetInt32(), c.NHeads);
        Assert.Equal(s.GetProperty("n_kv_heads").GetInt32(), c.NKvHeads);
        Assert.Equal(s.GetProperty("d_head").GetInt32(), c.HeadDim);
        Assert.Equal(s.GetProperty("d_mlp").GetInt32(), c.DMlp);
        Assert.Equal(s.GetProperty("vocab_size").GetInt32(), c.VocabSize);
        Assert.Equal(s.GetProperty("norm").GetString(), c.Norm == NormKind.LayerNorm ? "layernorm" : "rmsnorm");
        Assert.Equal(s.GetProperty("gated_mlp").GetBoolean(), c.GatedMlp);
        Assert.Equal(s.GetProperty("rope").GetBoolean(), c.Positions == PositionKind.Rotary);
        if (c.Positions == PositionKind.Rotary) Assert.Equal(s.GetProperty("rotary_dim").GetInt32(), c.RotaryDim);
        Assert.Equal(s.GetProperty("parallel_residual").GetBoolean(), c.ParallelResidual);
        Assert.Equal(s.GetProperty("tied_unembed").GetBoolean(), c.TiedEmbeddings);
        if (s.TryGetProperty("embed_multiplier", out var em)) Assert.Equal((float)em.GetDouble(), c.EmbedScale);
        else Assert.Equal(1f, c.EmbedScale);
    }

    [Fact]
    public void GemmaBf16NormalizerIsComputedInFloat32()
    {
        var c = ModelConfig.Load(Path.Combine(TestPaths.Fixture("gemma-bf16"), "config.json"));
        Assert.Equal(MathF.Sqrt(48f), c.EmbedScale);           // 6.928203, not bf16's 6.9375
        Assert.Equal(1f, c.NormWeightOffset);
        Assert.Equal(ActivationKind.GeluTanh, c.Activation);
    }

    [Fact]
    public void FamilyDefaultsFollowHuggingFace()
    {
        ModelConfig Parse(string json)
        {
            using var doc = JsonDocument.Parse(json);
            return ModelConfig.FromJson(new ConfigReader("config.json", doc.RootElement));
        }
        var neox = Parse("{\"model_type\":\"gpt_neox\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":256}");
        Assert.True(neox.ParallelResidual);
        Assert.Equal(4, neox.RotaryDim);                        // rotary_pct 0.25 of d_head 16
        Assert.Equal(ActivationKind.GeluErf, neox.Activation);
        Assert.Equal(QkvLayout.FusedPerHead, neox.QkvLayout);
        Assert.False(neox.TiedEmbeddings);
        var qwen = Parse("{\"model_type\":\"qwen2\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":100}");
        Assert.True(qwen.QkvBias);
        Assert.False(qwen.OutBias);
        Assert.False(qwen.TiedEmbeddings);
        var mistral = Parse("{\"model_type\":\"mistral\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":1,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":100,\"max_position_embeddings\":32768,\"sliding_window\":4096}");
        Assert.Equal(4096, mistral.ContextLength);
        var llama3 = Parse("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":100,\"rope_theta\":500000.0,\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":32.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192},\"eos_token_id\":[128001,128008]}");
        Assert.Equal("llama3", llama3.RopeScaling!.Type);
        Assert.Equal([128001, 128008], llama3.EosTokenIds);
        var gpt2 = Parse("{\"model_type\":\"gpt2\",\"n_embd\":64,\"n_head\":4,\"n_layer\":2}");
        Assert.Equal(256, gpt2.DMlp);
        Assert.Equal(50257, gpt2.VocabSize);
        Assert.True(gpt2.InputMajorWeights);
        var e = Assert.Throws<ModelConfigException>(() => Parse("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":100}"));
        Assert.Contains("num_key_value_heads", e.Message);
        var e2 = Assert.Throws<ModelConfigException>(() => Parse("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_hidden_layers\":2,\"vocab_size\":10,\"intermediate_size\":100,\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}"));
        Assert.Contains("yarn", e2.Message);
    }

    [Fact]
    public void Llama3RopeScalingMatchesTheHuggingFaceFormula()
    {
        var scaling = new RopeScaling("llama3", 8, 1, 4, 8192);
        var inv = Engine.Kernels.RopeTable.ComputeInverseFrequencies(128, 500000, scaling);
        var plain = Engine.Kernels.RopeTable.ComputeInverseFrequencies(128, 500000, null);
        Assert.Equal(plain[0], inv[0]);                          // highest frequency untouched (wavelength < 2048)
        Assert.Equal(plain[63] / 8, inv[63], 15);                // lowest frequency divided by the factor (wavelength > 8192)
        for (int i = 0; i < 64; i++) Assert.InRange(inv[i], plain[i] / 8 * (1 - 1e-12), plain[i] * (1 + 1e-12));
    }

    [Fact]
    public void ModelFolderAcceptsConfigJsonPath()
    {
        string cfg = Path.Combine(TestPaths.Fixture("gpt2"), "config.json");
        Assert.Equal(Path.GetFullPath(TestPaths.Fixture("gpt2")), ModelFolder.Resolve(cfg));
    }

    [Fact]
    public void SafetensorsRoundTripAllDTypes()
    {
        using var dir = new TempDir();
        float[] data = [1f, -2.5f, 0.1f, 65504f, float.NaN, float.NegativeInfinity];
        string file = dir.File("t.safetensors");
        SafeTensorWriter.Write(file,
        [
            SafeTensorWriter.Convert("f32", [2, 3], data, DType.F32),
            SafeTensorWriter.Convert("f16", [2, 3], data, DType.F16),
            SafeTensorWriter.Convert("bf16", [6], data, DType.BF16),
        ], new Dictionary<string, string> { ["k"] = "v" });
        using var f = SafeTensorFile.Open(file);
        Assert.Equal("v", f.Metadata["k"]);
        Assert.Equal(data, f.View("f32").ToFloatArray());
        var h = f.View("f16").ToFloatArray();
        Assert.Equal(0.099975586f, h[2]);
        Assert.Equal(65504f, h[3]);
        Assert.True(float.IsNaN(h[4]));
        var b = f.View("bf16").ToFloatArray();
        Assert.Equal(-2.5f, b[1]);
        Assert.Equal(0.10009765625f, b[2]);                      // round to nearest even
        Assert.True(float.IsNegativeInfinity(b[5]));
        Assert.Equal(0, (f.DataStart) % 8);
    }
}

static class JsonSerializerHelper
{
    public static string Index(IEnumerable<(string Name, string File)> map)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata"); w.WriteNumber("total_size", 0); w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (n, f) in map) w.WriteString(n, f);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(ms.ToArray());
    }
}
