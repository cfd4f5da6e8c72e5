using Engine.Loader;
using Engine.Loader.Tokenization;
using Xunit;

namespace Engine.Tests.Tokenization;

/// <summary>Bad tokenizer files give one-line EngineExceptions that name the file (none of these need ../shared).</summary>
public sealed class MalformedTokenizerTests
{
    static EngineException LoadFails(TempFolder folder)
    {
        var e = Assert.ThrowsAny<EngineException>(() => ModelTokenizer.TryLoad(folder.Path, null));
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }

    const string MinimalModel = """
        "model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":["a b"]}
        """;

    [Fact]
    public void TokenizerJsonThatIsNotJson()
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0,");
        var e = LoadFails(folder);
        Assert.IsType<ModelFormatException>(e);
        Assert.StartsWith(path + ": not valid JSON", e.Message);
    }

    [Theory]
    [InlineData("WordPiece")]
    [InlineData("Unigram")]
    [InlineData("WordLevel")]
    public void TokenizerJsonWithUnsupportedModelType(string type)
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.json", "{\"model\":{\"type\":\"" + type + "\",\"vocab\":{\"a\":0}}}");
        var e = LoadFails(folder);
        Assert.Equal($"{path}: key 'model.type': unsupported tokenizer model type '{type}' (supported: BPE)", e.Message);
    }

    [Fact]
    public void TokenizerJsonWithoutModel()
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.json", """{"version":"1.0"}""");
        Assert.Equal($"{path}: no \"model\" (not a Hugging Face tokenizer.json)", LoadFails(folder).Message);
    }

    [Fact]
    public void TokenizerJsonMergeWithUnknownToken()
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.json", """{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":["a b"]}}""");
        Assert.Equal($"{path}: key 'model.merges[0]': merge \"a b\" uses a token missing from model.vocab", LoadFails(folder).Message);
        path = folder.Write("tokenizer.json", """{"model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[["a","c"]]}}""");
        Assert.Equal($"{path}: key 'model.merges[0]': merge \"a c\" uses a token missing from model.vocab", LoadFails(folder).Message);
    }

    [Theory]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":"zero"},"merges":[]}}""", "key 'model.vocab.a': expected an integer, got a string")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":-3},"merges":[]}}""", "key 'model.vocab.a': token id -3 is out of range")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0},"merges":[3]}}""", "key 'model.merges[0]': expected a string \"a b\" or a pair [a, b]")]
    [InlineData("""{"model":{"type":"BPE","vocab":{"a":0},"merges":["ab"]}}""", "key 'model.merges[0]': merge \"ab\" is not two tokens separated by one space")]
    [InlineData("""{"pre_tokenizer":{"type":"Whitespace"},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}""", "key 'pre_tokenizer.type': pre-tokenizer 'Whitespace' is not supported")]
    [InlineData("""{"pre_tokenizer":{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(?<x"},"behavior":"Isolated"},{"type":"ByteLevel","use_regex":false}]},"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}""", "key 'pre_tokenizer.pretokenizers[0].pattern.Regex': regex cannot be used in .NET")]
    [InlineData("""{"pre_tokenizer":{"type":"ByteLevel"},"added_tokens":[{"id":5}],"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}""", "key 'added_tokens[0].content': missing")]
    [InlineData("""{"model":{"type":"BPE","continuing_subword_prefix":"##","vocab":{"a":0},"merges":[]}}""", "key 'model.continuing_subword_prefix': '##' is not supported")]
    [InlineData("""[1, 2]""", "must be a JSON object")]
    public void TokenizerJsonWithBadMembers(string json, string expected)
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.json", json);
        var e = LoadFails(folder);
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void TruncatedTokenizerModel()
    {
        byte[] full = new SentencePieceProtoWriter().AddLlamaPrelude().Add("▁", -1).Add("a", -2).ToBytes();
        using var folder = new TempFolder();
        foreach (int cut in new[] { 1, 2, 7, full.Length / 2, full.Length - 3 })
        {
            string path = folder.Write("tokenizer.model", full[..cut]);
            var e = LoadFails(folder);
            Assert.IsType<ModelFormatException>(e);
            Assert.StartsWith(path + ": ", e.Message);
            Assert.Contains("truncated", e.Message);
        }
    }

    [Fact]
    public void TokenizerModelThatIsNotProtobuf()
    {
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.model", "this is a text file, not a SentencePiece model\n"u8.ToArray());
        Assert.StartsWith(path + ": ", LoadFails(folder).Message);
        path = folder.Write("tokenizer.model", []);
        Assert.Equal($"{path}: empty file (expected a SentencePiece model)", LoadFails(folder).Message);
    }

    [Fact]
    public void UnigramTokenizerModelIsUnsupported()
    {
        byte[] model = new SentencePieceProtoWriter { ModelType = 1 }.AddLlamaPrelude().Add("▁a", -1).ToBytes();
        using var folder = new TempFolder();
        string path = folder.Write("tokenizer.model", model);
        Assert.Equal($"{path}: SentencePiece model type UNIGRAM is not supported (only BPE)", LoadFails(folder).Message);
    }

    [Fact]
    public void VocabJsonWithoutMergesTxt()
    {
        using var folder = new TempFolder();
        string path = folder.Write("vocab.json", """{"a":0,"b":1}""");
        Assert.Equal($"{path}: found without merges.txt next to it (a GPT-2 style tokenizer needs both)", LoadFails(folder).Message);
    }

    [Fact]
    public void MergesTxtWithoutVocabJson()
    {
        using var folder = new TempFolder();
        string path = folder.Write("merges.txt", "#version: 0.2\na b\n");
        Assert.Equal($"{path}: found without vocab.json next to it (a GPT-2 style tokenizer needs both)", LoadFails(folder).Message);
    }

    [Fact]
    public void MergesTxtWithBadLine()
    {
        using var folder = new TempFolder();
        folder.Write("vocab.json", """{"a":0,"b":1,"ab":2}""");
        string path = folder.Write("merges.txt", "#version: 0.2\na b\nab c\n");
        Assert.Equal($"{path}: line 3: merge \"ab c\" uses a token missing from vocab.json", LoadFails(folder).Message);
        folder.Write("merges.txt", "#version: 0.2\na b c\n");
        Assert.Equal($"{path}: line 2: expected two tokens separated by one space, got \"a b c\"", LoadFails(folder).Message);
    }

    [Fact]
    public void VocabJsonThatIsNotJson()
    {
        using var folder = new TempFolder();
        string path = folder.Write("vocab.json", "not json");
        folder.Write("merges.txt", "#version: 0.2\n");
        Assert.StartsWith($"{path}: not valid JSON", LoadFails(folder).Message);
    }

    [Fact]
    public void TokenizerConfigThatIsNotJson()
    {
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", "{" + MinimalModel + "}");
        string path = folder.Write("tokenizer_config.json", "{\"add_bos_token\": tru");
        Assert.StartsWith($"{path}: not valid JSON", LoadFails(folder).Message);
        folder.Write("tokenizer_config.json", """{"add_bos_token": "yes"}""");
        Assert.Equal($"{path}: key 'add_bos_token': expected true or false, got a string", LoadFails(folder).Message);
    }

    [Fact]
    public void FolderWithoutTokenizerFilesGivesNull()
    {
        using var folder = new TempFolder();
        folder.Write("config.json", "{}");
        Assert.Null(ModelTokenizer.TryLoad(folder.Path, null));
    }

    [Fact]
    public void MissingFolderIsAUsageError()
    {
        string missing = Path.Combine(Path.GetTempPath(), "engine-tok-missing-" + Guid.NewGuid().ToString("N"));
        var e = Assert.Throws<UsageException>(() => ModelTokenizer.TryLoad(missing, null));
        Assert.Equal($"{missing}: no such folder", e.Message);
    }
}
