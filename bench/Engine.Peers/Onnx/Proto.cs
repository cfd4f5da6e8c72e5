using System.Text;

namespace Engine.Peers.Onnx;

/// <summary>
/// A minimal protocol-buffers encoder: a message is a list of (field number, value) pairs written in order.
/// Wire types: varint (0) for integers and enums, fixed32 (5) for floats, length-delimited (2) for strings, bytes,
/// nested messages and packed repeated integers. Sizes of nested messages are computed before writing, so large
/// byte payloads (weights) are written straight to the stream without building the whole message in memory twice.
/// </summary>
public sealed class ProtoMessage
{
    abstract record Field(int Number);
    sealed record VarintField(int Number, ulong Value) : Field(Number);
    sealed record Fixed32Field(int Number, uint Value) : Field(Number);
    sealed record BytesField(int Number, byte[] Value) : Field(Number);
    sealed record MessageField(int Number, ProtoMessage Value) : Field(Number);
    sealed record PackedField(int Number, long[] Values) : Field(Number);

    readonly List<Field> _fields = [];
    long _size = -1;

    public ProtoMessage Int(int field, long value) { _fields.Add(new VarintField(field, (ulong)value)); _size = -1; return this; }
    public ProtoMessage Float(int field, float value) { _fields.Add(new Fixed32Field(field, BitConverter.SingleToUInt32Bits(value))); _size = -1; return this; }
    public ProtoMessage String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));
    public ProtoMessage Bytes(int field, byte[] value) { _fields.Add(new BytesField(field, value)); _size = -1; return this; }
    public ProtoMessage Message(int field, ProtoMessage value) { _fields.Add(new MessageField(field, value)); _size = -1; return this; }
    public ProtoMessage Packed(int field, long[] values) { _fields.Add(new PackedField(field, values)); _size = -1; return this; }

    static int VarintSize(ulong v) { int n = 1; while (v >= 0x80) { v >>= 7; n++; } return n; }
    static int TagSize(int field) => VarintSize((ulong)field << 3);
    static long PackedSize(long[] vs) { long n = 0; foreach (var v in vs) n += VarintSize((ulong)v); return n; }

    public long Size
    {
        get
        {
            if (_size >= 0) return _size;
            long n = 0;
            foreach (var f in _fields)
            {
                n += TagSize(f.Number);
                n += f switch
                {
                    VarintField v => VarintSize(v.Value),
                    Fixed32Field => 4,
                    BytesField b => VarintSize((ulong)b.Value.Length) + b.Value.Length,
                    MessageField m => VarintSize((ulong)m.Value.Size) + m.Value.Size,
                    PackedField p => VarintSize((ulong)PackedSize(p.Values)) + PackedSize(p.Values),
                    _ => throw new InvalidOperationException(),
                };
            }
            return _size = n;
        }
    }

    static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        s.WriteByte((byte)v);
    }

    static void WriteTag(Stream s, int field, int wire) => WriteVarint(s, ((ulong)field << 3) | (uint)wire);

    public void WriteTo(Stream s)
    {
        Span<byte> b4 = stackalloc byte[4];
        foreach (var f in _fields)
        {
            switch (f)
            {
                case VarintField v: WriteTag(s, f.Number, 0); WriteVarint(s, v.Value); break;
                case Fixed32Field x:
                    WriteTag(s, f.Number, 5);
                    System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(b4, x.Value);
                    s.Write(b4);
                    break;
                case BytesField b: WriteTag(s, f.Number, 2); WriteVarint(s, (ulong)b.Value.Length); s.Write(b.Value); break;
                case MessageField m: WriteTag(s, f.Number, 2); WriteVarint(s, (ulong)m.Value.Size); m.Value.WriteTo(s); break;
                case PackedField p:
                    WriteTag(s, f.Number, 2); WriteVarint(s, (ulong)PackedSize(p.Values));
                    foreach (var v in p.Values) WriteVarint(s, (ulong)v);
                    break;
            }
        }
    }

    public byte[] ToArray()
    {
        var ms = new MemoryStream();
        WriteTo(ms);
        return ms.ToArray();
    }
}
