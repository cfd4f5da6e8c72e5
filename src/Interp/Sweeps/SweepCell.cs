using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp.Sweeps;

/// <summary>
/// How a sweep runs its cells. <see cref="Naive"/>: one full forward pass per cell (the methods' definition; what the
/// tests compare against). Otherwise each cell starts from the cached state of its base run at the first layer and
/// position it can change (<see cref="Session.RunFrom"/>), and cells are batched into passes of many lanes
/// (<see cref="Session.RunLanes(ReadOnlySpan{SweepLane})"/>) of at most <see cref="MaxRows"/> stacked rows and <see cref="MaxLanes"/> lanes, with
/// the lanes' KV caches within <see cref="MaxWorkspaceBytes"/>.
/// </summary>
public sealed record SweepOptions
{
    public bool Naive { get; init; }
    /// <summary>Rows stacked into one pass (the matrix multiplies' row count); 1 lane per pass when 0.</summary>
    public int MaxRows { get; init; } = 512;
    public int MaxLanes { get; init; } = 64;
    /// <summary>Bound on the sweep workspace (stacked rows + one KV cache per lane); a pass takes fewer lanes to stay under it.</summary>
    public long MaxWorkspaceBytes { get; init; } = 512L << 20;
    /// <summary>
    /// Compute the last layer after its attention for the last position only (every position's K/V still), since only the
    /// last position's logits are measured; patches there at other positions, which cannot reach it, are skipped.
    /// </summary>
    public bool LastRowOnly { get; init; } = true;
    /// <summary>
    /// A cell that writes nothing at its first layer before <c>attn.hook_z</c> (z, attn_out, the MLP, ...) starts at that
    /// layer's z, taken from the base run: the layer's norm, q/k/v projections and attention are not run again.
    /// </summary>
    public bool StartAtZ { get; init; } = true;
    /// <summary>Called with every cell the fast path schedules, before it runs (tests check where cells start).</summary>
    public Action<SweepCell>? OnCell { get; init; }
    /// <summary>
    /// Cells whose values are known already (a resumed sweep, <see cref="ICellJournal"/>): a pass whose cells are all
    /// known is skipped. The schedule is the same as without it, so the other passes compute exactly what they would.
    /// </summary>
    public Func<int, bool>? Recorded { get; init; }

    public static SweepOptions Default { get; } = new();
    public static SweepOptions NaiveMode { get; } = new() { Naive = true };
}

/// <summary>Where a cell writes: a hook point, and the position it changes (null: every position).</summary>
public readonly record struct PatchSite(HookKind Kind, int Layer, int? Position);

/// <summary>One write of a cell: where (the site, already <see cref="SweepCell.Lift"/>ed) and the hook that does it there.</summary>
public readonly record struct SweepPatch(PatchSite Site, LaneHook Hook);

/// <summary>
/// One cell of a sweep: a run of <see cref="Base"/>'s tokens with the hooks of its <see cref="Patches"/> (lane hooks,
/// positions relative to <see cref="Tap.Pos0"/>), each changing only its site. <see cref="FirstLayer"/> and
/// <see cref="FromRow"/> are where its run starts (<see cref="SweepCell.Plan"/>): nothing before them can differ from the
/// base run.
/// </summary>
public sealed record SweepCell(SweepBase Base, int FirstLayer, int FromRow, IReadOnlyList<SweepPatch> Patches)
{
    public IEnumerable<PatchSite> Sites => Patches.Select(p => p.Site);
    public IEnumerable<LaneHook> Hooks => Patches.Select(p => p.Hook);

    /// <summary>
    /// The start of a cell that writes these sites: the lowest layer written (a write at blocks.L.hook_resid_post, the
    /// very buffer that enters layer L + 1, counts as layer L + 1 when the hook is re-expressed there by
    /// <see cref="Lift"/>) and the lowest position written (0 when a site covers every position). Causal attention
    /// means no position before it can change.
    /// </summary>
    public static (int FirstLayer, int FromRow) Plan(ModelConfig c, IEnumerable<PatchSite> sites)
    {
        int layer = int.MaxValue, row = int.MaxValue;
        foreach (var s0 in sites)
        {
            var s = Lift(c, s0);
            if (!HookPoints.IsPerLayer(s.Kind)) throw new ArgumentException($"sweep cells patch per-layer taps; {s.Kind} is not one");
            layer = Math.Min(layer, s.Layer);
            row = Math.Min(row, s.Position ?? 0);
        }
        if (layer == int.MaxValue) throw new ArgumentException("a sweep cell patches nothing");
        return (layer, row);
    }

    /// <summary>blocks.L.hook_resid_post is the residual that enters layer L + 1: patch it there (not for the last layer).</summary>
    public static PatchSite Lift(ModelConfig c, PatchSite s) =>
        s.Kind == HookKind.ResidPost && s.Layer + 1 < c.NLayers ? new PatchSite(HookKind.ResidPre, s.Layer + 1, s.Position) : s;

    /// <summary>A cell whose start is planned from its patches (each hook expressed at its lifted site).</summary>
    public static SweepCell Create(ModelConfig c, SweepBase @base, IReadOnlyList<SweepPatch> patches)
    {
        var (first, from) = Plan(c, patches.Select(p => p.Site));
        return new SweepCell(@base, first, from, patches);
    }

    /// <summary>A cell of one patch at the lifted site of (kind, layer, position) with a hook built for that site.</summary>
    public static SweepCell Single(ModelConfig c, SweepBase @base, PatchSite site, Func<PatchSite, HookFn> hook)
    {
        var at = Lift(c, site);
        return Create(c, @base, [new SweepPatch(at, new LaneHook(at.Kind, at.Layer, hook(at)))]);
    }

    /// <summary>
    /// A cell of one patch at the lifted site of (kind, layer, position) with a lane hook built for that site (e.g.
    /// <see cref="SitePatch.CopyHook"/>, which carries a device form); the hook must fire at the lifted site.
    /// </summary>
    public static SweepCell Single(ModelConfig c, SweepBase @base, PatchSite site, Func<PatchSite, LaneHook> hook)
    {
        var at = Lift(c, site);
        var h = hook(at);
        if (h.Kind != at.Kind || h.Layer != at.Layer)
            throw new ArgumentException($"a hook on {h.Kind} at layer {h.Layer} for the site {at.Kind} at layer {at.Layer}", nameof(hook));
        return Create(c, @base, [new SweepPatch(at, h)]);
    }

    /// <summary>Taps of a layer computed after its attention (from attn_scores to resid_post).</summary>
    public static bool AfterAttention(HookKind k) => HookPoints.IsPerLayer(k) && k >= HookKind.AttnScores;

    /// <summary>Whether no site is written before the cell's start (the runner refuses cells that break it).</summary>
    public bool StartsBeforeItsSites(ModelConfig c) =>
        Sites.All(s0 => { var s = Lift(c, s0); return s.Layer >= FirstLayer && (s.Position ?? 0) >= FromRow; });
}

/// <summary>Thrown by a sweep hook asked to patch a position before its tap's first row (a cell scheduled too late).</summary>
public sealed class SweepScheduleException(string message) : InvalidOperationException(message);
