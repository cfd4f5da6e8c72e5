using System.Text;
using Engine.Loader;
using Engine.Loader.Tokenization;
using Engine.Tests.Support;
using Engine.Tests.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Robustness;

/// <summary>
/// ModelTokenizer.TryLoad on mutated tokenizer files (fixed seed): tokenizer.json (byte-level and SentencePiece-style,
/// with tokenizer_config.json), vocab.json + merges.txt, and tokenizer.model (protobuf). Every case loads (and then
/// encodes random text, decodes random ids and shows token texts without error) or ends in a one-line
/// ModelFormatException naming the file.
/// </summary>
public class TokenizerFuzzTests(ITestOutputHelper output)
{
    const int Cases = 10_000;

    static readonly string[] Texts = ["", " ", "hello world", "<|end|>hello<|start|>", "<s>Hello</s>", "!!!!!!", "\0\uD800é▁ \n\t", "  held  world ", "日本語 🙂 x", new string('a', 300)];

    /// <summary>Uses a loaded tokenizer the way the CLI does; any exception other than an EngineException is a failure.</summary>
    static void Exercise(ModelTokenizer? tok, Random r)
    {
        if (tok == null) return;
        foreach (var text in new[] { Texts[r.Next(Texts.Length)], Mutate.Text(r) })
        {
            var ids = tok.Encode(text, addBos: r.Next(3) == 0 && tok.BosId != null ? true : false);
            foreach (int id in ids)
                if ((uint)id >= (uint)tok.VocabSize) throw new InvalidOperationException($"Encode gave id {id} outside [0, {tok.VocabSize})");
            tok.Decode(ids);
        }
        var some = Enumerable.Range(0, 6).Select(_ => r.Next(tok.VocabSize)).ToArray();
        tok.Decode(some, skipSpecialTokens: r.Next(2) == 0);
        foreach (int id in some) tok.TokenText(id);
        tok.TokenToId(Mutate.Text(r));
    }

    static Func<Exception, string?> NamesFile(string folder) => e =>
        e is not ModelFormatException ? $"{e.GetType().Name}, expected ModelFormatException"
        : !e.Message.StartsWith(folder, StringComparison.Ordinal) ? "message does not name the file"
        : FuzzOutcomes.OneLine(e);

    [Fact]
    public void TokenizerJson()
    {
        using var dir = TempDir.InMemory();
        var r = new Random(7001);
        var outcomes = new FuzzOutcomes("tokenizer.json (+ tokenizer_config.json)");
        string[] bases =
        [
            TokenizerJsonTests.SyntheticByteLevel(false), TokenizerJsonTests.SyntheticByteLevel(true, ignoreMerges: true),
            TokenizerJsonTests.SyntheticSentencePieceJson(false), TokenizerJsonTests.SyntheticSentencePieceJson(true, metaspace: true),
        ];
        string[] configs = ["""{"add_bos_token": true, "bos_token": "<s>", "eos_token": {"content": "</s>"}}""", """{"added_tokens_decoder": {"300": {"content": "<x>", "special": true}}}"""];
        string tj = dir.File("tokenizer.json"), tc = dir.File("tokenizer_config.json");
        for (int i = 0, n = FuzzLog.Scaled(Cases); i < n; i++)
        {
            string json = bases[r.Next(bases.Length)];
            byte[] bytes = (r.Next(10)) switch
            {
                < 6 => Encoding.UTF8.GetBytes(Mutate.Json(json, r)),
                < 9 => Mutate.Bytes(Encoding.UTF8.GetBytes(json), r),
                _ => Encoding.UTF8.GetBytes(r.Next(2) == 0 ? Mutate.Deep(r, 1 + r.Next(400)) : json),
            };
            string? config = r.Next(4) == 0 ? (r.Next(2) == 0 ? Mutate.Json(configs[r.Next(2)], r) : configs[r.Next(2)]) : null;
            File.WriteAllBytes(tj, bytes);
            if (config != null) File.WriteAllText(tc, config); else File.Delete(tc);
            var cfg = r.Next(3) == 0 ? TokenizerFiles.Config("llama", r.Next(1, 400), r.Next(3) == 0 ? r.Next(-2, 400) : null) : null;
            var rr = new Random(i);
            outcomes.Run(() => Encoding.UTF8.GetString(bytes) + "\n    config: " + config, () => Exercise(ModelTokenizer.TryLoad(dir.Path, cfg), rr), NamesFile(dir.Path));
        }
        outcomes.Report(output, FuzzLog.Scaled(Cases));
    }

    [Fact]
    public void VocabAndMerges()
    {
        using var dir = TempDir.InMemory();
        var r = new Random(7002);
        var outcomes = new FuzzOutcomes("vocab.json + merges.txt");
        List<string> tokens = ["h", "e", "l", "o", "Ġ", "w", "r", "d", "he", "ll", "hell", "hello", "Ġw", "or", "Ġwor", "ld", "Ġworld", "<|endoftext|>"];
        string vocab = "{" + string.Join(",", tokens.Select((t, i) => $"\"{t}\":{i}")) + "}";
        string merges = "#version: 0.2\nh e\nl l\nhe ll\nhell o\nĠ w\no r\nĠw or\nl d\nĠwor ld\n";
        string vj = dir.File("vocab.json"), mt = dir.File("merges.txt");
        for (int i = 0, n = FuzzLog.Scaled(Cases); i < n; i++)
        {
            byte[] v = Encoding.UTF8.GetBytes(vocab), m = Encoding.UTF8.GetBytes(merges);
            switch (r.Next(5))
            {
                case 0: v = Encoding.UTF8.GetBytes(Mutate.Json(vocab, r)); break;
                case 1: v = Mutate.Bytes(v, r); break;
                case 2: m = Mutate.Bytes(m, r); break;
                case 3: m = Mutate.Bytes(m, r); v = Mutate.Bytes(v, r); break;
                default:
                    if (r.Next(2) == 0) m = Encoding.UTF8.GetBytes(merges + string.Join("\n", Enumerable.Range(0, r.Next(5)).Select(_ => Mutate.Text(r) + " " + Mutate.Text(r))));
                    else v = Encoding.UTF8.GetBytes(vocab.TrimEnd('}') + $",\"{Mutate.Text(r).Replace("\"", "")}\":{(r.Next(20) == 0 ? r.Next(-5, 1 << 25) : r.Next(-5, 5000))}}}");
                    break;
            }
            File.WriteAllBytes(vj, v);
            if (r.Next(40) == 0) File.Delete(mt); else File.WriteAllBytes(mt, m);
            var rr = new Random(i);
            var cfg = r.Next(4) == 0 ? TokenizerFiles.Config("qwen2", 18, null) : null;
            outcomes.Run(() => Encoding.UTF8.GetString(v) + "\n    merges: " + Encoding.UTF8.GetString(m), () => Exercise(ModelTokenizer.TryLoad(dir.Path, cfg), rr), NamesFile(dir.Path));
        }
        outcomes.Report(output, FuzzLog.Scaled(Cases));
    }

    [Fact]
    public void SentencePieceModel()
    {
        using var dir = TempDir.InMemory();
        var r = new Random(7003);
        var outcomes = new FuzzOutcomes("tokenizer.model (SentencePiece protobuf)");
        var w = new SentencePieceProtoWriter().AddLlamaPrelude();
        string[] pieces = ["▁!", "!!", "▁h", "el", "!!!", "▁hel", "lo", "▁hello", "▁▁", "▁", "!", "h", "e", "l", "o"];
        for (int k = 0; k < pieces.Length; k++) w.Add(pieces[k], -k);
        var valid = w.ToBytes();
        var small = new SentencePieceProtoWriter { ByteFallback = false }.Add("<unk>", 0, SentencePieceProtoWriter.Unknown).Add("▁a", -1).Add("a", -2).Add("▁", -3).ToBytes();
        string path = dir.File("tokenizer.model");
        for (int i = 0, n = FuzzLog.Scaled(Cases); i < n; i++)
        {
            var src = r.Next(3) == 0 ? small : valid;
            byte[] bytes = r.Next(20) switch
            {
                0 => src[..r.Next(src.Length)],
                1 => [.. src, .. Enumerable.Range(0, r.Next(1, 12)).Select(_ => (byte)r.Next(256))],
                _ => Mutate.Bytes(src, r),
            };
            File.WriteAllBytes(path, bytes);
            var rr = new Random(i);
            outcomes.Run(() => Convert.ToBase64String(bytes), () => Exercise(ModelTokenizer.TryLoad(dir.Path, null), rr), NamesFile(dir.Path));
        }
        outcomes.Report(output, FuzzLog.Scaled(Cases));
    }
}
