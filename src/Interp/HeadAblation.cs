using Engine.Interp.Sweeps;
using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// Zero: the ablated values become 0. Mean: they become their mean over the positions of reference prompts. Resample:
/// they become the values of another prompt's run at the same positions (several source prompts: the metric is averaged).
/// </summary>
public enum AblationMode { Zero, Mean, Resample }

/// <summary>Query head h of layer L (GQA: the query head, never the shared KV head).</summary>
public readonly record struct HeadRef(int Layer, int Head)
{
    public override string ToString() => $"L{Layer}H{Head}";
}

/// <summary>Neuron i of layer L's blocks.L.mlp.hook_post (what feeds the down/out projection).</summary>
public readonly record struct NeuronRef(int Layer, int Index)
{
    public override string ToString() => $"L{Layer}N{Index}";
}

public sealed record AblationOptions
{
    public AblationMode Mode { get; init; } = AblationMode.Zero;
    /// <summary>Heads to ablate; null = every head of every layer (unless <see cref="Neurons"/> are given).</summary>
    public IReadOnlyList<HeadRef>? Heads { get; init; }
    public IReadOnlyList<NeuronRef>? Neurons { get; init; }
    /// <summary>Ablate all selected heads and neurons in one run (one entry) instead of one run per head/neuron.</summary>
    public bool Together { get; init; }
    /// <summary>Mean mode: prompts whose positions the mean is taken over; null = the prompt itself.</summary>
    public IReadOnlyList<int[]>? MeanPrompts { get; init; }
    /// <summary>Resample mode: source prompts (each as long as the prompt); the metric is averaged over them.</summary>
    public IReadOnlyList<int[]>? ResamplePrompts { get; init; }
    /// <summary>What is measured at P (default: the target's logit, as SPEC); LogitDiff needs <see cref="Wrong"/>.</summary>
    public OutputMetric Metric { get; init; } = OutputMetric.Logit;
    public int? Wrong { get; init; }
    /// <summary>How many entries <see cref="AblationResult.Ranked"/> keeps (by |delta|, largest first).</summary>
    public int Top { get; init; } = 20;
    /// <summary>Called after each ablation run with (done, total).</summary>
    public Action<int, int>? Progress { get; init; }
    /// <summary>
    /// How the runs go: by default from the prompt run's cached state at the first ablated layer, many runs per batched
    /// pass; <see cref="SweepOptions.Naive"/> = one full forward pass per run (the definition).
    /// </summary>
    public SweepOptions Sweep { get; init; } = SweepOptions.Default;
    /// <summary>Finished runs (run r, source k: r × sources + k), for a sweep that resumes after an interruption.</summary>
    public ICellJournal? Journal { get; init; }
}

/// <summary>
/// One ablation: what was ablated, the metric after it (<see cref="Logit"/>: the target's logit with the default metric;
/// averaged over the source prompts in resample mode) and its change from the base run.
/// </summary>
public sealed record AblationEntry(string Label, HeadRef[] Heads, NeuronRef[] Neurons, double Logit, double Delta);

/// <summary>
/// Result of <see cref="HeadAblation.Run"/>. <see cref="Delta"/> is [n_layers][n_heads] (NaN where a head was not
/// ablated on its own; null when the run ablated a set together or only neurons).
/// </summary>
public sealed record AblationResult(
    int[] Tokens,
    int Target,
    AblationMode Mode,
    string? MeanSource,
    double Base,
    Grid? Delta,
    IReadOnlyList<AblationEntry> Entries)
{
    /// <summary>The metric measured (default logit of the target).</summary>
    public MetricSpec Metric { get; init; } = new(OutputMetric.Logit, Target);
    /// <summary>The entries by |delta|, largest first (at most <see cref="AblationOptions.Top"/>).</summary>
    public IReadOnlyList<AblationEntry> Ranked { get; init; } = [];
    /// <summary>Resample mode: the source prompts.</summary>
    public IReadOnlyList<int[]>? ResamplePrompts { get; init; }
}

/// <summary>
/// Head ablation (SPEC "zero-ablation of attention heads"): z[t][h][:] = 0 at every position t at blocks.L.attn.hook_z;
/// the output projection (and its bias) then runs as usual. delta = ablated logits[P][target] − base. Also mean ablation
/// (z[t][h] = mean over positions of reference prompts), resample ablation (the values of other prompts' runs at the same
/// positions, metric averaged over the sources), single-neuron ablation of mlp.hook_post, other metrics, and a ranking
/// of the ablations by |delta|.
/// </summary>
public static class HeadAblation
{
    public static AblationResult Run(Session session, int[] tokens, int? target = null, AblationOptions? options = null)
    {
        options ??= new AblationOptions();
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        int L = c.NLayers, H = c.NHeads, d = c.HeadDim;
        var neurons = options.Neurons ?? [];
        var heads = options.Heads ?? (neurons.Count > 0 ? [] : AllHeads(c));
        foreach (var h in heads)
            if (h.Layer < 0 || h.Layer >= L || h.Head < 0 || h.Head >= H)
                throw new UsageException($"--heads: {h} is out of range (model has {L} layers of {H} heads)");
        foreach (var n in neurons)
            if (n.Layer < 0 || n.Layer >= L || n.Index < 0 || n.Index >= c.DMlp)
                throw new UsageException($"--neurons: {n.Layer}:{n.Index} is out of range (model has {L} layers of {c.DMlp} MLP neurons)");
        if (heads.Count == 0 && neurons.Count == 0) throw new UsageException("--heads: nothing to ablate");
        if (options.Top < 1) throw new UsageException($"--top: {options.Top} must be at least 1");
        if (options.Metric == OutputMetric.LogitDiff && options.Wrong == null) throw new UsageException("--wrong: the logit_diff metric needs a wrong token");
        if (options.Wrong is int w0) InterpMath.CheckToken(c, w0, "--wrong");

        // The fast path keeps the prompt run's states: every ablation starts from them at its first ablated layer.
        using var promptBase = options.Sweep.Naive ? null : session.CaptureBase(tokens);
        var baseLast = promptBase?.LastLogits ?? InterpMath.LastRow(session.Run(tokens), c.VocabSize).ToArray();
        int T = tokens.Length;
        int tgt = target ?? Session.ArgMax(baseLast);
        var metric = new MetricSpec(options.Metric, tgt, options.Wrong ?? -1);
        double baseLogit = metric.Of(baseLast);

        // Resample: the source runs' z / hook_post (all positions), one set per source prompt.
        var sources = new List<(float[][] Z, float[][] Post)>();
        if (options.Mode == AblationMode.Resample)
        {
            var prompts = options.ResamplePrompts ?? throw new UsageException("--source-tokens: resample ablation needs at least one source prompt");
            if (prompts.Count == 0) throw new UsageException("--source-tokens: resample ablation needs at least one source prompt");
            var zLayers = heads.Select(h => h.Layer).ToHashSet();
            var nLayers = neurons.Select(n => n.Layer).ToHashSet();
            foreach (var p in prompts)
            {
                InterpMath.CheckTokens(session, p, "--source-tokens");
                if (p.Length != T) throw new UsageException($"--source-tokens: a source prompt has {p.Length} tokens, the prompt {T}; resampling takes values at the same positions");
                var (_, cache) = session.RunWithCache(p, name =>
                    HookPoints.TryParse(name, out var k, out int l) &&
                    ((k == HookKind.Z && zLayers.Contains(l)) || (k == HookKind.MlpPost && nLayers.Contains(l))));
                var z = new float[L][]; var post = new float[L][];
                foreach (int l in zLayers) z[l] = cache[HookPoints.Name(HookKind.Z, l)].Data;
                foreach (int l in nLayers) post[l] = cache[HookPoints.Name(HookKind.MlpPost, l)].Data;
                sources.Add((z, post));
            }
        }

        // Mean values: z per (layer, head) [d], hook_post per (layer, neuron).
        float[][]? zMean = null, postMean = null;
        string? meanSource = null;
        if (options.Mode == AblationMode.Mean)
        {
            var prompts = options.MeanPrompts ?? [tokens];
            if (prompts.Count == 0) throw new UsageException("--mean-prompts: no reference prompts");
            meanSource = options.MeanPrompts == null ? "the prompt itself (all positions)" : $"{prompts.Count} reference prompt(s), all positions";
            var zLayers = heads.Select(h => h.Layer).ToHashSet();
            var nLayers = neurons.Select(n => n.Layer).ToHashSet();
            zMean = new float[L][]; postMean = new float[L][];
            var zSum = new double[L][]; var postSum = new double[L][];
            long rows = 0;
            foreach (var p in prompts)
            {
                InterpMath.CheckTokens(session, p, "--mean-prompts");
                var (_, cache) = session.RunWithCache(p, name =>
                    HookPoints.TryParse(name, out var k, out int l) &&
                    ((k == HookKind.Z && zLayers.Contains(l)) || (k == HookKind.MlpPost && nLayers.Contains(l))));
                foreach (int l in zLayers) Accumulate(ref zSum[l], cache[HookPoints.Name(HookKind.Z, l)].Data, H * d);
                foreach (int l in nLayers) Accumulate(ref postSum[l], cache[HookPoints.Name(HookKind.MlpPost, l)].Data, c.DMlp);
                rows += p.Length;
            }
            for (int l = 0; l < L; l++)
            {
                if (zSum[l] != null) zMean[l] = zSum[l].Select(v => (float)(v / rows)).ToArray();
                if (postSum[l] != null) postMean[l] = postSum[l].Select(v => (float)(v / rows)).ToArray();
            }
        }

        var runs = new List<(string Label, HeadRef[] Heads, NeuronRef[] Neurons)>();
        if (options.Together)
            runs.Add((string.Join("+", heads.Select(h => h.ToString()).Concat(neurons.Select(n => n.ToString()))), heads.ToArray(), neurons.ToArray()));
        else
        {
            foreach (var h in heads) runs.Add((h.ToString(), [h], []));
            foreach (var n in neurons) runs.Add((n.ToString(), [], [n]));
        }

        var entries = new List<AblationEntry>();
        Grid? delta = null;
        if (!options.Together && heads.Count > 0) delta = new Grid(L, H).Fill(double.NaN);
        int done = 0, total = runs.Count * Math.Max(1, sources.Count);
        // fast: the metric of every (run, source) computed up front, then the entries in run order as below
        double[]? fast = promptBase == null ? null : RunFast(session, promptBase, runs, sources, zMean, postMean, options, metric, () => options.Progress?.Invoke(++done, total));
        int runIndex = 0;
        foreach (var (label, hs, ns) in runs)
        {
            double logit;
            if (fast != null)
            {
                if (options.Mode == AblationMode.Resample)
                {
                    double sum = 0;
                    for (int k = 0; k < sources.Count; k++) sum += fast[runIndex * sources.Count + k];
                    logit = sum / sources.Count;
                }
                else logit = fast[runIndex];
            }
            else if (options.Mode == AblationMode.Resample)
            {
                double sum = 0;
                for (int k = 0; k < sources.Count; k++)
                {
                    var (zs, ps) = sources[k];
                    long key = (long)runIndex * sources.Count + k;
                    if (options.Journal == null || !options.Journal.TryGet(key, out double m))
                    {
                        m = metric.Of(InterpMath.RunLastEdited(session, tokens, ResampleHooks(hs, ns, zs, ps)));
                        options.Journal?.Record(key, m);
                    }
                    sum += m;
                    options.Progress?.Invoke(++done, total);
                }
                logit = sum / sources.Count;
            }
            else
            {
                if (options.Journal == null || !options.Journal.TryGet(runIndex, out logit))
                {
                    logit = metric.Of(InterpMath.RunLastEdited(session, tokens, Hooks(hs, ns, zMean, postMean, d)));
                    options.Journal?.Record(runIndex, logit);
                }
                options.Progress?.Invoke(++done, total);
            }
            runIndex++;
            entries.Add(new AblationEntry(label, hs, ns, logit, logit - baseLogit));
            if (delta != null && hs.Length == 1 && ns.Length == 0) delta[hs[0].Layer, hs[0].Head] = logit - baseLogit;
        }
        var ranked = entries.Select((e, i) => (e, i)).OrderByDescending(x => Math.Abs(x.e.Delta)).ThenBy(x => x.i).Take(options.Top).Select(x => x.e).ToList();
        return new AblationResult(tokens, tgt, options.Mode, meanSource, baseLogit, delta, entries)
        {
            Metric = metric, Ranked = ranked, ResamplePrompts = options.Mode == AblationMode.Resample ? options.ResamplePrompts : null,
        };
    }

    /// <summary>
    /// The ablation runs as a sweep from the prompt run's cached states (each run starts at its first ablated layer, all
    /// positions): the metric of each run (resample: of each (run, source) pair, source-minor), in run order. The lane hooks
    /// (zero, mean, resample) carry device forms, so on a GPU backend they run as kernels on the lanes' taps.
    /// </summary>
    static double[] RunFast(Session session, SweepBase @base, List<(string Label, HeadRef[] Heads, NeuronRef[] Neurons)> runs,
        List<(float[][] Z, float[][] Post)> sources, float[][]? zMean, float[][]? postMean, AblationOptions options, MetricSpec metric, Action progress)
    {
        var c = session.Config;
        int T = @base.Length;
        var zShape = HookPoints.Shape(c, HookKind.Z, T, T);
        var postShape = HookPoints.Shape(c, HookKind.MlpPost, T, T);
        bool resample = options.Mode == AblationMode.Resample;
        int perRun = resample ? sources.Count : 1;
        var cells = new List<SweepCell>(runs.Count * perRun);
        foreach (var (_, hs, ns) in runs)
            for (int k = 0; k < perRun; k++)
            {
                var patches = new List<SweepPatch>();
                foreach (var h in hs)
                {
                    var patch = new SitePatch(new Site(HookKind.Z, h.Layer, Head: h.Head), zShape);
                    var hook = resample ? patch.CopyHook(HookKind.Z, h.Layer, sources[k].Z[h.Layer])
                        : zMean?[h.Layer] is float[] mean ? patch.SetPerHeadHook(HookKind.Z, h.Layer, mean)
                        : patch.FillHook(HookKind.Z, h.Layer, 0f);
                    patches.Add(new SweepPatch(new PatchSite(HookKind.Z, h.Layer, null), hook));
                }
                foreach (var n in ns)
                {
                    var patch = new SitePatch(new Site(HookKind.MlpPost, n.Layer, Index: n.Index), postShape);
                    var hook = resample ? patch.CopyHook(HookKind.MlpPost, n.Layer, sources[k].Post[n.Layer])
                        : postMean?[n.Layer] is float[] mean ? patch.FillHook(HookKind.MlpPost, n.Layer, mean, n.Index)
                        : patch.FillHook(HookKind.MlpPost, n.Layer, 0f);
                    patches.Add(new SweepPatch(new PatchSite(HookKind.MlpPost, n.Layer, null), hook));
                }
                cells.Add(SweepCell.Create(c, @base, patches));
            }
        var values = new double[cells.Count];
        var journal = options.Journal;
        for (int i = 0; i < cells.Count; i++)
            if (journal != null && journal.TryGet(i, out double v)) { values[i] = v; progress(); }
        var columns = metric.LogitColumns;
        SweepRunner.Run(session, cells, options.Sweep.Resuming(journal), (i, last) =>
        {
            values[i] = columns == null ? metric.Of(last) : metric.OfColumns(last);
            if (journal != null && journal.Has(i)) return;
            journal?.Record(i, values[i]);
            progress();
        }, columns);
        return values;
    }

    /// <summary>Every neuron of the given layers (a neuron sweep).</summary>
    public static List<NeuronRef> AllNeurons(ModelConfig c, IEnumerable<int> layers)
    {
        var list = new List<NeuronRef>();
        foreach (int l in layers)
        {
            if (l < 0 || l >= c.NLayers) throw new UsageException($"--layers: layer {l} is out of range (model has {c.NLayers} layers)");
            for (int i = 0; i < c.DMlp; i++) list.Add(new NeuronRef(l, i));
        }
        return list;
    }

    /// <summary>
    /// The edits that copy a source run's z (heads) and hook_post (neurons) at the same positions: Set blocks reading the
    /// source tensors (interventions: kernels on a GPU backend).
    /// </summary>
    static List<EditHook> ResampleHooks(HeadRef[] heads, NeuronRef[] neurons, float[][] zSrc, float[][] postSrc)
    {
        var hooks = new List<EditHook>();
        foreach (var g in heads.GroupBy(h => h.Layer))
            hooks.Add(BlockList.CopySites(HookKind.Z, g.Key, g.Select(h => new Site(HookKind.Z, g.Key, Head: h.Head)).ToArray(), zSrc[g.Key]));
        foreach (var g in neurons.GroupBy(n => n.Layer))
        {
            var idx = g.Select(n => n.Index).ToArray();
            var src = postSrc[g.Key];
            hooks.Add(new EditHook(HookKind.MlpPost, g.Key, call =>
            {
                // row by row, the neurons in the given order (the order of the former host hook's writes)
                int M = call.Shape.D1;
                var list = new BlockList();
                foreach (int i in idx) list.Piece(InterventionOp.Set, 0, i, 1, src, i, M);
                ExtendRows(list, call.Shape.D0);
                return list;
            }));
        }
        return hooks;
    }

    /// <summary>Makes each one-row block of <paramref name="list"/> cover rows 0 .. rows − 1 (the same columns on every row).</summary>
    static void ExtendRows(BlockList list, int rows)
    {
        for (int k = 0; k < list.Count; k++) list[k] = list[k] with { RowCount = rows };
    }

    public static List<HeadRef> AllHeads(ModelConfig c)
    {
        var list = new List<HeadRef>();
        for (int l = 0; l < c.NLayers; l++)
            for (int h = 0; h < c.NHeads; h++) list.Add(new HeadRef(l, h));
        return list;
    }

    static void Accumulate(ref double[] sum, float[] data, int width)
    {
        sum ??= new double[width];
        for (int i = 0; i < data.Length; i++) sum[i % width] += data[i];
    }

    /// <summary>
    /// The edits that ablate these heads (at hook_z) and neurons (at mlp.hook_post) at every position; means null = zero
    /// ablation, else Set blocks reading the mean (a head: its d values of the [H·d] mean; a neuron: one value of the
    /// [d_mlp] mean). Interventions: kernels on a GPU backend, the former host hooks' writes on the CPU backends.
    /// </summary>
    static List<EditHook> Hooks(HeadRef[] heads, NeuronRef[] neurons, float[][]? zMean, float[][]? postMean, int d)
    {
        var hooks = new List<EditHook>();
        foreach (var g in heads.GroupBy(h => h.Layer))
        {
            var hs = g.Select(h => h.Head).ToArray();
            var mean = zMean?[g.Key];
            hooks.Add(new EditHook(HookKind.Z, g.Key, call =>
            {
                var list = new BlockList();
                foreach (int h in hs)
                    if (mean == null) list.Piece(InterventionOp.Zero, 0, h * d, d);
                    else list.Piece(InterventionOp.Set, 0, h * d, d, mean, h * d, 0);
                ExtendRows(list, call.Shape.D0);
                return list;
            }));
        }
        foreach (var g in neurons.GroupBy(n => n.Layer))
        {
            var idx = g.Select(n => n.Index).ToArray();
            var mean = postMean?[g.Key];
            hooks.Add(new EditHook(HookKind.MlpPost, g.Key, call =>
            {
                var list = new BlockList();
                foreach (int i in idx)
                    if (mean == null) list.Piece(InterventionOp.Zero, 0, i, 1);
                    else list.Piece(InterventionOp.Set, 0, i, 1, mean, i, 0);
                ExtendRows(list, call.Shape.D0);
                return list;
            }));
        }
        return hooks;
    }
}
