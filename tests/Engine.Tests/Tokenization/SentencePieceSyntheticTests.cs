using Engine.Loader.Tokenization;
using Xunit;

namespace Engine.Tests.Tokenization;

/// <summary>The SentencePiece BPE path on small tokenizer.model files written by the test (no ../shared needed).</summary>
public sealed class SentencePieceSyntheticTests
{
    // Ids: 0 <unk>, 1 <s>, 2 </s>, 3..258 <0x00>..<0xFF>, then these pieces from 259 on. Scores decrease with id, as in Llama.
    static readonly string[] Pieces = ["▁!", "!!", "▁h", "el", "!!!", "▁hel", "lo", "▁hello", "▁▁", "▁", "!", "h", "e", "l", "o"];
    static int Id(string piece) => 259 + Array.IndexOf(Pieces, piece);

    static SentencePieceProtoWriter Writer()
    {
        var w = new SentencePieceProtoWriter().AddLlamaPrelude();
        for (int i = 0; i < Pieces.Length; i++) w.Add(Pieces[i], -i);
        return w;
    }

    static ModelTokenizer Load(TempFolder folder, SentencePieceProtoWriter w)
    {
        folder.Write("tokenizer.model", w.ToBytes());
        return ModelTokenizer.TryLoad(folder.Path, null)!;
    }

    [Fact]
    public void MergesByScoreLeftmostFirst()
    {
        using var folder = new TempFolder();
        var tok = Load(folder, Writer());
        Assert.Equal("sentencepiece (tokenizer.model)", tok.Kind);
        Assert.Equal(259 + Pieces.Length, tok.VocabSize);
        Assert.True(tok.AddBosByDefault);
        Assert.Equal(1, tok.BosId);
        Assert.Equal(2, tok.EosId);
        Assert.Equal([1, Id("▁hello")], tok.Encode("hello"));
        // ▁! first (best score), then the leftmost "!!", then the next "!!", then "!!"+"!" → ▁! !! !!!
        Assert.Equal([Id("▁!"), Id("!!"), Id("!!!")], tok.Encode("!!!!!!", addBos: false));
        Assert.Equal([Id("▁▁"), Id("▁hello")], tok.Encode("  hello", addBos: false));
        Assert.Equal([], tok.Encode("", addBos: false));
    }

    [Fact]
    public void UnknownCharactersFallBackToUtf8Bytes()
    {
        using var folder = new TempFolder();
        var tok = Load(folder, Writer());
        // "🦙" is U+1F999 (a surrogate pair in .NET): four UTF-8 bytes F0 9F A6 99.
        int[] ids = tok.Encode("h🦙", addBos: false);
        Assert.Equal([Id("▁h"), 3 + 0xF0, 3 + 0x9F, 3 + 0xA6, 3 + 0x99], ids);
        Assert.Equal("h🦙", tok.Decode(ids));
        Assert.Equal("<0xF0>", tok.TokenText(3 + 0xF0));
        Assert.Equal("\n", tok.TokenText(3 + 0x0A));
    }

    [Fact]
    public void WithoutByteFallbackUnknownsFuseIntoOneUnk()
    {
        using var folder = new TempFolder();
        var w = Writer();
        w.ByteFallback = false;
        var tok = Load(folder, w);
        Assert.Equal([Id("▁h"), 0, Id("o")], tok.Encode("hxyo", addBos: false));
    }

    [Fact]
    public void DummyPrefixAndExtraWhitespaceOptions()
    {
        using var folder = new TempFolder();
        var w = Writer();
        w.AddDummyPrefix = false;
        w.RemoveExtraWhitespaces = true;
        var tok = Load(folder, w);
        Assert.Equal([Id("h"), Id("el"), Id("lo")], tok.Encode("hello", addBos: false));
        Assert.Equal([Id("h"), Id("el"), Id("lo"), Id("▁hello")], tok.Encode("  hello   hello  ", addBos: false));
        Assert.Equal("hello hello", tok.Decode(tok.Encode("hello hello", addBos: false)));
    }

    [Fact]
    public void UserDefinedAndControlPiecesAreAtomic()
    {
        using var folder = new TempFolder();
        var w = Writer().Add("<tool>", 0, SentencePieceProtoWriter.UserDefined);
        var tok = Load(folder, w);
        int tool = 259 + Pieces.Length;
        Assert.Equal([Id("▁hello"), tool, 2], tok.Encode("hello<tool></s>", addBos: false));
        Assert.Equal(tool, tok.TokenToId("<tool>"));
        Assert.Equal("hello<tool></s>", tok.Decode([Id("▁hello"), tool, 2]));
        Assert.Equal("hello<tool>", tok.Decode([Id("▁hello"), tool, 2], skipSpecialTokens: true));
    }

    [Fact]
    public void TokenizerConfigDisablesBos()
    {
        using var folder = new TempFolder();
        folder.Write("tokenizer_config.json", """{"add_bos_token": false, "eos_token": "</s>"}""");
        var tok = Load(folder, Writer());
        Assert.False(tok.AddBosByDefault);
        Assert.Equal([Id("▁hello")], tok.Encode("hello"));
    }
}
