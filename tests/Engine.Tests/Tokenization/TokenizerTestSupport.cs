using System.Text;
using System.Text.Json;
using Engine.Loader;
using Engine.Tests.Support;

namespace Engine.Tests.Tokenization;

/// <summary>The llama.cpp tokenizer cases in ../shared/tokenizers/FAMILY/cases.inp and cases.out (ids from HF tokenizers).</summary>
internal static class TokenizerCases
{
    public const int Count = 46;

    /// <summary>Theory data: the case indices 0..45 (the files are read inside the test, which is skipped without them).</summary>
    public static IEnumerable<object[]> Indices => Enumerable.Range(0, Count).Select(i => new object[] { i });

    static readonly Dictionary<string, (string Text, int[] Ids)[]> Cache = [];

    public static (string Text, int[] Ids)[] Load(string family)
    {
        lock (Cache)
        {
            if (Cache.TryGetValue(family, out var c)) return c;
            string dir = TestPaths.SharedPath("tokenizers", family) ?? throw new InvalidOperationException($"../shared/tokenizers/{family} is not present");
            string[] inputs = File.ReadAllText(Path.Combine(dir, "cases.inp")).Split("\n__ggml_vocab_test__\n");
            if (inputs[^1].Length != 0) throw new InvalidOperationException("cases.inp does not end with a separator");
            string[] outputs = File.ReadAllText(Path.Combine(dir, "cases.out")).Split('\n');
            if (outputs.Length > 0 && outputs[^1].Length == 0) outputs = outputs[..^1];
            if (outputs.Length != inputs.Length - 1) throw new InvalidOperationException($"{inputs.Length - 1} inputs but {outputs.Length} outputs");
            var cases = new (string, int[])[outputs.Length];
            for (int i = 0; i < outputs.Length; i++)
                cases[i] = (inputs[i], outputs[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray());
            return Cache[family] = cases;
        }
    }

    /// <summary>A case's text, escaped for messages.</summary>
    public static string Show(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (char ch in s.Length > 80 ? s[..80] + "…" : s)
            sb.Append(ch switch { '\n' => "\\n", '\t' => "\\t", '"' => "\\\"", _ => ch.ToString() });
        return sb.Append('"').ToString();
    }

    public static string Ids(IEnumerable<int> ids) => "[" + string.Join(", ", ids) + "]";
}

/// <summary>A fresh folder under the temp directory, deleted on Dispose.</summary>
internal sealed class TempFolder : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "engine-tok-" + Guid.NewGuid().ToString("N")[..12]);

    public TempFolder() => Directory.CreateDirectory(Path);

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public string Write(string name, string text) { System.IO.File.WriteAllText(File(name), text); return File(name); }

    public string Write(string name, byte[] bytes) { System.IO.File.WriteAllBytes(File(name), bytes); return File(name); }

    public string CopyShared(params string[] parts)
    {
        string src = TestPaths.SharedPath(parts) ?? throw new InvalidOperationException($"../shared/{string.Join('/', parts)} is not present");
        string dst = File(System.IO.Path.GetFileName(src));
        System.IO.File.Copy(src, dst);
        return dst;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Builders for tokenizer files written by tests.</summary>
internal static class TokenizerFiles
{
    /// <summary>GPT-2's byte → character table (bytes_to_unicode), to spell byte-level vocabularies in tests.</summary>
    public static string ByteLevel(string text)
    {
        var table = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
            table[b] = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF ? (char)b : (char)(256 + next++);
        return new string(Encoding.UTF8.GetBytes(text).Select(b => table[b]).ToArray());
    }

    /// <summary>A tokenizer.json with a BPE model; <paramref name="writeRest"/> writes the other top-level members.</summary>
    public static string TokenizerJson(IEnumerable<KeyValuePair<string, int>> vocab, IEnumerable<(string A, string B)> merges,
        bool mergesAsPairs, Action<Utf8JsonWriter> writeRest, Action<Utf8JsonWriter>? writeModelExtras = null)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            writeRest(w);
            w.WriteStartObject("model");
            w.WriteString("type", "BPE");
            w.WriteNull("dropout");
            writeModelExtras?.Invoke(w);
            w.WriteStartObject("vocab");
            foreach (var (k, v) in vocab) w.WriteNumber(k, v);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (a, b) in merges)
            {
                if (mergesAsPairs) { w.WriteStartArray(); w.WriteStringValue(a); w.WriteStringValue(b); w.WriteEndArray(); }
                else w.WriteStringValue(a + " " + b);
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    public static void AddedTokens(Utf8JsonWriter w, params (int Id, string Content, bool Special)[] tokens)
    {
        w.WriteStartArray("added_tokens");
        foreach (var (id, content, special) in tokens)
        {
            w.WriteStartObject();
            w.WriteNumber("id", id);
            w.WriteString("content", content);
            w.WriteBoolean("single_word", false);
            w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false);
            w.WriteBoolean("normalized", false);
            w.WriteBoolean("special", special);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>Writes a raw JSON value (e.g. a pre_tokenizer object) under a key.</summary>
    public static void Raw(Utf8JsonWriter w, string key, string json)
    {
        w.WritePropertyName(key);
        w.WriteRawValue(json);
    }

    /// <summary>A minimal model config for BOS/EOS tests.</summary>
    public static ModelConfig Config(string modelType, int vocabSize, int? bos, params int[] eos) => new()
    {
        ModelType = modelType, NLayers = 1, DModel = 8, NHeads = 1, NKvHeads = 1, HeadDim = 8, DMlp = 16,
        VocabSize = vocabSize, ContextLength = 16, Norm = NormKind.RmsNorm, NormEps = 1e-5f,
        Activation = ActivationKind.Silu, Positions = PositionKind.Rotary, RotaryDim = 8, AttnScale = 1f,
        BosTokenId = bos, EosTokenIds = eos,
    };
}

/// <summary>Writes SentencePiece ModelProto files (the subset the loader reads) for tests without ../shared.</summary>
internal sealed class SentencePieceProtoWriter
{
    public const int Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6;
    readonly List<(string Piece, float Score, int Type)> pieces = [];
    public int ModelType { get; set; } = 2; // BPE
    public bool ByteFallback { get; set; } = true;
    public bool AddDummyPrefix { get; set; } = true;
    public bool RemoveExtraWhitespaces { get; set; }

    public SentencePieceProtoWriter Add(string piece, float score, int type = Normal) { pieces.Add((piece, score, type)); return this; }

    /// <summary>&lt;unk&gt;, &lt;s&gt;, &lt;/s&gt; then the 256 byte pieces, as Llama's model starts.</summary>
    public SentencePieceProtoWriter AddLlamaPrelude()
    {
        Add("<unk>", 0, Unknown).Add("<s>", 0, Control).Add("</s>", 0, Control);
        for (int b = 0; b < 256; b++) Add($"<0x{b:X2}>", 0, Byte);
        return this;
    }

    public byte[] ToBytes()
    {
        var model = new List<byte>();
        foreach (var (piece, score, type) in pieces)
        {
            var sp = new List<byte>();
            Bytes(sp, 1, Encoding.UTF8.GetBytes(piece));
            Tag(sp, 2, 5); sp.AddRange(BitConverter.GetBytes(score));
            Tag(sp, 3, 0); Varint(sp, (ulong)type);
            Bytes(model, 1, sp.ToArray());
        }
        var trainer = new List<byte>();
        Tag(trainer, 3, 0); Varint(trainer, (ulong)ModelType);
        Tag(trainer, 35, 0); Varint(trainer, ByteFallback ? 1UL : 0UL);
        Bytes(model, 2, trainer.ToArray());
        var norm = new List<byte>();
        Bytes(norm, 1, Encoding.UTF8.GetBytes("identity"));
        Tag(norm, 3, 0); Varint(norm, AddDummyPrefix ? 1UL : 0UL);
        Tag(norm, 4, 0); Varint(norm, RemoveExtraWhitespaces ? 1UL : 0UL);
        Tag(norm, 5, 0); Varint(norm, 1);
        Bytes(model, 3, norm.ToArray());
        return model.ToArray();
    }

    static void Varint(List<byte> o, ulong v)
    {
        while (v >= 0x80) { o.Add((byte)(v | 0x80)); v >>= 7; }
        o.Add((byte)v);
    }

    static void Tag(List<byte> o, int field, int wire) => Varint(o, (ulong)((field << 3) | wire));

    static void Bytes(List<byte> o, int field, byte[] b) { Tag(o, field, 2); Varint(o, (ulong)b.Length); o.AddRange(b); }
}
