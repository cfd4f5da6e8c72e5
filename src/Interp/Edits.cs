using Engine.Kernels;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// An edit of one hook point in the runtime's intervention form: <see cref="Blocks"/> gives the
/// <see cref="DeviceIntervention"/> blocks of each call (see
/// <see cref="HookRegistry.AddIntervention(HookKind, int, Func{TapCall, IEnumerable{DeviceIntervention}})"/>). On a
/// device backend it runs as kernels where the tap lives (no host copy); on the CPU backends it is
/// <see cref="DeviceIntervention.ApplyHost"/> on the tap, the same float arithmetic as the methods' former host hooks.
/// </summary>
public readonly record struct EditHook(HookKind Kind, int Layer, Func<TapCall, IEnumerable<DeviceIntervention>> Blocks)
{
    public IDisposable Register(Session session) => session.Hooks.AddIntervention(Kind, Layer, Blocks);
}

/// <summary>
/// The blocks of one call, built from single-row pieces of the [rows, cols] view: a piece that continues the last block
/// (next row, same columns, same op and values read at the same stride) extends it, so a head or a neuron over all
/// positions is one block (one kernel launch on a device).
/// </summary>
public sealed class BlockList : List<DeviceIntervention>
{
    /// <summary>
    /// Adds row <paramref name="row"/>, columns col .. col + count − 1. Set/Add read values[valueOffset + c]; the next row
    /// of a merged block reads valueStride further (0: the same values, e.g. a mean or a steering vector broadcast).
    /// </summary>
    public void Piece(InterventionOp op, int row, int col, int count, float[]? values = null, int valueOffset = 0, int valueStride = 0, float alpha = 1f)
    {
        if (count == 0) return;
        bool hasValues = op is InterventionOp.Set or InterventionOp.Add;
        if (Count > 0)
        {
            var last = this[^1];
            if (last.Op == op && BitConverter.SingleToInt32Bits(last.Alpha) == BitConverter.SingleToInt32Bits(alpha)
                && last.ColStart == col && last.ColCount == count && last.RowStart + last.RowCount == row
                && (!hasValues || (ReferenceEquals(last.Values, values) && last.ValueStride == valueStride
                                   && last.ValueOffset + (long)last.RowCount * valueStride == valueOffset)))
            {
                this[^1] = last with { RowCount = last.RowCount + 1 };
                return;
            }
        }
        Add(hasValues
            ? new DeviceIntervention(op, row, 1, col, count, values ?? throw new ArgumentNullException(nameof(values)), alpha) { ValueOffset = valueOffset, ValueStride = valueStride }
            : new DeviceIntervention(op, row, 1, col, count, null, alpha));
    }

    /// <summary>
    /// Sets the cells of <paramref name="site"/> (rows of the call, as <see cref="Site.CopyInto"/>: positions relative to
    /// the tap) to those of <paramref name="source"/>, a whole tap of the same shape (the other run's cached tensor).
    /// </summary>
    public void CopySite(Site site, TapCall call, float[] source)
    {
        if (source.Length != call.Elements)
            throw new InvalidOperationException($"{HookPoints.Name(call.Kind, call.Layer)}: source has {source.Length} values, the tap {call.Elements} (different prompt lengths?)");
        int cols = call.Cols;
        foreach (var (o, n, _) in site.Segments(call.Shape)) Piece(InterventionOp.Set, o / cols, o % cols, n, source, o, cols);
    }

    /// <summary>The edit that copies several sites of one hook point from a whole tensor of the other run.</summary>
    public static EditHook CopySites(HookKind kind, int layer, IReadOnlyList<Site> sites, float[] source) => new(kind, layer, call =>
    {
        var list = new BlockList();
        foreach (var s in sites) list.CopySite(s, call, source);
        return list;
    });
}
