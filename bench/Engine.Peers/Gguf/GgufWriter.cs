using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Engine.Loader;

namespace Engine.Peers.Gguf;

/// <summary>ggml tensor types this writer produces (values are ggml's enum).</summary>
public enum GgmlType : uint { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 }

/// <summary>
/// Writes GGUF version 3 files: header, typed key/value metadata, tensor infos, then the tensor data, each tensor
/// starting at a multiple of the alignment (general.alignment, 32 by default). Written from the format description
/// (little-endian; strings are a u64 byte count then UTF-8 bytes without a terminator; dims are ggml's ne order:
/// ne[0] is the innermost, contiguous dimension).
/// </summary>
public sealed class GgufWriter
{
    public const uint Alignment = 32;

    enum ValueType : uint { U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, Bool = 7, String = 8, Array = 9, U64 = 10, I64 = 11, F64 = 12 }

    readonly List<(string Key, Action<BinaryWriter> Write)> _kv = [];
    readonly List<TensorEntry> _tensors = [];

    /// <summary>A tensor: name, ggml type, ne (innermost first), and a producer of exactly ByteLength bytes.</summary>
    public sealed record TensorEntry(string Name, GgmlType Type, long[] Ne, long ByteLength, Func<byte[]> Data);

    public void Add(string key, string value) => _kv.Add((key, w => { w.Write((uint)ValueType.String); Str(w, value); }));
    public void Add(string key, uint value) => _kv.Add((key, w => { w.Write((uint)ValueType.U32); w.Write(value); }));
    public void Add(string key, int value) => _kv.Add((key, w => { w.Write((uint)ValueType.I32); w.Write(value); }));
    public void Add(string key, float value) => _kv.Add((key, w => { w.Write((uint)ValueType.F32); w.Write(value); }));
    public void Add(string key, bool value) => _kv.Add((key, w => { w.Write((uint)ValueType.Bool); w.Write((byte)(value ? 1 : 0)); }));

    public void AddStrings(string key, IReadOnlyList<string> values) => _kv.Add((key, w =>
    {
        w.Write((uint)ValueType.Array); w.Write((uint)ValueType.String); w.Write((ulong)values.Count);
        foreach (var s in values) Str(w, s);
    }));

    public void AddInts(string key, IReadOnlyList<int> values) => _kv.Add((key, w =>
    {
        w.Write((uint)ValueType.Array); w.Write((uint)ValueType.I32); w.Write((ulong)values.Count);
        foreach (var v in values) w.Write(v);
    }));

    public void AddFloats(string key, IReadOnlyList<float> values) => _kv.Add((key, w =>
    {
        w.Write((uint)ValueType.Array); w.Write((uint)ValueType.F32); w.Write((ulong)values.Count);
        foreach (var v in values) w.Write(v);
    }));

    static void Str(BinaryWriter w, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }

    /// <summary>Adds a tensor from row-major float data of logical shape [ne[n-1], ..., ne[0]], stored as <paramref name="type"/>.</summary>
    public void AddTensor(string name, GgmlType type, long[] ne, Func<float[]> data)
    {
        long n = ne.Aggregate(1L, (a, b) => a * b);
        if (type == GgmlType.Q8_0 && ne[0] % 32 != 0) throw new ArgumentException($"{name}: Q8_0 needs ne[0] % 32 == 0 (ne[0] = {ne[0]})");
        _tensors.Add(new TensorEntry(name, type, ne, ByteLength(type, n), () =>
        {
            var f = data();
            if (f.Length != n) throw new InvalidOperationException($"{name}: {f.Length} values for ne [{string.Join(", ", ne)}]");
            return Encode(f, type);
        }));
    }

    public static long ByteLength(GgmlType type, long n) => type switch
    {
        GgmlType.F32 => n * 4,
        GgmlType.F16 or GgmlType.BF16 => n * 2,
        GgmlType.Q8_0 => n / 32 * 34,
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    public static byte[] Encode(float[] f, GgmlType type)
    {
        switch (type)
        {
            case GgmlType.F32: return MemoryMarshal.AsBytes(f.AsSpan()).ToArray();
            case GgmlType.F16:
            {
                var h = new Half[f.Length];
                for (int i = 0; i < f.Length; i++) h[i] = (Half)f[i];
                return MemoryMarshal.AsBytes(h.AsSpan()).ToArray();
            }
            case GgmlType.BF16:
            {
                var b = new ushort[f.Length];
                for (int i = 0; i < f.Length; i++) b[i] = DTypes.FloatToBF16(f[i]);
                return MemoryMarshal.AsBytes(b.AsSpan()).ToArray();
            }
            case GgmlType.Q8_0:
            {
                // Blocks of 32 values along each row: an F16 scale d = max|x| / 127, then 32 int8 q = round(x / d).
                var o = new byte[f.Length / 32 * 34];
                for (int blk = 0; blk < f.Length / 32; blk++)
                {
                    var x = f.AsSpan(blk * 32, 32);
                    float amax = 0;
                    foreach (var v in x) amax = Math.Max(amax, Math.Abs(v));
                    float d = amax / 127f;
                    float inv = d != 0 ? 1f / d : 0f;
                    var dst = o.AsSpan(blk * 34, 34);
                    BinaryPrimitives.WriteHalfLittleEndian(dst, (Half)d);
                    for (int i = 0; i < 32; i++) dst[2 + i] = (byte)(sbyte)Math.Clamp((int)MathF.Round(x[i] * inv, MidpointRounding.AwayFromZero), -127, 127);
                }
                return o;
            }
            default: throw new ArgumentOutOfRangeException(nameof(type));
        }
    }

    static long Pad(long x) => (x + Alignment - 1) / Alignment * Alignment;

    /// <summary>Writes the file atomically (temporary file, then rename).</summary>
    public void Write(string path)
    {
        AtomicFile.Write(path, s =>
        {
            var bw = new BinaryWriter(new BufferedStream(s, 1 << 20), Encoding.UTF8, leaveOpen: true);
            bw.Write(Encoding.ASCII.GetBytes("GGUF"));
            bw.Write(3u);
            bw.Write((ulong)_tensors.Count);
            bw.Write((ulong)_kv.Count);
            foreach (var (key, write) in _kv) { Str(bw, key); write(bw); }
            long offset = 0;
            foreach (var t in _tensors)
            {
                Str(bw, t.Name);
                bw.Write((uint)t.Ne.Length);
                foreach (var d in t.Ne) bw.Write((ulong)d);
                bw.Write((uint)t.Type);
                bw.Write((ulong)offset);
                offset = Pad(offset + t.ByteLength);
            }
            bw.Flush();
            long pos = bw.BaseStream.Position;
            for (long p = pos; p < Pad(pos); p++) bw.Write((byte)0);
            foreach (var t in _tensors)
            {
                var bytes = t.Data();
                if (bytes.Length != t.ByteLength) throw new InvalidOperationException($"{t.Name}: {bytes.Length} bytes, expected {t.ByteLength}");
                bw.Write(bytes);
                for (long p = bytes.Length; p < Pad(bytes.Length); p++) bw.Write((byte)0);
            }
            bw.Flush();
        });
    }
}
