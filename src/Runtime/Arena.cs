namespace Engine.Runtime;

/// <summary>A named range of a session's arena, in floats.</summary>
public readonly record struct Slot(string Name, long Offset, long Length);

/// <summary>
/// Lays out the slots of one arena: offsets rounded to 16 floats (64 bytes), decided once before the backend
/// allocates the whole arena as one buffer. The forward pass then only takes views of it.
/// </summary>
public sealed class SlotPlan
{
    readonly List<Slot> _slots = [];
    public long Floats { get; private set; }
    public IReadOnlyList<Slot> Slots => _slots;

    public Slot Reserve(string name, long floats)
    {
        var s = new Slot(name, Floats, floats);
        Floats += (floats + 15) & ~15L;
        _slots.Add(s);
        return s;
    }
}
