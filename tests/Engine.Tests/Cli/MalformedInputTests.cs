using System.Text;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Cli;

/// <summary>
/// Bad input gets one line on stderr naming the file, key or argument, and a non-zero exit code
/// (2: arguments/input, 3: model files); never a stack trace or an out-of-range read.
/// </summary>
public class MalformedInputTests
{
    static void AssertError(Support.Cli.Result r, int code, params string[] fragments)
    {
        Assert.True(r.ExitCode == code, $"exit code {r.ExitCode}, expected {code}; stderr: {r.Stderr}");
        string err = r.Stderr.TrimEnd('\n', '\r');
        Assert.StartsWith("engine: error: ", err);
        Assert.DoesNotContain('\n', err);                         // exactly one line
        Assert.DoesNotContain("   at ", err);                     // no stack trace
        foreach (var f in fragments) Assert.Contains(f, err);
    }

    static Support.Cli.Result RunModel(string folder, params string[] extra) =>
        Support.Cli.Run(["run", "--model", folder, "--tokens", "1,2,3", .. extra]);

    /// <summary>A valid 2-tensor file: a F32 [2,2] then a F32 [3].</summary>
    const string TwoTensors = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[16,28]}}";

    string BrokenModel(TempDir dir, string header, int dataBytes, ulong? headerLength = null)
    {
        string m = dir.CopyModel("gpt2");
        TempDir.WriteRawSafetensors(Path.Combine(m, "model.safetensors"), header, new byte[dataBytes], headerLength);
        return m;
    }

    [Fact]
    public void MissingModelFolder()
    {
        var r = RunModel("/definitely/not/here/model");
        AssertError(r, 2, "--model", "/definitely/not/here/model");
    }

    [Fact]
    public void MissingConfig()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.Delete(Path.Combine(m, "config.json"));
        AssertError(RunModel(m), 3, "config.json", "not found");
    }

    [Fact]
    public void MissingWeightsFile()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.Delete(Path.Combine(m, "model.safetensors"));
        AssertError(RunModel(m), 3, "no model.safetensors");
    }

    [Fact]
    public void TruncatedWeightsFile()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("llama");
        string f = Path.Combine(m, "model.safetensors");
        var bytes = File.ReadAllBytes(f);
        File.WriteAllBytes(f, bytes[..(bytes.Length / 2)]);
        AssertError(RunModel(m), 3, "model.safetensors", "beyond the data region", "truncated");
    }

    [Fact]
    public void FileShorterThanTheHeaderLength()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.WriteAllBytes(Path.Combine(m, "model.safetensors"), [1, 2, 3]);
        AssertError(RunModel(m), 3, "model.safetensors", "truncated");
    }

    [Fact]
    public void HeaderLengthBeyondTheFile()
    {
        using var dir = new TempDir();
        AssertError(RunModel(BrokenModel(dir, TwoTensors, 28, headerLength: 5000)), 3, "model.safetensors", "header length 5000 goes beyond the end of the file");
    }

    [Fact]
    public void HugeHeaderLengthIsRefusedBeforeReading()
    {
        using var dir = new TempDir();
        AssertError(RunModel(BrokenModel(dir, TwoTensors, 28, headerLength: ulong.MaxValue - 7)), 3, "model.safetensors", "exceeds the limit");
    }

    [Fact]
    public void OverlappingOffsets()
    {
        using var dir = new TempDir();
        string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]}}";
        AssertError(RunModel(BrokenModel(dir, h, 28)), 3, "model.safetensors", "'a'", "'b'", "overlap");
    }

    [Fact]
    public void OffsetsOutOfRange()
    {
        using var dir = new TempDir();
        string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[100,112]}}";
        AssertError(RunModel(BrokenModel(dir, h, 28)), 3, "tensor 'b'", "data_offsets [100, 112]", "beyond the data region");
    }

    [Fact]
    public void ShapeDisagreesWithByteLength()
    {
        using var dir = new TempDir();
        string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,16]}}";
        AssertError(RunModel(BrokenModel(dir, h, 16)), 3, "tensor 'a'", "needs 24 bytes", "hold 16");
    }

    [Fact]
    public void ShapeProductOverflows()
    {
        using var dir = new TempDir();
        string h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,16]}}";
        AssertError(RunModel(BrokenModel(dir, h, 16)), 3, "tensor 'a'", "overflows");
    }

    [Fact]
    public void UnknownDType()
    {
        using var dir = new TempDir();
        string h = "{\"a\":{\"dtype\":\"Q7\",\"shape\":[4],\"data_offsets\":[0,4]}}";
        AssertError(RunModel(BrokenModel(dir, h, 4)), 3, "tensor 'a'", "unknown dtype 'Q7'");
    }

    [Fact]
    public void HeaderIsNotJson()
    {
        using var dir = new TempDir();
        AssertError(RunModel(BrokenModel(dir, "{\"a\": [1, 2", 8)), 3, "model.safetensors", "not valid JSON");
    }

    [Fact]
    public void HeaderIsNotUtf8()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        var header = new byte[] { (byte)'{', (byte)'"', 0xFF, 0xFE, (byte)'"', (byte)':', (byte)'1', (byte)'}' };
        using (var fs = File.Create(Path.Combine(m, "model.safetensors")))
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Length));
            fs.Write(header);
        }
        AssertError(RunModel(m), 3, "model.safetensors", "JSON");
    }

    [Fact]
    public void DeeplyNestedHeader()
    {
        using var dir = new TempDir();
        string h = new string('[', 10000) + new string(']', 10000);
        AssertError(RunModel(BrokenModel(dir, h, 0)), 3, "model.safetensors", "not valid JSON");
    }

    [Fact]
    public void MissingTensorIsNamed()
    {
        using var dir = new TempDir();
        AssertError(RunModel(BrokenModel(dir, TwoTensors, 28)), 3, "model", "missing tensor 'h.0.ln_1.weight'", "expected shape [64]");
    }

    [Fact]
    public void WrongShapeIsNamed()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("llama");
        Rewrite(Path.Combine(m, "model.safetensors"), "model.norm.weight", newShape: [32, 2]);
        AssertError(RunModel(m), 3, "'model.norm.weight'", "shape [32, 2], expected [64]");
    }

    [Fact]
    public void WrongDTypeIsNamed()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("llama");
        Rewrite(Path.Combine(m, "model.safetensors"), "model.norm.weight", newDType: "I32");
        AssertError(RunModel(m), 3, "'model.norm.weight'", "dtype I32");
    }

    /// <summary>Rewrites one header entry's dtype or shape in place (same byte length).</summary>
    static void Rewrite(string path, string name, long[]? newShape = null, string? newDType = null)
    {
        var bytes = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(bytes, 0);
        var doc = System.Text.Json.Nodes.JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, (int)n))!.AsObject();
        var e = doc[name]!.AsObject();
        if (newShape != null) e["shape"] = new System.Text.Json.Nodes.JsonArray(newShape.Select(x => (System.Text.Json.Nodes.JsonNode?)x).ToArray());
        if (newDType != null) e["dtype"] = newDType;
        var header = Encoding.UTF8.GetBytes(doc.ToJsonString());
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((ulong)header.Length));
        fs.Write(header);
        fs.Write(bytes, 8 + (int)n, bytes.Length - 8 - (int)n);
    }

    [Fact]
    public void UnsupportedModelType()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.WriteAllText(Path.Combine(m, "config.json"), "{\"model_type\": \"bert\", \"hidden_size\": 64}");
        AssertError(RunModel(m), 3, "config.json", "model_type", "unsupported model_type 'bert'");
    }

    [Fact]
    public void ConfigIsNotJson()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        File.WriteAllText(Path.Combine(m, "config.json"), "{\"model_type\": ");
        AssertError(RunModel(m), 3, "config.json", "not valid JSON");
    }

    [Fact]
    public void ConfigValueOfTheWrongType()
    {
        using var dir = new TempDir();
        string m = dir.CopyModel("llama");
        string cfg = File.ReadAllText(Path.Combine(m, "config.json")).Replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": \"three\"");
        File.WriteAllText(Path.Combine(m, "config.json"), cfg);
        AssertError(RunModel(m), 3, "config.json", "'num_hidden_layers'", "expected an integer");
    }

    [Fact]
    public void TokenIdBeyondTheVocabulary()
    {
        var r = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,600,3");
        AssertError(r, 2, "--tokens", "token id 600 at index 1", "vocabulary size 512");
    }

    [Fact]
    public void NegativeTokenId()
    {
        var r = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,-5");
        AssertError(r, 2, "--tokens", "token id -5");
    }

    [Fact]
    public void PromptLongerThanTheContext()
    {
        // gpt2 fixture: n_positions 64
        var ids = string.Join(",", Enumerable.Repeat(5, 65));
        var r = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", ids);
        AssertError(r, 2, "--tokens", "65 tokens", "context of 64");
    }

    [Fact]
    public void GenerationBeyondTheContextStopsThere()
    {
        var ids = string.Join(",", Enumerable.Repeat(5, 60));
        var r = Support.Cli.Run("generate", "--model", TestPaths.Fixture("gpt2"), "--tokens", ids, "--max-new-tokens", "10", "--json", "--no-stop");
        Assert.Equal(0, r.ExitCode);
        using var doc = System.Text.Json.JsonDocument.Parse(r.Stdout);
        // positions 60..63 are fed (context 64); the logits at position 63 still choose a 5th token
        Assert.Equal(5, doc.RootElement.GetProperty("tokens").GetArrayLength());
        Assert.Equal("context", doc.RootElement.GetProperty("stop_reason").GetString());
    }

    [Theory]
    [InlineData(new[] { "run", "--tokens", "1,2" }, "option --model is required")]
    [InlineData(new[] { "run", "--model" }, "option --model needs a value")]
    [InlineData(new[] { "run", "--modle", "x" }, "unknown option '--modle'")]
    [InlineData(new[] { "run", "stray" }, "unexpected argument 'stray'")]
    [InlineData(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    public void BadArguments(string[] args, string fragment)
    {
        AssertError(Support.Cli.Run(args), 2, fragment);
    }

    [Fact]
    public void TokensThatAreNotIntegers()
    {
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,two,3"), 2, "--tokens", "'two' is not an integer");
    }

    [Fact]
    public void BothPromptAndTokens()
    {
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1", "--prompt", "hi"), 2, "exactly one of --prompt");
    }

    [Fact]
    public void PromptWithoutTokenizer()
    {
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("llama"), "--prompt", "hello"), 2, "--prompt", "no tokenizer", "--tokens");
    }

    [Fact]
    public void UnknownBackend()
    {
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1", "--backend", "tpu"), 2, "--backend tpu", "unknown backend");
    }

    [Fact]
    public void EmptyTokenList()
    {
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", ","), 2, "--tokens", "no values");
    }

    [Fact]
    public void ExistingOutputIsNotOverwrittenWithoutForce()
    {
        using var dir = new TempDir();
        string outFile = dir.File("logits.safetensors");
        File.WriteAllText(outFile, "precious");
        var r = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2", "--save-logits", outFile);
        AssertError(r, 2, "--save-logits", "exists", "--force");
        Assert.Equal("precious", File.ReadAllText(outFile));
        var forced = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2", "--save-logits", outFile, "--force");
        Assert.Equal(0, forced.ExitCode);
        Assert.NotEqual("precious", File.ReadAllText(outFile));
    }

    [Fact]
    public void OutputFolderMissing()
    {
        var r = Support.Cli.Run("cache", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2", "--hooks", "*", "--out", "/no/such/folder/x.safetensors");
        AssertError(r, 2, "--out", "does not exist");
    }

    [Fact]
    public void HookGlobMatchingNothing()
    {
        using var dir = new TempDir();
        var r = Support.Cli.Run("cache", "--model", TestPaths.Fixture("llama"), "--tokens", "1,2", "--hooks", "hook_pos_embed", "--out", dir.File("c.safetensors"));
        AssertError(r, 2, "--hooks", "matches no hook");
    }
}
