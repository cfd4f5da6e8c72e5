using System.Runtime.InteropServices;
using System.Text;

namespace Engine.Loader.Tokenization;

/// <summary>
/// SentencePiece-style BPE (Llama-2, Mistral, TinyLlama, Gemma): text → pieces where spaces are '▁', merged pairwise by
/// priority, then unknown characters fall back to &lt;0xNN&gt; byte pieces. Written here rather than taken from
/// Microsoft.ML.Tokenizers because the library's SentencePiece BPE breaks ties between equal merges in a different
/// order than SentencePiece and Hugging Face (e.g. "!!!!!!" → ▁! !!! !! instead of ▁! !! !!!).
///
/// The merge rule is the one both reference implementations use: repeatedly merge the adjacent pair with the best
/// priority, the leftmost pair among equals. The priority is the score of the merged piece (tokenizer.model, as
/// sentencepiece's bpe_model.cc) or the rank of the pair in the merges list (tokenizer.json, as HF tokenizers' BPE).
/// </summary>
internal sealed class SentencePieceBpe : TokenizerCore
{
    public const char Space = '▁';

    /// <summary>How a run of plain text (between added tokens) is turned into the '▁' form that is tokenized.</summary>
    public sealed class Normalization
    {
        /// <summary>sentencepiece remove_extra_whitespaces: trim spaces and collapse runs of them.</summary>
        public bool RemoveExtraWhitespaces { get; init; }
        /// <summary>Text prepended to every non-empty run (sentencepiece add_dummy_prefix, HF Prepend normalizer).</summary>
        public string? Prepend { get; init; }
        /// <summary>Literal replacements applied in order (HF Replace normalizer; sentencepiece escape_whitespaces = " " → "▁").</summary>
        public List<(string From, string To)> Replacements { get; init; } = [];
        public bool Nfc { get; init; }
        /// <summary>HF Metaspace pre-tokenizer: replace ' ' by '▁'; prepend "always", "first" (run at text start) or "never".</summary>
        public string? MetaspacePrepend { get; init; }
        public bool Metaspace { get; init; }
        /// <summary>HF Metaspace split = true: each '▁' starts a new word.</summary>
        public bool MetaspaceSplit { get; init; }
    }

    readonly string[] pieces;          // id → piece text (null-free; ids without a piece hold "")
    readonly bool[] hasPiece;
    readonly bool[] special;           // skipped by Decode(skipSpecialTokens: true)
    readonly bool[] mergeable;         // may be the result of a merge / an initial symbol (score mode)
    readonly float[]? scores;          // score mode (tokenizer.model)
    readonly Dictionary<long, (int Rank, int Id)>? merges; // rank mode (tokenizer.json): (leftId, rightId) → rank, result
    readonly Dictionary<string, int> pieceIds;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> lookup;
    readonly int[] byteIds = new int[256];
    readonly int[] byteOfId;           // id → byte value for <0xNN> pieces, -1 otherwise
    readonly int unkId;
    readonly bool byteFallback, fuseUnk, stripLeadingSpace;
    readonly Normalization norm;
    readonly SplitPreTokenizer atomic;
    readonly Dictionary<string, int> addedIds;

    public override int Size => pieces.Length;

    SentencePieceBpe(string[] pieces, bool[] hasPiece, bool[] special, bool[] mergeable, float[]? scores,
        Dictionary<long, (int, int)>? merges, int unkId, bool byteFallback, bool fuseUnk, bool stripLeadingSpace,
        Normalization norm, IReadOnlyList<AddedToken> added)
    {
        this.pieces = pieces; this.hasPiece = hasPiece; this.special = special; this.mergeable = mergeable;
        this.scores = scores; this.merges = merges; this.unkId = unkId; this.byteFallback = byteFallback;
        this.fuseUnk = fuseUnk; this.stripLeadingSpace = stripLeadingSpace; this.norm = norm;
        pieceIds = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int id = 0; id < pieces.Length; id++)
            if (hasPiece[id]) pieceIds.TryAdd(pieces[id], id);
        lookup = pieceIds.GetAlternateLookup<ReadOnlySpan<char>>();
        Array.Fill(byteIds, -1);
        byteOfId = new int[pieces.Length];
        Array.Fill(byteOfId, -1);
        for (int id = 0; id < pieces.Length; id++)
        {
            if (hasPiece[id] && TryParseBytePiece(pieces[id], out byte b))
            {
                byteOfId[id] = b;
                if (byteIds[b] < 0) byteIds[b] = id;
            }
        }
        addedIds = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var t in added) addedIds[t.Content] = t.Id;
        atomic = new SplitPreTokenizer(addedIds.Keys, []);
    }

    static bool TryParseBytePiece(string p, out byte b)
    {
        b = 0;
        return p.Length == 6 && p.StartsWith("<0x", StringComparison.Ordinal) && p[5] == '>'
            && byte.TryParse(p.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out b);
    }

    /// <summary>From a SentencePiece tokenizer.model (BPE model type).</summary>
    public static SentencePieceBpe FromModelFile(SentencePieceModelFile m, string path)
    {
        if (m.ModelType != SentencePieceModelFile.ModelTypeBpe)
            throw new ModelFormatException($"{path}: SentencePiece model type {SentencePieceModelFile.ModelTypeName(m.ModelType)} is not supported (only BPE)");
        if (m.TreatWhitespaceAsSuffix)
            throw new ModelFormatException($"{path}: treat_whitespace_as_suffix = true is not supported");
        int n = m.Pieces.Length;
        var hasPiece = new bool[n];
        var special = new bool[n];
        var mergeable = new bool[n];
        var added = new List<AddedToken>();
        for (int i = 0; i < n; i++)
        {
            hasPiece[i] = true;
            var k = m.Kinds[i];
            special[i] = k is PieceKind.Control or PieceKind.Unknown;
            mergeable[i] = k is PieceKind.Normal or PieceKind.UserDefined;
            // As Hugging Face's conversion does: control, unknown and user-defined pieces are matched whole in the text.
            if (k is PieceKind.Control or PieceKind.Unknown or PieceKind.UserDefined && m.Pieces[i].Length > 0)
                added.Add(new AddedToken(k == PieceKind.UserDefined ? m.Pieces[i].Replace(Space, ' ') : m.Pieces[i], i, special[i]));
        }
        int unk = (uint)m.UnkId < (uint)n ? m.UnkId : Array.IndexOf(m.Kinds, PieceKind.Unknown);
        var norm = new Normalization
        {
            RemoveExtraWhitespaces = m.RemoveExtraWhitespaces,
            Prepend = m.AddDummyPrefix ? (m.EscapeWhitespaces ? Space.ToString() : " ") : null,
            Replacements = m.EscapeWhitespaces ? [(" ", Space.ToString())] : [],
        };
        return new SentencePieceBpe(m.Pieces, hasPiece, special, mergeable, m.Scores, null, unk, m.ByteFallback,
            fuseUnk: true, stripLeadingSpace: m.AddDummyPrefix, norm, added);
    }

    /// <summary>From the parts of a non-byte-level tokenizer.json BPE model.</summary>
    public static SentencePieceBpe FromHfBpe(Dictionary<string, int> vocab, List<(string A, string B)> mergeList,
        IReadOnlyList<AddedToken> added, string? unkToken, bool byteFallback, bool fuseUnk, bool stripLeadingSpace,
        Normalization norm, string file)
    {
        int size = 0;
        foreach (int id in vocab.Values) size = Math.Max(size, id + 1);
        foreach (var t in added) size = Math.Max(size, t.Id + 1);
        var pieces = new string[size];
        Array.Fill(pieces, "");
        var hasPiece = new bool[size];
        var special = new bool[size];
        var mergeable = new bool[size];
        foreach (var (tok, id) in vocab)
        {
            if (!hasPiece[id]) { pieces[id] = tok; hasPiece[id] = true; mergeable[id] = true; }
        }
        foreach (var t in added)
        {
            pieces[t.Id] = t.Content; hasPiece[t.Id] = true; special[t.Id] |= t.Special;
        }
        var merges = new Dictionary<long, (int, int)>(mergeList.Count);
        for (int rank = 0; rank < mergeList.Count; rank++)
        {
            var (a, b) = mergeList[rank];
            if (!vocab.TryGetValue(a, out int ia) || !vocab.TryGetValue(b, out int ib) || !vocab.TryGetValue(a + b, out int ir))
                throw new ModelFormatException($"{file}: key 'model.merges[{rank}]': merge \"{a} {b}\" uses a token missing from model.vocab");
            merges.TryAdd(((long)ia << 32) | (uint)ib, (rank, ir));
        }
        int unk = -1;
        if (unkToken != null && !vocab.TryGetValue(unkToken, out unk))
        {
            var t = added.FirstOrDefault(x => x.Content == unkToken);
            unk = t?.Id ?? -1;
        }
        return new SentencePieceBpe(pieces, hasPiece, special, mergeable, null, merges, unk, byteFallback, fuseUnk,
            stripLeadingSpace, norm, added);
    }

    public override void Encode(string text, List<int> output)
    {
        foreach (var (offset, length, isAdded) in atomic.Split(text))
        {
            string piece = text.Substring(offset, length);
            if (isAdded && addedIds.TryGetValue(piece, out int id)) output.Add(id);
            else foreach (string word in Normalize(piece, atTextStart: offset == 0)) EncodeWord(word, output);
        }
    }

    /// <summary>One plain-text run → the '▁'-spelled words to tokenize (one word unless Metaspace splits).</summary>
    List<string> Normalize(string s, bool atTextStart)
    {
        if (norm.Nfc) s = NfcNormalizer.Apply(s);
        if (norm.RemoveExtraWhitespaces)
        {
            var sb = new StringBuilder(s.Length);
            foreach (char c in s)
                if (c != ' ' || (sb.Length > 0 && sb[^1] != ' ')) sb.Append(c);
            s = sb.ToString().TrimEnd(' ');
        }
        if (s.Length == 0) return [];
        if (norm.Prepend != null) s = norm.Prepend + s;
        foreach (var (from, to) in norm.Replacements) s = s.Replace(from, to, StringComparison.Ordinal);
        if (norm.Metaspace)
        {
            s = s.Replace(' ', Space);
            bool prepend = norm.MetaspacePrepend == "always" || (norm.MetaspacePrepend == "first" && atTextStart);
            if (prepend && s[0] != Space) s = Space + s;
            if (norm.MetaspaceSplit)
            {
                var words = new List<string>();
                int start = 0;
                for (int i = 1; i < s.Length; i++)
                    if (s[i] == Space) { words.Add(s[start..i]); start = i; }
                words.Add(s[start..]);
                return words;
            }
        }
        return [s];
    }

    /// <summary>A symbol of the word being merged: a span of it, and its id (-1 when not a token).</summary>
    struct Symbol { public int Start, Length, Id, Prev, Next; }

    /// <summary>Max-priority first, then leftmost.</summary>
    sealed class PairOrder : IComparer<(double Priority, int Left)>
    {
        public static readonly PairOrder Instance = new();
        public int Compare((double Priority, int Left) a, (double Priority, int Left) b)
        {
            int c = b.Priority.CompareTo(a.Priority);
            return c != 0 ? c : a.Left.CompareTo(b.Left);
        }
    }

    void EncodeWord(string word, List<int> output)
    {
        var symbols = new List<Symbol>(word.Length);
        for (int i = 0; i < word.Length;)
        {
            int len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            int id = lookup.TryGetValue(word.AsSpan(i, len), out int v) && mergeable[v] ? v : -1;
            symbols.Add(new Symbol { Start = i, Length = len, Id = id, Prev = symbols.Count - 1, Next = i + len < word.Length ? symbols.Count + 1 : -1 });
            i += len;
        }
        var sym = CollectionsMarshal.AsSpan(symbols);
        var queue = new PriorityQueue<(int Left, int Right, int Size, int Result), (double, int)>(PairOrder.Instance);

        void TryAdd(Span<Symbol> s, int left)
        {
            if (left < 0) return;
            int right = s[left].Next;
            if (right < 0 || s[left].Id < 0 || s[right].Id < 0) return;
            int size = s[left].Length + s[right].Length;
            if (merges != null)
            {
                if (merges.TryGetValue(((long)s[left].Id << 32) | (uint)s[right].Id, out var m))
                    queue.Enqueue((left, right, size, m.Id), (-(double)m.Rank, left));
            }
            else if (lookup.TryGetValue(word.AsSpan(s[left].Start, size), out int id) && mergeable[id])
            {
                queue.Enqueue((left, right, size, id), (scores![id], left));
            }
        }

        for (int i = 0; i < sym.Length; i++) TryAdd(sym, i);
        while (queue.TryDequeue(out var top, out _))
        {
            ref var l = ref sym[top.Left];
            ref var r = ref sym[top.Right];
            // Stale entries: either side has since been merged into something else.
            if (l.Length == 0 || r.Length == 0 || l.Length + r.Length != top.Size || l.Next != top.Right) continue;
            l.Length = top.Size;
            l.Id = top.Result;
            l.Next = r.Next;
            if (r.Next >= 0) sym[r.Next].Prev = top.Left;
            r.Length = 0;
            TryAdd(sym, l.Prev);
            TryAdd(sym, top.Left);
        }

        bool lastWasUnk = false;
        Span<byte> buf = stackalloc byte[8];
        for (int i = sym.Length == 0 ? -1 : 0; i >= 0; i = sym[i].Next)
        {
            if (sym[i].Id >= 0) { output.Add(sym[i].Id); lastWasUnk = false; continue; }
            var text = word.AsSpan(sym[i].Start, sym[i].Length);
            if (byteFallback)
            {
                int n = Encoding.UTF8.GetBytes(text, buf);
                bool all = true;
                for (int k = 0; k < n; k++) all &= byteIds[buf[k]] >= 0;
                if (all)
                {
                    for (int k = 0; k < n; k++) output.Add(byteIds[buf[k]]);
                    lastWasUnk = false;
                    continue;
                }
            }
            if (unkId < 0) continue; // no unknown token: the character is dropped (as HF does)
            if (!(fuseUnk && lastWasUnk)) output.Add(unkId);
            lastWasUnk = true;
        }
    }

    public override string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens)
    {
        var sb = new StringBuilder(ids.Length * 4);
        var bytes = new List<byte>();
        void FlushBytes()
        {
            if (bytes.Count == 0) return;
            sb.Append(Utf8Lossy(CollectionsMarshal.AsSpan(bytes)));
            bytes.Clear();
        }
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)pieces.Length || !hasPiece[id]) continue;
            if (skipSpecialTokens && special[id]) continue;
            if (byteOfId[id] >= 0) { bytes.Add((byte)byteOfId[id]); continue; }
            FlushBytes();
            sb.Append(pieces[id]);
        }
        FlushBytes();
        sb.Replace(Space, ' ');
        if (stripLeadingSpace && sb.Length > 0 && sb[0] == ' ') sb.Remove(0, 1);
        return sb.ToString();
    }

    public override string? TokenText(int id)
    {
        if ((uint)id >= (uint)pieces.Length || !hasPiece[id]) return null;
        if (byteOfId[id] >= 0)
        {
            byte b = (byte)byteOfId[id];
            return b < 0x80 ? ((char)b).ToString() : pieces[id];
        }
        return pieces[id].Replace(Space, ' ');
    }

    public override int? IdOf(string token) =>
        addedIds.TryGetValue(token, out int id) || pieceIds.TryGetValue(token, out id) ? id : null;
}
