using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Engine.Loader;

namespace Engine.Training;

/// <summary>
/// A word-level vocabulary expressed as a byte-level BPE tokenizer.json that the engine's loader (and Hugging Face)
/// reads: ids 0–255 are the 256 bytes (GPT-2's byte-to-unicode characters), then one token per listed word, then the
/// intermediate pieces the merges need, then the special BOS token (added in front by a TemplateProcessing
/// post-processor). Each word gets a left-to-right chain of merges (Ġ + P → ĠP, ĠP + a → ĠPa, ...). Words are either
/// space-prefixed (" Paris") or capitalised without a space ("Smith", used at the start of a sentence); all
/// space-prefixed chains rank before the others, so a pre-token (GPT-2 regex) that spells a listed word always becomes
/// that one token, and any other text falls back to bytes and partial pieces: every text still encodes and decodes.
/// </summary>
public sealed class WordTokenizer
{
    public const string BosText = "<|bos|>";
    static readonly Regex Gpt2Split = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    readonly Dictionary<string, int> _vocab = new(StringComparer.Ordinal);   // byte-level string → id
    readonly List<string> _byId = [];
    readonly List<(string A, string B)> _merges = [];
    readonly Dictionary<string, int> _words = new(StringComparer.Ordinal);   // plain word text → id
    static readonly char[] ByteToChar = BuildByteMap();

    public IReadOnlyList<string> Words { get; }
    public int Bos { get; }
    public int VocabSize => _byId.Count;

    public WordTokenizer(IEnumerable<string> words)
    {
        for (int b = 0; b < 256; b++) Add(ByteToChar[b].ToString());
        var list = words.Distinct(StringComparer.Ordinal).ToList();
        foreach (var w in list)
        {
            if (w.Length < 2) throw new ArgumentException($"word '{w}' is too short");
            bool spaced = w[0] == ' ';
            if (!spaced && !char.IsUpper(w[0])) throw new ArgumentException($"word '{w}' must start with a space or a capital letter");
            if (w.Skip(1).Any(ch => !char.IsLetter(ch)) || (spaced && !char.IsLetter(w[1]))) throw new ArgumentException($"word '{w}' must be letters");
        }
        // word tokens first (ids 256..), pieces after
        foreach (var w in list) _words[w] = Add(Level(w));
        foreach (var group in new[] { list.Where(w => w[0] == ' '), list.Where(w => w[0] != ' ') })
            foreach (var w in group)
            {
                string s = Level(w);
                string piece = s[..1];
                for (int i = 1; i < s.Length; i++)
                {
                    string next = piece + s[i];
                    if (!_vocab.ContainsKey(next)) Add(next);
                    if (!_merges.Contains((piece, s[i].ToString()))) _merges.Add((piece, s[i].ToString()));
                    piece = next;
                }
            }
        Bos = Add(BosText);
        Words = list;
    }

    int Add(string s)
    {
        if (_vocab.TryGetValue(s, out int id)) return id;
        id = _byId.Count;
        _vocab[s] = id; _byId.Add(s);
        return id;
    }

    static char[] BuildByteMap()
    {
        var map = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            map[b] = keep ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    static string Level(string text) => new(Encoding.UTF8.GetBytes(text).Select(b => ByteToChar[b]).ToArray());

    /// <summary>The id of a listed word (" Paris", "Smith").</summary>
    public int Word(string word) => _words.TryGetValue(word, out int id) ? id : throw new ArgumentException($"'{word}' is not a word of the vocabulary");
    public bool IsWord(string word) => _words.ContainsKey(word);

    /// <summary>Encodes text as the tokenizer.json does (GPT-2 pre-tokenizer, then the word chains), with BOS first when asked.</summary>
    public int[] Encode(string text, bool bos = true)
    {
        var ids = new List<int>();
        if (bos) ids.Add(Bos);
        foreach (Match m in Gpt2Split.Matches(text))
        {
            if (_words.TryGetValue(m.Value, out int w)) { ids.Add(w); continue; }
            // BPE with left-to-right chains: the longest chain prefix of the pre-token, then bytes
            string s = Level(m.Value);
            int start = 0;
            while (start < s.Length)
            {
                int len = 1;
                if (start == 0)
                    while (len < s.Length && _vocab.ContainsKey(s[..(len + 1)]) && _merges.Contains((s[..len], s[len].ToString()))) len++;
                ids.Add(_vocab[s.Substring(start, len)]);
                start += len;
            }
        }
        return [.. ids];
    }

    public string TokenText(int id)
    {
        if (id == Bos) return BosText;
        var bytes = _byId[id].Select(ch => (byte)Array.IndexOf(ByteToChar, ch)).ToArray();
        return Encoding.UTF8.GetString(bytes);
    }

    public string Decode(IEnumerable<int> ids) => string.Concat(ids.Select(TokenText));

    /// <summary>Writes tokenizer.json (BPE, ByteLevel pre-tokenizer and decoder, BOS template) and tokenizer_config.json.</summary>
    public void Write(string folder)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation"); w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            w.WriteStartObject();
            w.WriteNumber("id", Bos); w.WriteString("content", BosText); w.WriteBoolean("single_word", false); w.WriteBoolean("lstrip", false);
            w.WriteBoolean("rstrip", false); w.WriteBoolean("normalized", false); w.WriteBoolean("special", true);
            w.WriteEndObject();
            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "ByteLevel"); w.WriteBoolean("add_prefix_space", false); w.WriteBoolean("trim_offsets", true); w.WriteBoolean("use_regex", true);
            w.WriteEndObject();
            w.WriteStartObject("post_processor");
            w.WriteString("type", "TemplateProcessing");
            w.WriteStartArray("single");
            w.WriteStartObject(); w.WriteStartObject("SpecialToken"); w.WriteString("id", BosText); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
            w.WriteStartObject(); w.WriteStartObject("Sequence"); w.WriteString("id", "A"); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteStartArray("pair");
            w.WriteStartObject(); w.WriteStartObject("SpecialToken"); w.WriteString("id", BosText); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
            w.WriteStartObject(); w.WriteStartObject("Sequence"); w.WriteString("id", "A"); w.WriteNumber("type_id", 0); w.WriteEndObject(); w.WriteEndObject();
            w.WriteStartObject(); w.WriteStartObject("Sequence"); w.WriteString("id", "B"); w.WriteNumber("type_id", 1); w.WriteEndObject(); w.WriteEndObject();
            w.WriteEndArray();
            w.WriteStartObject("special_tokens");
            w.WriteStartObject(BosText); w.WriteString("id", BosText); w.WriteStartArray("ids"); w.WriteNumberValue(Bos); w.WriteEndArray();
            w.WriteStartArray("tokens"); w.WriteStringValue(BosText); w.WriteEndArray(); w.WriteEndObject();
            w.WriteEndObject();
            w.WriteEndObject();
            w.WriteStartObject("decoder");
            w.WriteString("type", "ByteLevel"); w.WriteBoolean("add_prefix_space", false); w.WriteBoolean("trim_offsets", true); w.WriteBoolean("use_regex", true);
            w.WriteEndObject();
            w.WriteStartObject("model");
            w.WriteString("type", "BPE"); w.WriteNull("dropout"); w.WriteNull("unk_token"); w.WriteNull("continuing_subword_prefix"); w.WriteNull("end_of_word_suffix");
            w.WriteBoolean("fuse_unk", false); w.WriteBoolean("byte_fallback", false); w.WriteBoolean("ignore_merges", false);
            w.WriteStartObject("vocab");
            for (int i = 0; i < _byId.Count; i++) if (i != Bos) w.WriteNumber(_byId[i], i);
            w.WriteEndObject();
            w.WriteStartArray("merges");
            foreach (var (a, b) in _merges) { w.WriteStartArray(); w.WriteStringValue(a); w.WriteStringValue(b); w.WriteEndArray(); }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        AtomicFile.Write(Path.Combine(folder, "tokenizer.json"), s => s.Write(ms.ToArray()));
        AtomicFile.WriteText(Path.Combine(folder, "tokenizer_config.json"),
            "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"bos_token\": \"" + BosText + "\",\n  \"eos_token\": \"" + BosText + "\",\n  \"add_bos_token\": true\n}\n");
    }
}
