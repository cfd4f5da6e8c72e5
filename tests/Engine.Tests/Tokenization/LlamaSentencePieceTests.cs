using Engine.Loader.Tokenization;
using Engine.Tests.Support;
using Microsoft.ML.Tokenizers;
using Xunit;

namespace Engine.Tests.Tokenization;

/// <summary>Llama-2's SentencePiece tokenizer.model, against Hugging Face's ids for the llama.cpp cases.</summary>
public sealed class LlamaSentencePieceTests(LlamaSentencePieceTests.Fixture fixture) : IClassFixture<LlamaSentencePieceTests.Fixture>
{
    public sealed class Fixture : IDisposable
    {
        readonly Lazy<(TempFolder Folder, ModelTokenizer Tok)> value = new(() =>
        {
            var folder = new TempFolder();
            folder.CopyShared("tokenizers", "llama2", "tokenizer.model");
            var tok = ModelTokenizer.TryLoad(folder.Path, null) ?? throw new InvalidOperationException("no tokenizer loaded");
            return (folder, tok);
        });

        internal (TempFolder Folder, ModelTokenizer Tok) Value => value.Value;

        public void Dispose() { if (value.IsValueCreated) value.Value.Folder.Dispose(); }
    }

    ModelTokenizer Tok => fixture.Value.Tok;

    [SharedFact("tokenizers", "llama2", "cases.inp")]
    public void CaseFilesHold46Cases() => Assert.Equal(TokenizerCases.Count, TokenizerCases.Load("llama2").Length);

    /// <summary>All 46 cases, no BOS; the "▁" space prefix is added as SentencePiece and HF do. Decoding gives the text back.</summary>
    [SharedTheory("tokenizers", "llama2", "tokenizer.model")]
    [MemberData(nameof(TokenizerCases.Indices), MemberType = typeof(TokenizerCases))]
    public void MatchesHuggingFace(int index)
    {
        var (text, expected) = TokenizerCases.Load("llama2")[index];
        int[] ids = Tok.Encode(text, addBos: false);
        Assert.True(expected.SequenceEqual(ids), $"case {index} {TokenizerCases.Show(text)}: expected {TokenizerCases.Ids(expected)}, got {TokenizerCases.Ids(ids)}");
        Assert.Equal(text, Tok.Decode(ids));
    }

    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void HelloWorldWithBos()
    {
        Assert.Equal("sentencepiece (tokenizer.model)", Tok.Kind);
        Assert.Equal(32000, Tok.VocabSize);
        Assert.Equal(1, Tok.BosId);
        Assert.Equal(2, Tok.EosId);
        Assert.True(Tok.AddBosByDefault);
        Assert.Equal([1, 15043, 3186], Tok.Encode("Hello world"));
        Assert.Equal([1, 15043, 3186], Tok.Encode("Hello world", addBos: true));
        Assert.Equal([15043, 29892, 3186, 29991], Tok.Encode("Hello, world!", addBos: false));
        // HF decode keeps special tokens by default ("<s> Hello world"); skipSpecialTokens leaves them out.
        Assert.Equal("<s> Hello world", Tok.Decode([1, 15043, 3186]));
        Assert.Equal("Hello world", Tok.Decode([1, 15043, 3186], skipSpecialTokens: true));
        Assert.Equal(" Hello", Tok.TokenText(15043));
        Assert.Equal("\n", Tok.TokenText(13));       // <0x0A>
        Assert.Equal("<0xE2>", Tok.TokenText(229)); // a byte that is not a character on its own
        Assert.Equal("<s>", Tok.TokenText(1));
    }

    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void ControlTokensWrittenInTextAreRecognised()
    {
        // As HF's LlamaTokenizerFast (legacy): "<s>" and "</s>" are added tokens, and each text run gets the "▁" prefix.
        Assert.Equal([1, 15043, 2], Tok.Encode("<s>Hello</s>", addBos: false));
    }

    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void TokenizerConfigAndConfigJsonOverrideDefaults()
    {
        using var folder = new TempFolder();
        folder.CopyShared("tokenizers", "llama2", "tokenizer.model");
        folder.Write("tokenizer_config.json", """{"add_bos_token": false, "bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>"}""");
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.False(tok.AddBosByDefault);
        Assert.Equal(1, tok.BosId);
        Assert.Equal([15043, 3186], tok.Encode("Hello world"));
        Assert.Equal([1, 15043, 3186], tok.Encode("Hello world", addBos: true));

        var cfg = TokenizerFiles.Config("llama", 32064, 1, 2, 32000);
        var tok2 = ModelTokenizer.TryLoad(folder.Path, cfg)!;
        Assert.Equal(2, tok2.EosId);
        Assert.Equal(32064, tok2.VocabSize);
    }

    /// <summary>
    /// Why tokenizer.model is not encoded with Microsoft.ML.Tokenizers: its SentencePiece BPE (LlamaTokenizer, and
    /// SentencePieceTokenizer alike) orders merges of equal score differently from SentencePiece and HF, which merge the
    /// leftmost pair first. On case 33 "!!!!!!" (and the long punctuation runs of case 45) it gives ▁! !!! !! where HF
    /// gives ▁! !! !!!: after ▁! and the leftmost "!!" are merged, [▁! !! ! ! !] has two equal "!!" candidates and the
    /// leftmost must win, giving [▁! !! !! !] and then "!!"+"!" → "!!!". Our own merge loop matches HF on all 46 cases.
    /// This test pins the library's behaviour; if it starts passing HF's ids, the library could be used again.
    /// </summary>
    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void LibrarySentencePieceDisagreesOnEqualScoreTies()
    {
        string path = TestPaths.SharedPath("tokenizers", "llama2", "tokenizer.model")!;
        using var stream = File.OpenRead(path);
        var lib = LlamaTokenizer.Create(stream, addBeginOfSentence: false);
        var cases = TokenizerCases.Load("llama2");
        var differing = new List<int>();
        for (int i = 0; i < cases.Length; i++)
            if (!cases[i].Ids.SequenceEqual(lib.EncodeToIds(cases[i].Text))) differing.Add(i);
        Assert.Equal([33, 45], differing);
        Assert.Equal("!!!!!!", cases[33].Text);
        Assert.Equal([1738, 6824, 21004], cases[33].Ids);              // HF: ▁! !! !!!
        Assert.Equal([1738, 21004, 6824], lib.EncodeToIds("!!!!!!"));  // library: ▁! !!! !!
        Assert.Equal([1738, 6824, 21004], Tok.Encode("!!!!!!", addBos: false));
    }

    /// <summary>
    /// The SentencePiece-style tokenizer.json route on real data: Llama-2's vocabulary written as HF's converter writes
    /// tokenizer.json (merges = every split of a normal piece into two normal pieces, ordered by the merged piece's score,
    /// best first; scores are not monotonic in the id: "▁▁" is id 259 but scores -1e9), with the Prepend/Replace
    /// normalizer and the Strip decoder. All 46 cases.
    /// </summary>
    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void TokenizerJsonConvertedFromModelMatchesHuggingFace()
    {
        var pieces = ReadPieces(File.ReadAllBytes(TestPaths.SharedPath("tokenizers", "llama2", "tokenizer.model")!));
        var vocab = pieces.Select((p, i) => KeyValuePair.Create(p.Piece, i)).ToList();
        var ids = vocab.ToDictionary(kv => kv.Key, kv => kv.Value);
        bool IsNormal(int id) => pieces[id].Type == 1;
        var merges = new List<(string A, string B, float Score)>();
        for (int id = 0; id < pieces.Count; id++)
        {
            if (!IsNormal(id)) continue;
            string piece = pieces[id].Piece;
            var local = new List<(string A, string B, float Score)>();
            for (int k = 1; k < piece.Length; k++)
            {
                string a = piece[..k], b = piece[k..];
                if (ids.TryGetValue(a, out int ia) && IsNormal(ia) && ids.TryGetValue(b, out int ib) && IsNormal(ib)) local.Add((a, b, pieces[id].Score));
            }
            merges.AddRange(local.OrderBy(m => ids[m.A]).ThenBy(m => ids[m.B]));
        }
        var ordered = merges.OrderByDescending(m => m.Score).Select(m => (m.A, m.B)).ToList(); // OrderBy is stable, as Python's sorted
        string json = TokenizerFiles.TokenizerJson(vocab, ordered, mergesAsPairs: false, w =>
        {
            TokenizerFiles.AddedTokens(w, (0, "<unk>", true), (1, "<s>", true), (2, "</s>", true));
            TokenizerFiles.Raw(w, "normalizer", """{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]}""");
            w.WriteNull("pre_tokenizer");
            TokenizerFiles.Raw(w, "post_processor", """
                {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],
                 "pair":[],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}}
                """);
            TokenizerFiles.Raw(w, "decoder", """{"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]}""");
        }, w => { w.WriteString("unk_token", "<unk>"); w.WriteBoolean("fuse_unk", true); w.WriteBoolean("byte_fallback", true); });
        using var folder = new TempFolder();
        folder.Write("tokenizer.json", json);
        var tok = ModelTokenizer.TryLoad(folder.Path, null)!;
        Assert.Equal("tokenizer.json BPE (sentencepiece-style)", tok.Kind);
        Assert.True(tok.AddBosByDefault);
        Assert.Equal([1, 15043, 3186], tok.Encode("Hello world"));
        var cases = TokenizerCases.Load("llama2");
        for (int i = 0; i < cases.Length; i++)
        {
            int[] got = tok.Encode(cases[i].Text, addBos: false);
            Assert.True(cases[i].Ids.SequenceEqual(got), $"case {i} {TokenizerCases.Show(cases[i].Text)}: expected {TokenizerCases.Ids(cases[i].Ids)}, got {TokenizerCases.Ids(got)}");
            Assert.Equal(cases[i].Text, tok.Decode(got));
        }
    }

    /// <summary>The pieces of a SentencePiece ModelProto (field 1: piece = 1, score = 2, type = 3), read independently of the engine.</summary>
    static List<(string Piece, float Score, int Type)> ReadPieces(byte[] d)
    {
        int pos = 0;
        ulong Varint(ref int p) { ulong v = 0; for (int sh = 0; ; sh += 7) { byte b = d[p++]; v |= (ulong)(b & 0x7F) << sh; if (b < 0x80) return v; } }
        var list = new List<(string, float, int)>();
        while (pos < d.Length)
        {
            ulong tag = Varint(ref pos);
            int wire = (int)(tag & 7);
            if (wire == 0) { Varint(ref pos); continue; }
            if (wire == 5) { pos += 4; continue; }
            if (wire == 1) { pos += 8; continue; }
            int len = (int)Varint(ref pos), end = pos + len;
            if (tag >> 3 == 1)
            {
                string piece = ""; float score = 0; int type = 1;
                int p = pos;
                while (p < end)
                {
                    ulong t = Varint(ref p);
                    if (t == (1 << 3 | 2)) { int n = (int)Varint(ref p); piece = System.Text.Encoding.UTF8.GetString(d, p, n); p += n; }
                    else if (t == (2 << 3 | 5)) { score = BitConverter.ToSingle(d, p); p += 4; }
                    else if (t == (3 << 3 | 0)) type = (int)Varint(ref p);
                    else throw new InvalidDataException($"unexpected tag {t} in a piece");
                }
                list.Add((piece, score, type));
            }
            pos = end;
        }
        return list;
    }

    [SharedFact("tokenizers", "llama2", "tokenizer.model")]
    public void TruncatedModelIsAFormatError()
    {
        using var folder = new TempFolder();
        byte[] full = File.ReadAllBytes(TestPaths.SharedPath("tokenizers", "llama2", "tokenizer.model")!);
        string path = folder.Write("tokenizer.model", full[..(full.Length / 2)]);
        var e = Assert.Throws<Engine.Loader.ModelFormatException>(() => ModelTokenizer.TryLoad(folder.Path, null));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("truncated", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
