using Engine.Kernels;
using Engine.Runtime;

namespace Engine.Interp.Sweeps;

/// <summary>
/// A <see cref="Site"/> of a tap located in the full-run coordinates (positions 0 .. T - 1) and written into a tap whose
/// rows start at <see cref="Tap.Pos0"/> (a run started at a later position): row t of the full tensor is row t − Pos0
/// of the tap. [T, X] and [T, A, B] taps are row-major by position; [H, Tq, Tk] taps (pattern, attn_scores) have the
/// query position as their middle axis and T keys in both. A segment at a position before Pos0 is never scheduled
/// (<see cref="SweepScheduleException"/>).
/// <para>
/// Each edit has two forms: the host hook (<see cref="CopyInto"/>, <see cref="Fill"/>, <see cref="SetPerHead"/>), which
/// defines it, and intervention blocks of the same call (<see cref="CopyBlocks"/>, <see cref="FillBlocks"/>,
/// <see cref="PerHeadBlocks"/>, <see cref="WindowBlocks"/>) that a device backend runs where the tap lives; the lane
/// hooks (<see cref="CopyHook"/>, <see cref="FillHook(HookKind, int, float)"/>, ...) carry both. The blocks applied with
/// <see cref="DeviceIntervention.ApplyHost"/> write the same floats as the host hook (copies and fills, no arithmetic).
/// </para>
/// </summary>
public sealed class SitePatch
{
    readonly Seg[] _segs;
    readonly bool _headFirst;
    readonly string _what;
    readonly int _fullElements, _fullRowStride, _longest;

    /// <summary>Row (position), head (or -1), offset inside the row (row-first) or inside the [Tk] row (head-first), length, and the offset in the full tensor.</summary>
    readonly record struct Seg(int Row, int Head, int Inner, int Length, int Full);

    public Site Site { get; }

    /// <param name="site">Where the patch is written.</param>
    /// <param name="fullShape">The tap's shape in a full run of T tokens (rows T, keys T).</param>
    public SitePatch(Site site, TapShape fullShape)
    {
        Site = site;
        _what = site.ToString();
        _headFirst = site.Kind is HookKind.Pattern or HookKind.AttnScores;
        _fullElements = checked((int)fullShape.Elements);
        _fullRowStride = _headFirst ? fullShape.D2 : (int)(fullShape.Elements / fullShape.D0);
        var list = new List<Seg>();
        int rows = _headFirst ? fullShape.D1 : fullShape.D0;
        int rowStride = _fullRowStride;
        foreach (var (o, n, h) in site.Segments(fullShape))
        {
            if (_headFirst)
            {
                int t = o / rowStride % rows;
                list.Add(new Seg(t, o / rowStride / rows, o % rowStride, n, o));
            }
            else list.Add(new Seg(o / rowStride, h, o % rowStride, n, o));
        }
        _segs = list.ToArray();
        _longest = _segs.Length == 0 ? 0 : _segs.Max(x => x.Length);
    }

    /// <summary>Offset in the tap of a segment, checking that its position is one of the tap's rows.</summary>
    int TapOffset(in Seg s, Tap tap)
    {
        var call = TapCall.Of(tap);
        return ViewRow(s, call) * call.Cols + s.Inner;       // the [rows, cols] view is the tap's row-major layout
    }

    /// <summary>Copies the site from a full tensor of the other run (same T) into the tap.</summary>
    public void CopyInto(Tap tap, ReadOnlySpan<float> full)
    {
        if (full.Length != _fullElements) throw new InvalidOperationException($"{_what}: source has {full.Length} values, the full tap {_fullElements}");
        foreach (var s in _segs) full.Slice(s.Full, s.Length).CopyTo(tap.Data.Slice(TapOffset(s, tap), s.Length));
    }

    /// <summary>Sets the site to a constant.</summary>
    public void Fill(Tap tap, float value)
    {
        foreach (var s in _segs) tap.Data.Slice(TapOffset(s, tap), s.Length).Fill(value);
    }

    /// <summary>Writes per-head values (e.g. a mean [heads × d]) into each segment: segment of head h gets values[h·len ..].</summary>
    public void SetPerHead(Tap tap, ReadOnlySpan<float> values)
    {
        foreach (var s in _segs) values.Slice(s.Head * s.Length, s.Length).CopyTo(tap.Data.Slice(TapOffset(s, tap), s.Length));
    }

    // ------------------------------------------------------------------ device forms

    /// <summary>
    /// Row of a segment in the call's [rows, cols] intervention view (<see cref="HookRegistry.InterventionView"/>;
    /// head-first taps: head · Tq + query row), checking that its position is one of the call's rows. Its column is
    /// <see cref="Seg.Inner"/>.
    /// </summary>
    int ViewRow(in Seg s, in TapCall call)
    {
        int rows = _headFirst ? call.Shape.D1 : call.Shape.D0;
        int r = s.Row - call.Pos0;
        if ((uint)r >= (uint)rows)
            throw new SweepScheduleException($"{_what}: position {s.Row} is not among the tap's rows {call.Pos0}..{call.Pos0 + rows - 1} (a cell started after what it patches)");
        return _headFirst ? s.Head * rows + r : r;
    }

    /// <summary>
    /// <see cref="CopyInto"/> as intervention blocks of one call: Set blocks reading the full tensor in place (a window of
    /// it at the segment's offset, row stride = the tap's row width), so a device backend uploads the tensor once.
    /// </summary>
    public BlockList CopyBlocks(TapCall call, float[] full)
    {
        if (full.Length != _fullElements) throw new InvalidOperationException($"{_what}: source has {full.Length} values, the full tap {_fullElements}");
        int cols = call.Cols;
        if (cols != _fullRowStride) throw new InvalidOperationException($"{_what}: the tap's rows hold {cols} values, the full tensor's {_fullRowStride}");
        var list = new BlockList();
        foreach (var s in _segs) list.Piece(InterventionOp.Set, ViewRow(s, call), s.Inner, s.Length, full, s.Full, cols);
        return list;
    }

    /// <summary>
    /// <see cref="Fill"/> as intervention blocks: Zero for +0; otherwise Set from <paramref name="fill"/>, an array of at
    /// least the longest segment's length holding <paramref name="value"/> (read at offset 0 by every row).
    /// </summary>
    public BlockList FillBlocks(TapCall call, float value, float[]? fill)
    {
        bool zero = BitConverter.SingleToInt32Bits(value) == 0;
        if (!zero && (fill == null || fill.Length < _longest || Array.FindIndex(fill, 0, _longest, x => BitConverter.SingleToInt32Bits(x) != BitConverter.SingleToInt32Bits(value)) >= 0))
            throw new ArgumentException($"{_what}: a fill with {value} needs an array of {_longest} copies of it", nameof(fill));
        var list = new BlockList();
        foreach (var s in _segs)
            if (zero) list.Piece(InterventionOp.Zero, ViewRow(s, call), s.Inner, s.Length);
            else list.Piece(InterventionOp.Set, ViewRow(s, call), s.Inner, s.Length, fill, 0, 0);
        return list;
    }

    /// <summary><see cref="SetPerHead"/> as intervention blocks: the segment of head h reads values[h · len ..] (every row the same).</summary>
    public BlockList PerHeadBlocks(TapCall call, float[] values)
    {
        var list = new BlockList();
        foreach (var s in _segs) list.Piece(InterventionOp.Set, ViewRow(s, call), s.Inner, s.Length, values, s.Head * s.Length, 0);
        return list;
    }

    /// <summary>Every segment set to values[offset .. offset + len) (e.g. one neuron's mean, read in place from the [d_mlp] mean).</summary>
    public BlockList WindowBlocks(TapCall call, float[] values, int offset)
    {
        var list = new BlockList();
        foreach (var s in _segs) list.Piece(InterventionOp.Set, ViewRow(s, call), s.Inner, s.Length, values, offset, 0);
        return list;
    }

    /// <summary>The hook that copies the site from a full tensor (device form: <see cref="CopyBlocks"/>).</summary>
    public LaneHook CopyHook(HookKind kind, int layer, float[] full) =>
        new(kind, layer, tap => CopyInto(tap, full), call => CopyBlocks(call, full));

    /// <summary>The hook that sets the site to a constant (device form: Zero for 0, else Set from an array of the value made once here).</summary>
    public LaneHook FillHook(HookKind kind, int layer, float value)
    {
        float[]? fill = BitConverter.SingleToInt32Bits(value) == 0 ? null : Enumerable.Repeat(value, _longest).ToArray();
        return new(kind, layer, tap => Fill(tap, value), call => FillBlocks(call, value, fill));
    }

    /// <summary>
    /// The hook that sets the site to values[index] (host: <see cref="Fill"/> with that value, read now). Device form: a
    /// site of one-cell segments (a neuron) reads it in place, so a table of values (a mean) is uploaded once for all
    /// its cells; otherwise as <see cref="FillHook(HookKind, int, float)"/>.
    /// </summary>
    public LaneHook FillHook(HookKind kind, int layer, float[] values, int index)
    {
        float value = values[index];
        if (_longest != 1) return FillHook(kind, layer, value);
        return new(kind, layer, tap => Fill(tap, value), call => WindowBlocks(call, values, index));
    }

    /// <summary>The hook that writes per-head values into the site (device form: <see cref="PerHeadBlocks"/>).</summary>
    public LaneHook SetPerHeadHook(HookKind kind, int layer, float[] values) =>
        new(kind, layer, tap => SetPerHead(tap, values), call => PerHeadBlocks(call, values));
}
