using System.IO.MemoryMappedFiles;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Engine.Loader;

/// <summary>One tensor entry of a safetensors header. Offsets are absolute positions in the file.</summary>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, long FileOffset, long ByteLength, string File)
{
    public long ElementCount => ByteLength / DType.Size();
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>
/// A read-only, zero-copy view of one tensor in a memory-mapped file. Valid while its file is open.
/// The data pointer may be unaligned (files from other writers); every reader here tolerates that.
/// </summary>
public readonly unsafe struct TensorView
{
    public readonly TensorInfo Info;
    public readonly byte* Data;

    public TensorView(TensorInfo info, byte* data) { Info = info; Data = data; }

    public string Name => Info.Name;
    public DType DType => Info.DType;
    public long[] Shape => Info.Shape;
    public long ElementCount => Info.ElementCount;
    public int Rank => Info.Shape.Length;
    public bool IsNull => Data == null;

    /// <summary>The data as F32 (only for F32 tensors of fewer than 2^31 elements).</summary>
    public ReadOnlySpan<float> AsFloats()
    {
        if (DType != DType.F32) throw new InvalidOperationException($"tensor '{Name}' is {DType.Name()}, not F32");
        return new ReadOnlySpan<float>(Data, checked((int)ElementCount));
    }

    /// <summary>The raw bytes (tensors under 2 GiB).</summary>
    public ReadOnlySpan<byte> AsBytes() => new(Data, checked((int)Info.ByteLength));

    /// <summary>The raw 16-bit values (F16/BF16 tensors).</summary>
    public ReadOnlySpan<ushort> AsUInt16()
    {
        if (DType.Size() != 2) throw new InvalidOperationException($"tensor '{Name}' is {DType.Name()}, not 16-bit");
        return new ReadOnlySpan<ushort>(Data, checked((int)ElementCount));
    }

    /// <summary>Element i widened to float.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float Get(long i) => DType switch
    {
        DType.F32 => Unsafe.ReadUnaligned<float>(Data + i * 4),
        DType.F16 => (float)Unsafe.ReadUnaligned<Half>(Data + i * 2),
        DType.BF16 => DTypes.BF16ToFloat(Unsafe.ReadUnaligned<ushort>(Data + i * 2)),
        DType.F64 => (float)Unsafe.ReadUnaligned<double>(Data + i * 8),
        _ => throw new InvalidOperationException($"tensor '{Name}' has non-float dtype {DType.Name()}"),
    };

    /// <summary>Copies elements [start, start+dst.Length) widened to float into dst.</summary>
    public void Widen(long start, Span<float> dst)
    {
        if (start < 0 || start + dst.Length > ElementCount) throw new ArgumentOutOfRangeException(nameof(start));
        switch (DType)
        {
            case DType.F32:
                new ReadOnlySpan<float>(Data + start * 4, dst.Length).CopyTo(dst);
                break;
            case DType.F16:
                System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(Data + start * 2, dst.Length), dst);
                break;
            case DType.BF16:
                WidenBF16((ushort*)(Data + start * 2), dst);
                break;
            default:
                for (int i = 0; i < dst.Length; i++) dst[i] = Get(start + i);
                break;
        }
    }

    /// <summary>All elements widened to a new float array (for small tensors: norms, biases).</summary>
    public float[] ToFloatArray()
    {
        var a = new float[checked((int)ElementCount)];
        Widen(0, a);
        return a;
    }

    public static void WidenBF16(ushort* src, Span<float> dst)
    {
        var bits = MemoryMarshal.Cast<float, uint>(dst);
        for (int i = 0; i < bits.Length; i++) bits[i] = (uint)Unsafe.ReadUnaligned<ushort>(src + i) << 16;
    }
}

/// <summary>
/// A safetensors file, memory-mapped read-only. The header is validated completely before any tensor is
/// handed out: sizes, dtypes, offsets inside the data region, no overlaps, shape products that match byte lengths.
/// Format: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data region.
/// </summary>
public sealed unsafe class SafeTensorFile : IDisposable
{
    /// <summary>Headers larger than this are refused before they are read (same limit as the reference library).</summary>
    public const long MaxHeaderBytes = 100L * 1024 * 1024;

    public string Path { get; }
    public long FileLength { get; }
    public long DataStart { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;
    public IReadOnlyDictionary<string, string> Metadata => _metadata;

    readonly Dictionary<string, TensorInfo> _tensors;
    readonly Dictionary<string, string> _metadata;
    readonly MemoryMappedFile? _mmf;
    readonly MemoryMappedViewAccessor? _view;
    readonly byte* _base;
    bool _disposed;

    SafeTensorFile(string path, long length, long dataStart, Dictionary<string, TensorInfo> tensors, Dictionary<string, string> metadata,
        MemoryMappedFile? mmf, MemoryMappedViewAccessor? view, byte* basePtr)
    {
        Path = path; FileLength = length; DataStart = dataStart; _tensors = tensors; _metadata = metadata;
        _mmf = mmf; _view = view; _base = basePtr;
    }

    public static SafeTensorFile Open(string path)
    {
        FileInfo fi;
        try
        {
            fi = new FileInfo(path);
            // Hugging Face cache snapshots are symbolic links to blobs: the size is the target's, not the link's.
            if (fi.Exists && fi.LinkTarget != null && fi.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) fi = target;
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException or IOException or UnauthorizedAccessException)
        { throw new ModelFormatException($"{path}: invalid path or link ({e.Message})"); }
        if (!fi.Exists) throw new ModelFormatException($"{path}: file not found");
        long length = fi.Length;
        if (length < 8) throw new ModelFormatException($"{path}: truncated safetensors file ({length} bytes, the 8-byte header length is missing)");

        MemoryMappedFile? mmf = null;
        MemoryMappedViewAccessor? view = null;
        byte* basePtr = null;
        bool ok = false;
        try
        {
            try
            {
                mmf = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
                view = mmf.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new ModelFormatException($"{path}: cannot map file ({e.Message})");
            }
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePtr);
            basePtr += view.PointerOffset;
            HugePages.Advise(basePtr, length);   // before the first touch of the data: the page cache then reads 2 MiB folios

            ulong n = Unsafe.ReadUnaligned<ulong>(basePtr);
            if (n > (ulong)MaxHeaderBytes)
                throw new ModelFormatException($"{path}: header length {n} exceeds the limit of {MaxHeaderBytes} bytes");
            if ((long)n > length - 8)
                throw new ModelFormatException($"{path}: header length {n} goes beyond the end of the file ({length} bytes)");
            long dataStart = 8 + (long)n;
            var (tensors, meta) = ParseHeader(path, new ReadOnlySpan<byte>(basePtr + 8, (int)n), dataStart, length);
            var f = new SafeTensorFile(path, length, dataStart, tensors, meta, mmf, view, basePtr);
            ok = true;
            return f;
        }
        finally
        {
            if (!ok)
            {
                if (basePtr != null) view!.SafeMemoryMappedViewHandle.ReleasePointer();
                view?.Dispose();
                mmf?.Dispose();
            }
        }
    }

    static (Dictionary<string, TensorInfo>, Dictionary<string, string>) ParseHeader(string path, ReadOnlySpan<byte> json, long dataStart, long fileLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(json))
            throw new ModelFormatException($"{path}: header is not valid UTF-8 JSON");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{path}: header is not valid JSON ({FirstLine(e.Message)})");
        }
        catch (ArgumentException e)
        {
            throw new ModelFormatException($"{path}: header is not valid UTF-8 JSON ({FirstLine(e.Message)})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException($"{path}: header must be a JSON object");
            var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            var meta = new Dictionary<string, string>(StringComparer.Ordinal);
            long dataLength = fileLength - dataStart;
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                string name = prop.Name;
                if (name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object)
                        throw new ModelFormatException($"{path}: '__metadata__' must be an object of strings");
                    foreach (var m in prop.Value.EnumerateObject())
                        meta[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                if (tensors.ContainsKey(name)) throw new ModelFormatException($"{path}: tensor '{name}' appears twice in the header");
                var e = prop.Value;
                if (e.ValueKind != JsonValueKind.Object) throw new ModelFormatException($"{path}: tensor '{name}': entry is not an object");
                if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
                    throw new ModelFormatException($"{path}: tensor '{name}': missing 'dtype'");
                if (!DTypes.TryParse(dt.GetString()!, out var dtype))
                    throw new ModelFormatException($"{path}: tensor '{name}': unknown dtype '{dt.GetString()}'");
                if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
                    throw new ModelFormatException($"{path}: tensor '{name}': missing 'shape'");
                var shape = new long[sh.GetArrayLength()];
                if (shape.Length > 8) throw new ModelFormatException($"{path}: tensor '{name}': rank {shape.Length} is not supported");
                long count = 1;
                int i = 0;
                foreach (var d in sh.EnumerateArray())
                {
                    if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0)
                        throw new ModelFormatException($"{path}: tensor '{name}': shape entry {d.GetRawText()} is not a non-negative integer");
                    shape[i++] = v;
                    try { count = checked(count * v); }
                    catch (OverflowException) { throw new ModelFormatException($"{path}: tensor '{name}': shape {Fmt(shape)} overflows"); }
                }
                if (!e.TryGetProperty("data_offsets", out var offs) || offs.ValueKind != JsonValueKind.Array || offs.GetArrayLength() != 2)
                    throw new ModelFormatException($"{path}: tensor '{name}': 'data_offsets' must be [begin, end]");
                long begin = ReadOffset(path, name, offs[0]), end = ReadOffset(path, name, offs[1]);
                if (end < begin) throw new ModelFormatException($"{path}: tensor '{name}': data_offsets [{begin}, {end}] end before they begin");
                if (end > dataLength)
                    throw new ModelFormatException($"{path}: tensor '{name}': data_offsets [{begin}, {end}] go beyond the data region ({dataLength} bytes; file truncated?)");
                long bytes;
                try { bytes = checked(count * dtype.Size()); }
                catch (OverflowException) { throw new ModelFormatException($"{path}: tensor '{name}': shape {Fmt(shape)} overflows"); }
                if (bytes != end - begin)
                    throw new ModelFormatException($"{path}: tensor '{name}': shape {Fmt(shape)} of {dtype.Name()} needs {bytes} bytes but data_offsets [{begin}, {end}] hold {end - begin}");
                tensors[name] = new TensorInfo(name, dtype, shape, dataStart + begin, bytes, path);
            }
            // Overlapping tensors would alias each other's bytes: refuse them.
            var sorted = tensors.Values.Where(t => t.ByteLength > 0).OrderBy(t => t.FileOffset).ToList();
            for (int k = 1; k < sorted.Count; k++)
            {
                var a = sorted[k - 1]; var b = sorted[k];
                if (b.FileOffset < a.FileOffset + a.ByteLength)
                    throw new ModelFormatException($"{path}: tensors '{a.Name}' and '{b.Name}' overlap in the data region");
            }
            return (tensors, meta);
        }
    }

    static long ReadOffset(string path, string name, JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out long v) || v < 0)
            throw new ModelFormatException($"{path}: tensor '{name}': data offset {e.GetRawText()} is not a non-negative integer");
        return v;
    }

    static string Fmt(long[] s) => "[" + string.Join(", ", s) + "]";
    static string FirstLine(string s) { int i = s.IndexOfAny(['\r', '\n']); return i < 0 ? s : s[..i]; }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    public TensorView View(string name)
    {
        if (!_tensors.TryGetValue(name, out var info)) throw new ModelFormatException($"{Path}: no tensor named '{name}'");
        return View(info);
    }

    public TensorView View(TensorInfo info)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new TensorView(info, _base + info.FileOffset);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_view != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _mmf?.Dispose();
    }
}

/// <summary>Writes safetensors files (F32 / F16 / BF16), header padded to 8 bytes, tensors in the given order.</summary>
public static class SafeTensorWriter
{
    public sealed record Entry(string Name, long[] Shape, DType DType, byte[] Bytes);

    public static Entry F32(string name, long[] shape, ReadOnlySpan<float> data) =>
        new(name, shape, DType.F32, MemoryMarshal.AsBytes(data).ToArray());

    public static Entry Convert(string name, long[] shape, ReadOnlySpan<float> data, DType dtype)
    {
        switch (dtype)
        {
            case DType.F32: return F32(name, shape, data);
            case DType.F16:
            {
                var h = new Half[data.Length];
                for (int i = 0; i < h.Length; i++) h[i] = (Half)data[i];
                return new(name, shape, dtype, MemoryMarshal.AsBytes(h.AsSpan()).ToArray());
            }
            case DType.BF16:
            {
                var b = new ushort[data.Length];
                for (int i = 0; i < b.Length; i++) b[i] = DTypes.FloatToBF16(data[i]);
                return new(name, shape, dtype, MemoryMarshal.AsBytes(b.AsSpan()).ToArray());
            }
            default: throw new ArgumentException($"cannot write dtype {dtype}");
        }
    }

    /// <summary>Writes atomically: a temporary file in the same folder, then a rename.</summary>
    public static void Write(string path, IEnumerable<Entry> entries, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = entries.ToList();
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata != null && metadata.Count > 0)
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in list)
            {
                w.WriteStartObject(e.Name);
                w.WriteString("dtype", e.DType.Name());
                w.WriteStartArray("shape");
                foreach (var d in e.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + e.Bytes.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += e.Bytes.Length;
            }
            w.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while (header.Count % 8 != 0) header.Add((byte)' ');
        AtomicFile.Write(path, s =>
        {
            Span<byte> len = stackalloc byte[8];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Count);
            s.Write(len);
            s.Write(header.ToArray());
            foreach (var e in list) s.Write(e.Bytes);
        });
    }
}

/// <summary>Writes a file atomically (temporary file in the same folder, flushed, then renamed over the target).</summary>
public static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        string full = System.IO.Path.GetFullPath(path);
        string dir = System.IO.Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new UsageException($"{path}: folder '{dir}' does not exist");
        string tmp = System.IO.Path.Combine(dir, "." + System.IO.Path.GetFileName(full) + "." + Environment.ProcessId + ".tmp");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(fs);
                fs.Flush(true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            try { File.Delete(tmp); } catch { }
            throw new UsageException($"{path}: cannot write ({e.Message})");
        }
        catch
        {
            try { File.Delete(tmp); } catch { }
            throw;
        }
    }

    public static void WriteText(string path, string text) =>
        Write(path, s => { var b = Encoding.UTF8.GetBytes(text); s.Write(b); });
}
