using System.Runtime.InteropServices;

namespace Engine.Runtime;

/// <summary>A named range of an <see cref="Arena"/>, in floats.</summary>
public readonly record struct Slot(string Name, long Offset, long Length);

/// <summary>
/// One pre-sized, 64-byte aligned native block holding every activation of a session. Slots are laid out once, at
/// construction; the forward pass only takes spans of them. Nothing here lives on the managed heap.
/// </summary>
public sealed unsafe class Arena : IDisposable
{
    readonly List<Slot> _slots = [];
    float* _base;
    long _length;

    public Arena() { }

    /// <summary>Reserves a slot (before <see cref="Allocate"/>); offsets are rounded to 16 floats (64 bytes).</summary>
    public Slot Reserve(string name, long floats)
    {
        if (_base != null) throw new InvalidOperationException("arena already allocated");
        var s = new Slot(name, _length, floats);
        _length += (floats + 15) & ~15L;
        _slots.Add(s);
        return s;
    }

    public void Allocate()
    {
        nuint bytes = (nuint)Math.Max(64, _length * sizeof(float));
        _base = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        if (_base == null) throw new OutOfMemoryException($"cannot allocate the activation arena ({bytes} bytes)");
        NativeMemory.Clear(_base, bytes);
    }

    public long Bytes => _length * sizeof(float);
    public IReadOnlyList<Slot> Slots => _slots;

    public Span<float> Span(in Slot s) => new(_base + s.Offset, checked((int)s.Length));
    public Span<float> Span(in Slot s, long start, int length)
    {
        if (start < 0 || start + length > s.Length) throw new ArgumentOutOfRangeException(nameof(length), $"slot {s.Name}: [{start}, {start + length}) outside [0, {s.Length})");
        return new(_base + s.Offset + start, length);
    }

    public void Dispose()
    {
        if (_base != null) { NativeMemory.AlignedFree(_base); _base = null; }
    }
}
