using Engine.Runtime;

namespace Engine.Interp.Sweeps;

/// <summary>
/// Runs the cells of a sweep on their bases, batched: cells are taken in order of (first layer, start row) — so the lanes
/// of a pass join at nearly the same layer — and packed into passes of at most <see cref="SweepOptions.MaxRows"/> stacked
/// rows, <see cref="SweepOptions.MaxLanes"/> lanes and <see cref="SweepOptions.MaxWorkspaceBytes"/> of workspace. Each
/// cell's last-position logits are handed to the callback with the cell's index (the order in which cells finish is
/// not the cell order; callers store by index). A cell whose sites lie before its start is refused.
/// </summary>
public static class SweepRunner
{
    /// <summary>
    /// Runs every cell; <paramref name="done"/>(cell index, last logits [V]) is called once per cell. With
    /// <paramref name="logitColumns"/>, only those vocabulary entries are computed and handed over ([C], in that order):
    /// a metric that reads a few logits skips the rest of the unembedding.
    /// </summary>
    public static void Run(Session session, IReadOnlyList<SweepCell> cells, SweepOptions options, Action<int, ReadOnlySpan<float>> done, int[]? logitColumns = null)
    {
        var c = session.Config;
        for (int i = 0; i < cells.Count; i++)
        {
            var cell = cells[i];
            if (!cell.StartsBeforeItsSites(c))
                throw new SweepScheduleException($"sweep cell {i} starts at layer {cell.FirstLayer}, row {cell.FromRow}, after one of its sites ({string.Join("; ", cell.Sites)})");
            options.OnCell?.Invoke(cell);
        }
        if (cells.Count == 0) return;
        var order = Enumerable.Range(0, cells.Count)
            .OrderBy(i => cells[i].FirstLayer).ThenBy(i => cells[i].FromRow).ThenBy(i => i).ToArray();
        int V = c.VocabSize;
        long rowBytes = RowBytes(c), laneBytes = 2L * c.NLayers * c.KvDim * sizeof(float);   // × positions
        var batch = new List<int>();
        var lanes = new List<SweepLane>();
        int pos = 0;
        while (pos < order.Length)
        {
            batch.Clear();
            lanes.Clear();
            long rows = 0, bytes = 0;
            while (pos < order.Length)
            {
                var cell = cells[order[pos]];
                int r = cell.Base.Length - cell.FromRow;
                long b = r * rowBytes + cell.Base.Length * laneBytes + (long)V * sizeof(float);
                if (batch.Count > 0 && (rows + r > options.MaxRows || batch.Count >= options.MaxLanes || bytes + b > options.MaxWorkspaceBytes)) break;
                batch.Add(order[pos]);
                lanes.Add(Lane(c, cell, options));
                rows += r; bytes += b; pos++;
            }
            if (options.Recorded != null && batch.TrueForAll(i => options.Recorded(i))) continue;   // resumed: all known
            var logits = session.RunLanes(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(lanes), logitColumns);
            int width = logitColumns is { Length: > 0 } ? logitColumns.Length : V;
            for (int i = 0; i < batch.Count; i++) done(batch[i], logits.Slice(i * width, width));
        }
    }

    /// <summary>
    /// The lane of a cell. Only the last position is measured, so with <see cref="SweepOptions.LastRowOnly"/> the last
    /// layer runs its attention, projection and MLP on the last row only, and the cell's writes there at other positions
    /// (which cannot reach the last row) are left out; a write there at every position keeps the whole layer. A cell
    /// that writes nothing at its first layer before z starts at that layer's z (<see cref="SweepOptions.StartAtZ"/>).
    /// </summary>
    static SweepLane Lane(Engine.Loader.ModelConfig c, SweepCell cell, SweepOptions options)
    {
        int last = c.NLayers - 1, P = cell.Base.Length - 1;
        bool lastRowOnly = options.LastRowOnly;
        var hooks = new List<LaneHook>(cell.Patches.Count);
        foreach (var (site, hook) in cell.Patches)
        {
            if (lastRowOnly && site.Layer == last && SweepCell.AfterAttention(site.Kind))
            {
                if (site.Position is int p && p < P) continue;
                if (site.Position == null) lastRowOnly = false;
            }
            hooks.Add(hook);
        }
        if (!lastRowOnly) hooks = cell.Hooks.ToList();
        // Nothing written at the first layer before z: that layer's attention is the base run's, start at its z.
        bool fromZ = options.StartAtZ && hooks.TrueForAll(h => h.Layer != cell.FirstLayer || h.Kind >= HookKind.Z);
        return new SweepLane(cell.Base, cell.FirstLayer, cell.FromRow, hooks, lastRowOnly, fromZ);
    }

    /// <summary>Workspace floats per stacked row, in bytes (the activation slots of one row).</summary>
    static long RowBytes(Engine.Loader.ModelConfig c) =>
        sizeof(float) * (6L * c.DModel + 3 + 2L * c.QDim + 3L * c.KvDim + (c.GatedMlp ? 3L : 2L) * c.DMlp);

    /// <summary>
    /// Runs the cells one full forward pass each (the definition): the base tokens with the cell's hooks registered on
    /// the session (they see <see cref="Tap.Pos0"/> = 0), in cell order.
    /// </summary>
    public static void RunNaive(Session session, IReadOnlyList<SweepCell> cells, Action<int, ReadOnlySpan<float>> done)
    {
        for (int i = 0; i < cells.Count; i++)
        {
            var cell = cells[i];
            var last = InterpMath.RunLast(session, cell.Base.Tokens, cell.Hooks.Select(h => (h.Kind, h.Layer, h.Fn)).ToList());
            done(i, last);
        }
    }
}
