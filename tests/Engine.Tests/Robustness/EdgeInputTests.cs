using System.Text;
using Engine.Loader;
using Engine.Loader.Tokenization;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Tests.Tokenization;
using Xunit;

namespace Engine.Tests.Robustness;

/// <summary>
/// Edge inputs (empty prompts, prompts longer than the context) and one test per bug the fuzz tests found, so each
/// stays fixed with a readable case.
/// </summary>
public class EdgeInputTests
{
    static void AssertError(Support.Cli.Result r, int code, params string[] fragments)
    {
        Assert.True(r.ExitCode == code, $"exit code {r.ExitCode}, expected {code}; stderr: {r.Stderr}");
        string err = r.Stderr.TrimEnd('\n');
        Assert.StartsWith("engine: error: ", err);
        Assert.DoesNotContain('\n', err);
        foreach (var f in fragments) Assert.Contains(f, err);
    }

    [Fact]
    public void EmptyPromptsAreRefused()
    {
        string m = TestPaths.Fixture("gpt2-vocab50257");   // gets the bundled GPT-2 tokenizer
        AssertError(Support.Cli.Run("run", "--model", m, "--prompt", ""), 2, "--prompt", "no tokens");
        AssertError(Support.Cli.Run("generate", "--model", m, "--prompt", ""), 2, "--prompt", "no tokens");
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", ""), 2, "--tokens", "no values");
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", " , ,"), 2, "--tokens", "no values");
        using var model = Model.Load(m);
        using var s = new Session(model, new SessionOptions { Capacity = 4 });
        Assert.Throws<UsageException>(() => s.Run([]));
    }

    [Fact]
    public void PromptsLongerThanTheContextAreRefused()
    {
        string m = TestPaths.Fixture("gpt2");   // context 64
        string tokens = string.Join(",", Enumerable.Range(0, 65).Select(i => i % 500));
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", tokens), 2, "65 tokens", "context of 64");
        AssertError(Support.Cli.Run("lens", "--model", m, "--tokens", tokens), 2, "65 tokens");
        string longText = string.Concat(Enumerable.Repeat("hello world ", 100));
        AssertError(Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2-vocab50257"), "--prompt", longText), 2, "--prompt", "longer than the model's context");
        using var model = Model.Load(m);
        using var s = new Session(model);
        Assert.Throws<UsageException>(() => s.Run(new int[65]));
        // generation stops at the context, never past it
        var g = Support.Cli.Run("generate", "--model", m, "--tokens", string.Join(",", Enumerable.Range(0, 62)), "--max-new-tokens", "10", "--json", "--no-stop");
        Assert.True(g.ExitCode == 0, g.Stderr);
        Assert.Contains("\"stop_reason\": \"context\"", g.Stdout);
    }

    // ---- bugs found by the fuzz tests ----

    [Fact]
    public void ErrorMessagesStayOneLineWhenFileNamesCarryNewlines()
    {
        // A tensor name with a newline (safetensors fuzz) made the ModelFormatException message two lines.
        using var dir = new TempDir();
        string f = dir.File("x.safetensors");
        TempDir.WriteRawSafetensors(f, "{\"a\\nb\\u001b[31m\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", new byte[4]);
        var e = Assert.Throws<ModelFormatException>(() => SafeTensorFile.Open(f));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains("a\\nb\\u001b[31m", e.Message);
        var longName = new string('n', 100_000);
        Assert.True(new ModelFormatException(longName).Message.Length < EngineException.MaxMessageLength + 100);
    }

    [Fact]
    public void InvalidUtf8InTokenizerJsonIsAFormatError()
    {
        // Invalid UTF-8 inside a JSON string passed the parser and failed later with InvalidOperationException.
        using var folder = new TempFolder();
        var json = Encoding.UTF8.GetBytes(TokenizerJsonTests.SyntheticByteLevel(false)).ToList();
        int at = json.IndexOf((byte)'h');
        json.Insert(at, 0xFF);
        folder.Write("tokenizer.json", json.ToArray());
        var e = Assert.Throws<ModelFormatException>(() => ModelTokenizer.TryLoad(folder.Path, null));
        Assert.Contains("not valid UTF-8", e.Message);
    }

    [Fact]
    public void BosOutsideTheVocabularyIsIgnored()
    {
        // config.json's bos_token_id beyond the vocabulary made Encode return an id the model cannot embed.
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", TokenizerJsonTests.SyntheticByteLevel(false));
        var tok = ModelTokenizer.TryLoad(folder.Path, TokenizerFiles.Config("llama", 19, 175))!;
        Assert.Null(tok.BosId);
        Assert.All(tok.Encode("hello world"), id => Assert.InRange(id, 0, tok.VocabSize - 1));
        Assert.Throws<UsageException>(() => tok.Encode("hello", addBos: true));
    }

    [Fact]
    public void EmptyOrOptionLikePathsAreUsageErrors()
    {
        // An empty --save-logits/--out/--svg gave "internal error (ArgumentException)"; "--out --force" wrote a file named "--force".
        string m = TestPaths.Fixture("gpt2");
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", "1", "--save-logits", ""), 2, "--save-logits needs a path");
        AssertError(Support.Cli.Run("lens", "--model", m, "--tokens", "1", "--svg", " "), 2, "--svg needs a path");
        AssertError(Support.Cli.Run("make-model", "--shape", "demo", "--out", ""), 2, "--out needs a path");
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", "1", "--save-logits", "--force"), 2, "--save-logits needs a value", "got option '--force'");
        AssertError(Support.Cli.Run("run", "--model", m, "--tokens", "1", "--save-logits", "a\0b"), 2, "NUL");
    }

    [Fact]
    public void SymlinkedWeightsLoad()
    {
        // Hugging Face cache snapshots link to blobs; the file size was taken from the link (a few bytes), not the blob.
        using var dir = new TempDir();
        string m = Path.Combine(dir.Path, "snap");
        Directory.CreateDirectory(m);
        File.CreateSymbolicLink(Path.Combine(m, "config.json"), Path.Combine(TestPaths.Fixture("gpt2"), "config.json"));
        File.CreateSymbolicLink(Path.Combine(m, "model.safetensors"), Path.Combine(TestPaths.Fixture("gpt2"), "model.safetensors"));
        var r = Support.Cli.Run("run", "--model", m, "--tokens", "1,2,3");
        Assert.True(r.ExitCode == 0, r.Stderr);
        File.CreateSymbolicLink(Path.Combine(m, "dangling.safetensors"), Path.Combine(dir.Path, "gone"));
        Assert.Throws<ModelFormatException>(() => SafeTensorFile.Open(Path.Combine(m, "dangling.safetensors")));
    }
}
