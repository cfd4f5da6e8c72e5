using System.Text;

namespace Engine.Loader.Tokenization;

/// <summary>Kinds of SentencePiece pieces (sentencepiece_model.proto, SentencePiece.Type).</summary>
internal enum PieceKind { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

/// <summary>
/// The parts of a SentencePiece <c>tokenizer.model</c> (a serialized <c>ModelProto</c>) that encoding needs, read with a
/// small protobuf reader of our own so that a truncated or corrupt file gives a one-line <see cref="ModelFormatException"/>.
/// Field numbers are those of sentencepiece_model.proto.
/// </summary>
internal sealed class SentencePieceModelFile
{
    public const int ModelTypeUnigram = 1, ModelTypeBpe = 2, ModelTypeWord = 3, ModelTypeChar = 4;

    public required string[] Pieces { get; init; }
    public required float[] Scores { get; init; }
    public required PieceKind[] Kinds { get; init; }
    // TrainerSpec
    public int ModelType { get; init; } = ModelTypeUnigram;
    public bool ByteFallback { get; init; }
    public bool TreatWhitespaceAsSuffix { get; init; }
    public int UnkId { get; init; }
    public int BosId { get; init; } = 1;
    public int EosId { get; init; } = 2;
    // NormalizerSpec
    public string NormalizerName { get; init; } = "";
    public int PrecompiledCharsmapLength { get; init; }
    public bool AddDummyPrefix { get; init; } = true;
    public bool RemoveExtraWhitespaces { get; init; } = true;
    public bool EscapeWhitespaces { get; init; } = true;

    public static string ModelTypeName(int t) => t switch
    {
        ModelTypeUnigram => "UNIGRAM", ModelTypeBpe => "BPE", ModelTypeWord => "WORD", ModelTypeChar => "CHAR", _ => t.ToString(),
    };

    public static SentencePieceModelFile Read(string path)
    {
        return Parse(TokenizerLimits.ReadFile(path), path);
    }

    public static SentencePieceModelFile Parse(byte[] data, string path)
    {
        if (data.Length == 0) throw new ModelFormatException($"{path}: empty file (expected a SentencePiece model)");
        var pieces = new List<string>();
        var scores = new List<float>();
        var kinds = new List<PieceKind>();
        bool haveTrainer = false, haveNormalizer = false;
        int modelType = ModelTypeUnigram, unkId = 0, bosId = 1, eosId = 2;
        bool byteFallback = false, suffix = false;
        string normName = "";
        int charsmapLen = 0;
        bool dummyPrefix = true, removeExtra = true, escape = true;

        var r = new ProtoReader(data, 0, data.Length, path);
        while (!r.End)
        {
            var (field, wire) = r.Tag();
            switch (field)
            {
                case 1 when wire == 2:
                {
                    var (start, len) = r.LengthDelimited();
                    var p = new ProtoReader(data, start, start + len, path);
                    string? piece = null; float score = 0; int type = 1;
                    while (!p.End)
                    {
                        var (f, w) = p.Tag();
                        if (f == 1 && w == 2) piece = p.String();
                        else if (f == 2 && w == 5) score = p.Float();
                        else if (f == 3 && w == 0) type = (int)p.Varint();
                        else p.Skip(w);
                    }
                    if (piece == null) throw new ModelFormatException($"{path}: piece #{pieces.Count} has no text (corrupt SentencePiece model)");
                    if (type < 1 || type > 6) throw new ModelFormatException($"{path}: piece #{pieces.Count} '{piece}' has unknown type {type}");
                    pieces.Add(piece); scores.Add(score); kinds.Add((PieceKind)type);
                    break;
                }
                case 2 when wire == 2:
                {
                    haveTrainer = true;
                    var (start, len) = r.LengthDelimited();
                    var p = new ProtoReader(data, start, start + len, path);
                    while (!p.End)
                    {
                        var (f, w) = p.Tag();
                        if (w != 0) { p.Skip(w); continue; }
                        long v = p.Varint();
                        switch (f)
                        {
                            case 3: modelType = (int)v; break;
                            case 24: suffix = v != 0; break;
                            case 35: byteFallback = v != 0; break;
                            case 40: unkId = (int)v; break;
                            case 41: bosId = (int)v; break;
                            case 42: eosId = (int)v; break;
                        }
                    }
                    break;
                }
                case 3 when wire == 2:
                {
                    haveNormalizer = true;
                    var (start, len) = r.LengthDelimited();
                    var p = new ProtoReader(data, start, start + len, path);
                    while (!p.End)
                    {
                        var (f, w) = p.Tag();
                        if (f == 1 && w == 2) normName = p.String();
                        else if (f == 2 && w == 2) charsmapLen = p.LengthDelimited().Length;
                        else if (f == 3 && w == 0) dummyPrefix = p.Varint() != 0;
                        else if (f == 4 && w == 0) removeExtra = p.Varint() != 0;
                        else if (f == 5 && w == 0) escape = p.Varint() != 0;
                        else p.Skip(w);
                    }
                    break;
                }
                default:
                    r.Skip(wire);
                    break;
            }
        }
        if (pieces.Count == 0) throw new ModelFormatException($"{path}: no pieces (not a SentencePiece model, or truncated)");
        if (!haveTrainer || !haveNormalizer)
            throw new ModelFormatException($"{path}: missing {(haveTrainer ? "normalizer_spec" : "trainer_spec")} (not a SentencePiece model, or truncated)");
        return new SentencePieceModelFile
        {
            Pieces = pieces.ToArray(), Scores = scores.ToArray(), Kinds = kinds.ToArray(),
            ModelType = modelType, ByteFallback = byteFallback, TreatWhitespaceAsSuffix = suffix,
            UnkId = unkId, BosId = bosId, EosId = eosId,
            NormalizerName = normName, PrecompiledCharsmapLength = charsmapLen,
            AddDummyPrefix = dummyPrefix, RemoveExtraWhitespaces = removeExtra, EscapeWhitespaces = escape,
        };
    }

    /// <summary>Bounds-checked reader of protobuf wire format over data[pos..end).</summary>
    struct ProtoReader(byte[] data, int pos, int end, string path)
    {
        public readonly bool End => pos >= end;

        readonly ModelFormatException Corrupt(string why) =>
            new($"{path}: not a valid SentencePiece model ({why} at byte {pos}; truncated or corrupt file)");

        public long Varint()
        {
            ulong v = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (pos >= end) throw Corrupt("varint runs past the end");
                byte b = data[pos++];
                v |= (ulong)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return (long)v;
            }
            throw Corrupt("varint longer than 10 bytes");
        }

        public (int Field, int Wire) Tag()
        {
            long t = Varint();
            int wire = (int)(t & 7);
            long field = t >> 3;
            if (field <= 0 || field > int.MaxValue) throw Corrupt($"invalid field number {field}");
            return ((int)field, wire);
        }

        public (int Start, int Length) LengthDelimited()
        {
            long len = Varint();
            if (len < 0 || len > end - pos) throw Corrupt($"length {len} runs past the end");
            int start = pos;
            pos += (int)len;
            return (start, (int)len);
        }

        public string String()
        {
            var (start, len) = LengthDelimited();
            try { return new UTF8Encoding(false, true).GetString(data, start, len); }
            catch (DecoderFallbackException) { throw Corrupt("string is not valid UTF-8"); }
        }

        public float Float()
        {
            if (end - pos < 4) throw Corrupt("fixed32 runs past the end");
            float f = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(pos, 4));
            pos += 4;
            return f;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: if (end - pos < 8) throw Corrupt("fixed64 runs past the end"); pos += 8; break;
                case 2: LengthDelimited(); break;
                case 5: if (end - pos < 4) throw Corrupt("fixed32 runs past the end"); pos += 4; break;
                default: throw Corrupt($"unsupported wire type {wire}");
            }
        }
    }
}
