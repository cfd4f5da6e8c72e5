using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>What a relative σ is relative to: the std of the chosen component's own values, or of the whole tap.</summary>
public enum StdScope { Component, Tap }

/// <summary>Which components a noise sweep perturbs one at a time.</summary>
public enum NoiseSweep { Heads, Layers, Neurons, Resid }

public sealed record NoiseOptions
{
    /// <summary>Absolute σ. Exactly one of <see cref="Sigma"/> and <see cref="SigmaRel"/>.</summary>
    public double? Sigma { get; init; }
    /// <summary>σ = SigmaRel × the std of the clean activation over the prompt (see <see cref="StdOver"/>).</summary>
    public double? SigmaRel { get; init; }
    public StdScope StdOver { get; init; } = StdScope.Component;
    public int Samples { get; init; } = 10;
    public int Seed { get; init; } = 1;
    /// <summary>Positions that receive noise (null = every position); in sweeps, the positions of every component.</summary>
    public IReadOnlyCollection<int>? Positions { get; init; }
    public Action<int, int>? Progress { get; init; }
    /// <summary>Finished runs (component c, sample s: c × samples + s), for a sweep that resumes after an interruption.</summary>
    public Engine.Interp.Sweeps.ICellJournal? Journal { get; init; }
}

/// <summary>The metric under noise on one component: σ used, the per-sample metrics and their summary.</summary>
public sealed record NoiseStats(
    TapSelection Component,
    string Label,
    // The clean activation's std the relative σ is based on (over the prompt, unbiased), and the σ used.
    double ActivationStd,
    double Sigma,
    double[] Samples,
    double Mean,
    // Sample standard deviation over the samples (unbiased; 0 for one sample).
    double Spread,
    double Min,
    double Max,
    // clean − mean, and (clean − mean) / |clean| (NaN when clean = 0).
    double Drop,
    double RelativeDrop);

/// <summary>Result of <see cref="NoiseMaking.Run"/> / <see cref="NoiseMaking.RunSweep"/>.</summary>
public sealed record NoiseResult(
    int[] Tokens,
    MetricSpec Metric,
    double Clean,
    // "absolute" or "relative (k × std of the component | tap over the prompt)".
    string SigmaMode,
    int Samples,
    int Seed,
    IReadOnlyList<NoiseStats> Components,
    // Sweeps: the drops as a table (heads [L][H], layers [L][attn, mlp], resid [L][T]); null for neuron sweeps and single runs.
    Grid? DropGrid,
    string[]? GridAxes,
    // The components by drop, largest first.
    IReadOnlyList<NoiseStats> Ranked);

/// <summary>
/// Noise making (SPEC "Methods without fixtures"): Gaussian noise N(0, σ²) added to a chosen activation (any tap, or a
/// head / neuron / column of it) at chosen positions; σ absolute or relative to the standard deviation of that clean
/// activation over the prompt. S samples from System.Random(seed) (Box–Muller), the SAME draws for every component of a
/// sweep (common random numbers, so components are compared on equal noise). Reports the metric's mean, spread, min/max
/// and its drop relative to the clean run.
/// </summary>
public static class NoiseMaking
{
    public static NoiseResult Run(Session session, int[] tokens, IReadOnlyList<TapSelection> components, MetricSpec metric, NoiseOptions options)
    {
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        Check(c, metric, options);
        if (components.Count == 0) throw new UsageException("noise: no component to perturb");
        int T = tokens.Length;
        foreach (var comp in components)
        {
            comp.Validate(c, "--hook");
            if (comp.Positions != null)
                foreach (int p in comp.Positions)
                    if (p >= T) throw new UsageException($"--positions: position {p} is out of range [0, {T})");
        }
        var names = components.Select(x => x.HookName).ToHashSet();
        var (logits, cache) = session.RunWithCache(tokens, names.Contains);
        double clean = metric.Of(InterpMath.LastRow(logits, c.VocabSize));

        var stats = new List<NoiseStats>();
        int total = components.Count * options.Samples, done = 0;
        var tapStd = new Dictionary<string, double>();
        for (int ci = 0; ci < components.Count; ci++)
        {
            var comp = components[ci];
            var t = cache[comp.HookName];
            double std = options.StdOver == StdScope.Tap
                ? (tapStd.TryGetValue(comp.HookName, out var ts) ? ts : tapStd[comp.HookName] = Std(t.Data))
                : Std((comp with { Positions = null }).Values(t));
            double sigma = options.Sigma ?? options.SigmaRel!.Value * std;
            var shape = t.Shape.Length == 2 ? new TapShape(t.Shape[0], t.Shape[1]) : new TapShape(t.Shape[0], t.Shape[1], t.Shape[2]);
            int n = comp.Segments(shape, 0).Sum(s => s.Length);
            // the same generator state for every component: sample s uses draws [s·n, (s+1)·n)
            var rng = new Random(options.Seed);
            var noise = new float[options.Samples * n];
            for (int i = 0; i < noise.Length; i++) noise[i] = (float)(sigma * TraceNoise.Gaussian(rng));
            var samples = new double[options.Samples];
            for (int s = 0; s < options.Samples; s++)
            {
                long key = (long)ci * options.Samples + s;
                if (options.Journal != null && options.Journal.TryGet(key, out double known))
                {
                    samples[s] = known;
                    options.Progress?.Invoke(++done, total);
                    continue;
                }
                int sample = s;
                // x += noise, as Add blocks reading the component's noise table (uploaded once on a device backend)
                var last = InterpMath.RunLastEdited(session, tokens, [new EditHook(comp.Kind, comp.Layer, call =>
                {
                    int k = sample * n, cols = call.Cols;
                    var list = new BlockList();
                    foreach (var (o, len, _) in comp.Segments(call.Shape, call.Pos0))
                    {
                        list.Piece(InterventionOp.Add, o / cols, o % cols, len, noise, k, len);
                        k += len;
                    }
                    return list;
                })]);
                samples[s] = metric.Of(last);
                options.Journal?.Record(key, samples[s]);
                options.Progress?.Invoke(++done, total);
            }
            double mean = samples.Average();
            double spread = samples.Length > 1 ? Math.Sqrt(samples.Sum(x => (x - mean) * (x - mean)) / (samples.Length - 1)) : 0;
            stats.Add(new NoiseStats(comp, comp.Label, std, sigma, samples, mean, spread, samples.Min(), samples.Max(), clean - mean,
                clean == 0 ? double.NaN : (clean - mean) / Math.Abs(clean)));
        }
        string mode = options.Sigma != null ? "absolute"
            : $"relative: {options.SigmaRel} × the std of the clean {(options.StdOver == StdScope.Tap ? "tap (all its values)" : "component's values")} over the prompt";
        var ranked = stats.OrderByDescending(s => s.Drop).ToList();
        return new NoiseResult(tokens, metric, clean, mode, options.Samples, options.Seed, stats, null, null, ranked);
    }

    /// <summary>
    /// Perturbs each component of a kind in turn: heads (blocks.L.attn.hook_z, head h), layers (hook_attn_out and
    /// hook_mlp_out of each layer), neurons (blocks.L.mlp.hook_post[:, i] for the given layers, default all), resid
    /// (blocks.L.hook_resid_pre at one position at a time, over the chosen positions).
    /// </summary>
    public static NoiseResult RunSweep(Session session, int[] tokens, NoiseSweep sweep, MetricSpec metric, NoiseOptions options, IReadOnlyList<int>? layers = null)
    {
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        int L = c.NLayers, H = c.NHeads, T = tokens.Length;
        var ls = layers ?? Enumerable.Range(0, L).ToList();
        foreach (int l in ls) if (l < 0 || l >= L) throw new UsageException($"--layers: layer {l} is out of range (the model has {L} layers)");
        var pos = options.Positions;
        var comps = new List<TapSelection>();
        Grid? grid = null;
        string[]? axes = null;
        var cells = new List<int>();
        switch (sweep)
        {
            case NoiseSweep.Heads:
                grid = new Grid(L, H).Fill(double.NaN); axes = ["layer", "head"];
                foreach (int l in ls) for (int h = 0; h < H; h++) { comps.Add(TapSelection.Head(l, h, pos)); cells.Add(l * H + h); }
                break;
            case NoiseSweep.Layers:
                grid = new Grid(L, 2).Fill(double.NaN); axes = ["layer", "attn_out|mlp_out"];
                foreach (int l in ls)
                {
                    comps.Add(new TapSelection(HookKind.AttnOut, l, null, pos)); cells.Add(l * 2);
                    comps.Add(new TapSelection(HookKind.MlpOut, l, null, pos)); cells.Add(l * 2 + 1);
                }
                break;
            case NoiseSweep.Neurons:
                foreach (int l in ls) for (int i = 0; i < c.DMlp; i++) { comps.Add(TapSelection.Neuron(l, i, pos)); cells.Add(-1); }
                break;
            case NoiseSweep.Resid:
                grid = new Grid(L, T).Fill(double.NaN); axes = ["layer", "position"];
                var ps = pos?.Order().ToList() ?? Enumerable.Range(0, T).ToList();
                foreach (int l in ls) foreach (int p in ps) { comps.Add(new TapSelection(HookKind.ResidPre, l, null, [p])); cells.Add(l * T + p); }
                break;
        }
        var r = Run(session, tokens, comps, metric, options);
        if (grid != null) for (int i = 0; i < comps.Count; i++) if (cells[i] >= 0) grid.Data[cells[i]] = r.Components[i].Drop;
        return r with { DropGrid = grid, GridAxes = axes };
    }

    static void Check(ModelConfig c, MetricSpec metric, NoiseOptions o)
    {
        if ((o.Sigma == null) == (o.SigmaRel == null)) throw new UsageException("--sigma: give exactly one of --sigma X and --sigma-rel K");
        if (o.Sigma is double s && !(s >= 0 && double.IsFinite(s))) throw new UsageException($"--sigma: {s} must be a finite number >= 0");
        if (o.SigmaRel is double k && !(k >= 0 && double.IsFinite(k))) throw new UsageException($"--sigma-rel: {k} must be a finite number >= 0");
        if (o.Samples < 1) throw new UsageException($"--samples: {o.Samples} must be at least 1");
        InterpMath.CheckToken(c, metric.Target, "--target");
        if (metric.Kind == OutputMetric.LogitDiff) InterpMath.CheckToken(c, metric.Wrong, "--wrong");
    }

    /// <summary>Unbiased standard deviation (0 for fewer than two values).</summary>
    public static double Std(IReadOnlyList<double> xs)
    {
        if (xs.Count < 2) return 0;
        double mean = 0;
        foreach (var x in xs) mean += x;
        mean /= xs.Count;
        double ss = 0;
        foreach (var x in xs) ss += (x - mean) * (x - mean);
        return Math.Sqrt(ss / (xs.Count - 1));
    }

    static double Std(float[] xs) => Std(xs.Select(x => (double)x).ToArray());
}
