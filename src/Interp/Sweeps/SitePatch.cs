using Engine.Runtime;

namespace Engine.Interp.Sweeps;

/// <summary>
/// A <see cref="Site"/> of a tap located in the full-run coordinates (positions 0 .. T - 1) and written into a tap whose
/// rows start at <see cref="Tap.Pos0"/> (a run started at a later position): row t of the full tensor is row t − Pos0
/// of the tap. [T, X] and [T, A, B] taps are row-major by position; [H, Tq, Tk] taps (pattern, attn_scores) have the
/// query position as their middle axis and T keys in both. A segment at a position before Pos0 is never scheduled
/// (<see cref="SweepScheduleException"/>).
/// </summary>
public sealed class SitePatch
{
    readonly Seg[] _segs;
    readonly bool _headFirst;
    readonly string _what;
    readonly int _fullElements;

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
        var list = new List<Seg>();
        int rows = _headFirst ? fullShape.D1 : fullShape.D0;
        int rowStride = _headFirst ? fullShape.D2 : (int)(fullShape.Elements / fullShape.D0);
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
    }

    /// <summary>Offset in the tap of a segment, checking that its position is one of the tap's rows.</summary>
    int TapOffset(in Seg s, Tap tap)
    {
        int r = s.Row - tap.Pos0;
        int rows = _headFirst ? tap.Shape.D1 : tap.Shape.D0;
        if ((uint)r >= (uint)rows)
            throw new SweepScheduleException($"{_what}: position {s.Row} is not among the tap's rows {tap.Pos0}..{tap.Pos0 + rows - 1} (a cell started after what it patches)");
        if (_headFirst) return (s.Head * rows + r) * tap.Shape.D2 + s.Inner;
        return r * (int)(tap.Shape.Elements / tap.Shape.D0) + s.Inner;
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

    /// <summary>The hook that copies the site from a full tensor.</summary>
    public LaneHook CopyHook(HookKind kind, int layer, float[] full) => new(kind, layer, tap => CopyInto(tap, full));
}
