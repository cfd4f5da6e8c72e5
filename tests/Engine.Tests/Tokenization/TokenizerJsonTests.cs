using System.Text.Json;
using Engine.Loader.Tokenization;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Tokenization;

/// <summary>The tokenizer.json route: GPT-2's real vocabulary written as tokenizer.json, and small synthetic files.</summary>
public sealed class TokenizerJsonTests(TokenizerJsonTests.Fixture fixture) : IClassFixture<TokenizerJsonTests.Fixture>
{
    const string ByteLevelPre = """{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}""";
    const string Gpt2Regex = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>GPT-2's vocab.json/merges.txt rewritten as tokenizer.json files (made on first use).</summary>
    public sealed class Fixture : IDisposable
    {
        readonly List<TempFolder> folders = [];
        readonly Dictionary<string, ModelTokenizer> cache = [];

        internal ModelTokenizer Get(string variant)
        {
            lock (cache)
            {
                if (cache.TryGetValue(variant, out var t)) return t;
                var folder = new TempFolder();
                folders.Add(folder);
                folder.Write("tokenizer.json", Gpt2AsTokenizerJson(variant));
                return cache[variant] = ModelTokenizer.TryLoad(folder.Path, null) ?? throw new InvalidOperationException("no tokenizer loaded");
            }
        }

        public void Dispose() { foreach (var f in folders) f.Dispose(); }
    }

    /// <summary>variant: "strings" (merges "a b", ByteLevel regex), "pairs" (merges [a, b]), "split" (Split regex + ByteLevel without regex).</summary>
    static string Gpt2AsTokenizerJson(string variant)
    {
        string dir = TestPaths.SharedPath("tokenizers", "gpt2")!;
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(dir, "vocab.json")))!;
        var merges = File.ReadAllLines(Path.Combine(dir, "merges.txt"))
            .Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal))
            .Select(l => { var p = l.Split(' '); return (p[0], p[1]); }).ToList();
        // HF's gpt2 tokenizer.json keeps <|endoftext|> in model.vocab and also lists it as an added token.
        return TokenizerFiles.TokenizerJson(vocab, merges, mergesAsPairs: variant == "pairs", w =>
        {
            TokenizerFiles.AddedTokens(w, (50256, "<|endoftext|>", true));
            w.WriteNull("normalizer");
            if (variant == "split")
                TokenizerFiles.Raw(w, "pre_tokenizer", JsonSerializer.Serialize(new
                {
                    type = "Sequence",
                    pretokenizers = new object[]
                    {
                        new { type = "Split", pattern = new { Regex = Gpt2Regex }, behavior = "Isolated", invert = false },
                        new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false },
                    },
                }));
            else TokenizerFiles.Raw(w, "pre_tokenizer", ByteLevelPre);
            TokenizerFiles.Raw(w, "post_processor", """{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true}""");
            TokenizerFiles.Raw(w, "decoder", """{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true}""");
        });
    }

    [SharedTheory("tokenizers", "gpt2", "vocab.json")]
    [MemberData(nameof(TokenizerCases.Indices), MemberType = typeof(TokenizerCases))]
    public void Gpt2TokenizerJsonMatchesHuggingFace(int index)
    {
        var (text, expected) = TokenizerCases.Load("gpt2")[index];
        var tok = fixture.Get("strings");
        int[] ids = tok.Encode(text);
        Assert.True(expected.SequenceEqual(ids), $"case {index} {TokenizerCases.Show(text)}: expected {TokenizerCases.Ids(expected)}, got {TokenizerCases.Ids(ids)}");
        Assert.Equal(text, tok.Decode(ids));
    }

    [SharedTheory("tokenizers", "gpt2", "vocab.json")]
    [InlineData("pairs")]
    [InlineData("split")]
    public void Gpt2TokenizerJsonVariantsMatchOnAllCases(string variant)
    {
        var tok = fixture.Get(variant);
        var cases = TokenizerCases.Load("gpt2");
        for (int i = 0; i < cases.Length; i++)
        {
            int[] ids = tok.Encode(cases[i].Text);
            Assert.True(cases[i].Ids.SequenceEqual(ids), $"{variant}: case {i} {TokenizerCases.Show(cases[i].Text)}: expected {TokenizerCases.Ids(cases[i].Ids)}, got {TokenizerCases.Ids(ids)}");
        }
    }

    [SharedFact("tokenizers", "gpt2", "vocab.json")]
    public void Gpt2TokenizerJsonSpecialTokens()
    {
        var tok = fixture.Get("strings");
        Assert.Equal("tokenizer.json BPE", tok.Kind);
        Assert.Equal([50256, 17250], tok.Encode("<|endoftext|>Hi"));
        Assert.Equal([15496, 995], tok.Encode("Hello world"));
        Assert.Equal("<|endoftext|>Hi", tok.Decode([50256, 17250]));
        Assert.Equal("Hi", tok.Decode([50256, 17250], skipSpecialTokens: true));
        Assert.False(tok.AddBosByDefault);
        Assert.Equal(50256, tok.EosId);
    }

    [SharedFact("tokenizers", "gpt2", "vocab.json")]
    public void TokenizerJsonWinsOverVocabAndMerges()
    {
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", Gpt2AsTokenizerJson("pairs"));
        folder.CopyShared("tokenizers", "gpt2", "vocab.json");
        folder.CopyShared("tokenizers", "gpt2", "merges.txt");
        Assert.Equal("tokenizer.json BPE", ModelTokenizer.TryLoad(folder.Path, null)!.Kind);
    }

    // ---- Synthetic files (no ../shared needed) ----

    /// <summary>A tiny byte-level vocabulary: "hello", " world", "held" and two added special tokens.</summary>
    internal static string SyntheticByteLevel(bool mergesAsPairs, string preTokenizer = ByteLevelPre, string? postProcessor = null,
        bool withHeld = false, bool ignoreMerges = false)
    {
        List<string> tokens = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld"];
        var vocab = tokens.Select((t, i) => KeyValuePair.Create(t, i)).ToList();
        if (withHeld) vocab.Add(KeyValuePair.Create("held", 19));
        (string, string)[] merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")];
        return TokenizerFiles.TokenizerJson(vocab, merges, mergesAsPairs, w =>
        {
            TokenizerFiles.AddedTokens(w, (17, "<|end|>", true), (18, "<|start|>", true));
            w.WriteNull("normalizer");
            TokenizerFiles.Raw(w, "pre_tokenizer", preTokenizer);
            TokenizerFiles.Raw(w, "post_processor", postProcessor ?? "null");
            TokenizerFiles.Raw(w, "decoder", """{"type":"ByteLevel"}""");
        }, ignoreMerges ? w => w.WriteBoolean("ignore_merges", true) : null);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SyntheticByteLevelBpe(bool mergesAsPairs)
    {
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", SyntheticByteLevel(mergesAsPairs));
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.Equal("tokenizer.json BPE", tok.Kind);
        Assert.Equal(19, tok.VocabSize);
        Assert.Equal([11, 16], tok.Encode("hello world"));
        Assert.Equal([11, 17, 16], tok.Encode("hello<|end|> world"));
        Assert.Equal([8, 15], tok.Encode("held"));          // h+e and l+d merge; "he"+"ld" is no merge
        Assert.Equal([18, 11, 11], tok.Encode("<|start|>hellohello"));
        Assert.Equal([4, 4, 16], tok.Encode("   world"));   // "  " then " world" (\s+(?!\S) leaves the last space to the word)
        Assert.Equal("hello<|end|> world", tok.Decode([11, 17, 16]));
        Assert.Equal(" world", tok.TokenText(16));
        Assert.Equal("<|end|>", tok.TokenText(17));
        Assert.Null(tok.BosId);
        Assert.False(tok.AddBosByDefault);
    }

    [Fact]
    public void SyntheticTemplateProcessingAddsBos()
    {
        const string template = """
            {"type":"Sequence","processors":[{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":false,"use_regex":true},
             {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<|start|>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
              "pair":[],"special_tokens":{"<|start|>":{"id":"<|start|>","ids":[18],"tokens":["<|start|>"]}}}]}
            """;
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", SyntheticByteLevel(true, postProcessor: template));
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.True(tok.AddBosByDefault);
        Assert.Equal(18, tok.BosId);
        Assert.Equal([18, 11], tok.Encode("hello"));
        Assert.Equal([11], tok.Encode("hello", addBos: false));
        folder.Write("tokenizer_config.json", """{"add_bos_token": false}""");
        Assert.False(ModelTokenizer.TryLoad(folder.Path, null)!.AddBosByDefault);
    }

    [Fact]
    public void SyntheticSplitRegexIsolatedKeepsTextBetweenMatches()
    {
        // A Split regex that matches only letters: the text between matches (spaces) must stay, as HF "Isolated" keeps it.
        const string pre = """
            {"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"\\p{L}+"},"behavior":"Isolated","invert":false},
             {"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}
            """;
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", SyntheticByteLevel(false, pre));
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        // "hello world" → "hello", " ", "world": the space is its own piece, so " world" is not formed.
        int[] ids = tok.Encode("hello world");
        Assert.Equal([11, 4, 5, 13, 15], ids); // hello Ġ w or ld
        Assert.Equal("hello world", tok.Decode(ids));
    }

    [Fact]
    public void SyntheticIgnoreMerges()
    {
        // "held" is in the vocabulary but no merge path leads to it (h+e, l+d, and no he+ld). With ignore_merges
        // (Llama-3) HF returns the vocabulary entry; without it, the merges.
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", SyntheticByteLevel(false, withHeld: true));
        Assert.Equal([8, 15], ModelTokenizer.TryLoad(folder.Path, null)!.Encode("held"));
        folder.Write("tokenizer.json", SyntheticByteLevel(false, withHeld: true, ignoreMerges: true));
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.Equal([19], tok.Encode("held"));
        Assert.Equal([11, 17, 4, 8, 15, 16], tok.Encode("hello<|end|> held world")); // " held" is not in the vocabulary: merges
    }

    /// <summary>A Llama-2 style (SentencePiece) tokenizer.json: Prepend/Replace normalizer, byte_fallback, Strip decoder.</summary>
    internal static string SyntheticSentencePieceJson(bool mergesAsPairs, bool metaspace = false)
    {
        var vocab = new List<KeyValuePair<string, int>> { new("<unk>", 0), new("<s>", 1), new("</s>", 2) };
        for (int b = 0; b < 256; b++) vocab.Add(new($"<0x{b:X2}>", 3 + b));
        string[] pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "el", "▁hel", "lo", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "!", "!!", "!!!", "▁!"];
        for (int i = 0; i < pieces.Length; i++) vocab.Add(new(pieces[i], 259 + i));
        // Merge ranks as HF's converter orders them for Llama. "▁!" before "!!" before "!!!".
        (string, string)[] merges = [("▁", "!"), ("!", "!"), ("▁", "h"), ("e", "l"), ("▁h", "el"), ("l", "o"), ("▁hel", "lo"), ("▁", "w"), ("o", "r"), ("▁w", "or"), ("l", "d"), ("▁wor", "ld"), ("!!", "!"), ("!", "!!")];
        return TokenizerFiles.TokenizerJson(vocab, merges, mergesAsPairs, w =>
        {
            TokenizerFiles.AddedTokens(w, (0, "<unk>", true), (1, "<s>", true), (2, "</s>", true));
            if (metaspace)
            {
                w.WriteNull("normalizer");
                TokenizerFiles.Raw(w, "pre_tokenizer", """{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}""");
                TokenizerFiles.Raw(w, "decoder", """{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}""");
            }
            else
            {
                TokenizerFiles.Raw(w, "normalizer", """{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]}""");
                w.WriteNull("pre_tokenizer");
                TokenizerFiles.Raw(w, "decoder", """{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}""");
            }
            TokenizerFiles.Raw(w, "post_processor", """
                {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
                 "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}}
                """);
        }, w => { w.WriteString("unk_token", "<unk>"); w.WriteBoolean("fuse_unk", true); w.WriteBoolean("byte_fallback", true); });
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void SyntheticSentencePieceStyleJson(bool mergesAsPairs, bool metaspace)
    {
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", SyntheticSentencePieceJson(mergesAsPairs, metaspace));
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.Equal("tokenizer.json BPE (sentencepiece-style)", tok.Kind);
        Assert.True(tok.AddBosByDefault);
        Assert.Equal(1, tok.BosId);
        Assert.Equal([1, 271, 276], tok.Encode("hello world"));
        Assert.Equal([271, 276], tok.Encode("hello world", addBos: false));
        Assert.Equal([280, 278, 279], tok.Encode("!!!!!!", addBos: false));   // ▁! !! !!! (leftmost of equal merges first)
        Assert.Equal([271, 3 + 0xC3, 3 + 0xA9], tok.Encode("helloé", addBos: false)); // é has no piece: UTF-8 byte fallback
        Assert.Equal("helloé", tok.Decode(tok.Encode("helloé", addBos: false)));
        Assert.Equal("hello world", tok.Decode([1, 271, 276], skipSpecialTokens: true));
        Assert.Equal(" world", tok.TokenText(276));
    }
}
