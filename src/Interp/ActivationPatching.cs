using Engine.Interp.Sweeps;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>What is patched: residual-stream-like taps by (layer, position), or per-head taps.</summary>
public enum PatchActivation { ResidPre, ResidMid, ResidPost, AttnOut, MlpOut, Z, Q, K, V, Pattern }

/// <summary>
/// logit_diff = logits[P][answer] − logits[P][wrong]; normalized = (patched − corrupt) / (clean − corrupt) of logit_diff;
/// prob / logprob = softmax / log-softmax of logits[P] at the answer token. P = T − 1.
/// </summary>
public enum PatchMetric { LogitDiff, Normalized, Prob, LogProb }

/// <summary>Denoising: the corrupted run receives clean activations. Noising: the clean run receives corrupted ones.</summary>
public enum PatchDirection { Denoise, Noise }

public sealed record PatchOptions
{
    public PatchActivation Activation { get; init; } = PatchActivation.ResidPre;
    public PatchMetric Metric { get; init; } = PatchMetric.LogitDiff;
    public PatchDirection Direction { get; init; } = PatchDirection.Denoise;
    /// <summary>Per-head activations: one cell per (layer, position, head) instead of per (layer, head) over all positions.</summary>
    public bool PerPosition { get; init; }
    /// <summary>Called after each patched run with (done, total).</summary>
    public Action<int, int>? Progress { get; init; }
    /// <summary>
    /// How the cells run: by default from the target run's cached state at the patched layer and position, many cells
    /// per batched pass; <see cref="SweepOptions.Naive"/> = one full forward pass per cell (the definition).
    /// </summary>
    public SweepOptions Sweep { get; init; } = SweepOptions.Default;
    /// <summary>Finished cells (numbered in the order of the result's cells), for a sweep that resumes after an interruption.</summary>
    public ICellJournal? Journal { get; init; }
}

/// <summary>
/// Result of <see cref="ActivationPatching.Run"/>. <see cref="Patched"/> holds the raw base metric (logit_diff for
/// LogitDiff/Normalized, else prob/logprob) of every patched run, <see cref="Normalized"/> (patched − corrupt) /
/// (clean − corrupt) of it, and <see cref="Values"/> the requested metric (Normalized or Patched).
/// <see cref="Axes"/> names the grid axes, e.g. ["layer", "position"], ["layer", "head"], ["layer", "position", "head"].
/// </summary>
public sealed record PatchResult(
    PatchActivation Activation,
    PatchDirection Direction,
    PatchMetric Metric,
    bool PerPosition,
    int[] CleanTokens,
    int[] CorruptTokens,
    int AnswerToken,
    int WrongToken,
    string[] Axes,
    double CleanMetric,
    double CorruptMetric,
    Grid Patched,
    Grid Normalized,
    Grid Values);

/// <summary>
/// Activation patching (SPEC "activation patching of the residual stream"; TransformerLens patching.py for the
/// variants). One clean run with a cache, one corrupted run, then one run per cell with a single hook that overwrites
/// that cell's slice with the other run's value.
/// </summary>
public static class ActivationPatching
{
    public static HookKind Kind(PatchActivation a) => a switch
    {
        PatchActivation.ResidPre => HookKind.ResidPre,
        PatchActivation.ResidMid => HookKind.ResidMid,
        PatchActivation.ResidPost => HookKind.ResidPost,
        PatchActivation.AttnOut => HookKind.AttnOut,
        PatchActivation.MlpOut => HookKind.MlpOut,
        PatchActivation.Z => HookKind.Z,
        PatchActivation.Q => HookKind.Q,
        PatchActivation.K => HookKind.K,
        PatchActivation.V => HookKind.V,
        PatchActivation.Pattern => HookKind.Pattern,
        _ => throw new ArgumentOutOfRangeException(nameof(a)),
    };

    public static bool IsPerHead(PatchActivation a) => a is PatchActivation.Z or PatchActivation.Q or PatchActivation.K or PatchActivation.V or PatchActivation.Pattern;

    public static string Name(PatchActivation a) => a switch
    {
        PatchActivation.ResidPre => "resid_pre", PatchActivation.ResidMid => "resid_mid", PatchActivation.ResidPost => "resid_post",
        PatchActivation.AttnOut => "attn_out", PatchActivation.MlpOut => "mlp_out", PatchActivation.Z => "z",
        PatchActivation.Q => "q", PatchActivation.K => "k", PatchActivation.V => "v", PatchActivation.Pattern => "pattern",
        _ => a.ToString(),
    };

    public static string Name(PatchMetric m) => m switch
    {
        PatchMetric.LogitDiff => "logit_diff", PatchMetric.Normalized => "normalized", PatchMetric.Prob => "prob", PatchMetric.LogProb => "logprob",
        _ => m.ToString(),
    };

    /// <summary>
    /// Answer/wrong defaults (the fixtures' rule, ROME convention): answer = argmax of the clean last-position logits;
    /// wrong = argmax of the corrupted ones, or the clean runner-up when both argmaxes agree.
    /// </summary>
    public static (int Answer, int Wrong) DefaultAnswerWrong(ReadOnlySpan<float> cleanLast, ReadOnlySpan<float> corruptLast)
    {
        var top = InterpMath.TopK(cleanLast, 2);
        int answer = top[0];
        int wrong = Session.ArgMax(corruptLast);
        if (wrong == answer) wrong = top.Length > 1 ? top[1] : answer;
        return (answer, wrong);
    }

    /// <summary>The raw base metric of a last-position logits row.</summary>
    public static double Metric(ReadOnlySpan<float> last, PatchMetric metric, int answer, int wrong) => metric switch
    {
        PatchMetric.LogitDiff or PatchMetric.Normalized => (double)last[answer] - last[wrong],
        PatchMetric.Prob => InterpMath.Prob(last, answer),
        PatchMetric.LogProb => InterpMath.LogProb(last, answer),
        _ => throw new ArgumentOutOfRangeException(nameof(metric)),
    };

    /// <summary>Checks that the activation exists in this model (resid_mid does not for parallel-residual models).</summary>
    public static void CheckExists(ModelConfig c, PatchActivation a)
    {
        if (a == PatchActivation.ResidMid && c.ParallelResidual)
            throw new UsageException($"--act resid_mid: this {c.ModelType} model uses a parallel residual (x + attn(ln1(x)) + mlp(ln2(x))), so it has no resid_mid; use resid_pre, resid_post, attn_out or mlp_out");
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> with every site overwritten from <paramref name="source"/> (a cache of the other run);
    /// returns the last logits row. The copies are interventions (Set blocks reading the cached tensor): on a GPU backend
    /// they run as kernels and each cached tensor is uploaded once.
    /// </summary>
    public static float[] RunPatched(Session session, int[] tokens, ActivationCache source, IReadOnlyList<Site> sites)
    {
        var edits = new List<EditHook>();
        foreach (var group in sites.GroupBy(s => (s.Kind, s.Layer)))
            edits.Add(BlockList.CopySites(group.Key.Kind, group.Key.Layer, group.ToArray(), source[HookPoints.Name(group.Key.Kind, group.Key.Layer)].Data));
        return InterpMath.RunLastEdited(session, tokens, edits);
    }

    /// <summary>
    /// The sweep from cached states: the target run is captured once (<see cref="Session.CaptureBase"/>); a cell patching
    /// layer L at position p (every position for per-head cells) reruns layers ≥ L on positions ≥ p only, many cells
    /// per pass. Same cells, same metric, stored by cell. Each cell's copy is a lane hook with a device form (Set blocks
    /// reading the source run's cached tensor), so on a GPU backend no lane tap goes through the host.
    /// </summary>
    static void RunFast(Session session, SweepBase @base, ActivationCache sourceCache, List<(int Flat, Site Site)> cells,
        PatchOptions options, Func<ReadOnlySpan<float>, double> metric, Grid patched, int[]? logitColumns)
    {
        var c = session.Config;
        int T = @base.Length;
        var sweep = new List<SweepCell>(cells.Count);
        foreach (var (_, site) in cells)
        {
            var full = sourceCache[site.HookName];
            var shape = HookPoints.Shape(c, site.Kind, T, T);
            var patch = new SitePatch(site, shape);
            sweep.Add(SweepCell.Single(c, @base, new PatchSite(site.Kind, site.Layer, site.Position), at => patch.CopyHook(at.Kind, at.Layer, full.Data)));
        }
        int done = 0;
        var journal = options.Journal;
        for (int i = 0; i < cells.Count; i++)
            if (journal != null && journal.TryGet(i, out double v)) { patched.Data[cells[i].Flat] = v; done++; }
        SweepRunner.Run(session, sweep, options.Sweep.Resuming(journal), (i, last) =>
        {
            double v = metric(last);
            patched.Data[cells[i].Flat] = v;
            if (journal != null && !journal.Has(i)) { journal.Record(i, v); done++; }
            else if (journal == null) done++;
            options.Progress?.Invoke(Math.Min(done, cells.Count), cells.Count);
        }, logitColumns);
    }

    public static PatchResult Run(Session session, int[] cleanTokens, int[] corruptTokens, int? answer = null, int? wrong = null, PatchOptions? options = null)
    {
        options ??= new PatchOptions();
        var c = session.Config;
        InterpMath.CheckTokens(session, cleanTokens, "--clean-tokens");
        InterpMath.CheckTokens(session, corruptTokens, "--corrupt-tokens");
        if (cleanTokens.Length != corruptTokens.Length)
            throw new UsageException($"--corrupt-tokens: {corruptTokens.Length} tokens, but the clean prompt has {cleanTokens.Length}; patching needs prompts of the same length");
        CheckExists(c, options.Activation);
        if (answer is int a0) InterpMath.CheckToken(c, a0, "--answer");
        if (wrong is int w0) InterpMath.CheckToken(c, w0, "--wrong");
        var kind = Kind(options.Activation);
        int T = cleanTokens.Length, L = c.NLayers, V = c.VocabSize;

        bool denoise = options.Direction == PatchDirection.Denoise;
        int[] sourceTokens = denoise ? cleanTokens : corruptTokens;
        int[] targetTokens = denoise ? corruptTokens : cleanTokens;
        var names = new HashSet<string>(Enumerable.Range(0, L).Select(l => HookPoints.Name(kind, l)));
        var (sourceLogits, sourceCache) = session.RunWithCache(sourceTokens, names.Contains);
        var sourceLast = InterpMath.LastRow(sourceLogits, V).ToArray();
        // The fast path keeps the target run's states (it is the base every cell starts from).
        using var targetBase = options.Sweep.Naive ? null : session.CaptureBase(targetTokens);
        var targetLast = targetBase?.LastLogits ?? InterpMath.LastRow(session.Run(targetTokens), V).ToArray();
        var cleanLast = denoise ? sourceLast : targetLast;
        var corruptLast = denoise ? targetLast : sourceLast;
        var (da, dw) = DefaultAnswerWrong(cleanLast, corruptLast);
        int ans = answer ?? da, wr = wrong ?? dw;
        double cleanMetric = Metric(cleanLast, options.Metric, ans, wr);
        double corruptMetric = Metric(corruptLast, options.Metric, ans, wr);

        bool perHead = IsPerHead(options.Activation);
        int heads = options.Activation is PatchActivation.K or PatchActivation.V ? c.NKvHeads : c.NHeads;
        string[] axes;
        Grid patched;
        var cells = new List<(int Flat, Site Site)>();
        if (!perHead)
        {
            axes = ["layer", "position"];
            patched = new Grid(L, T);
            for (int l = 0; l < L; l++)
                for (int p = 0; p < T; p++) cells.Add((l * T + p, new Site(kind, l, Position: p)));
        }
        else if (!options.PerPosition)
        {
            axes = ["layer", options.Activation is PatchActivation.K or PatchActivation.V ? "kv_head" : "head"];
            patched = new Grid(L, heads);
            for (int l = 0; l < L; l++)
                for (int h = 0; h < heads; h++) cells.Add((l * heads + h, new Site(kind, l, Head: h)));
        }
        else
        {
            axes = ["layer", "position", options.Activation is PatchActivation.K or PatchActivation.V ? "kv_head" : "head"];
            patched = new Grid(L, T, heads);
            for (int l = 0; l < L; l++)
                for (int p = 0; p < T; p++)
                    for (int h = 0; h < heads; h++) cells.Add(((l * T + p) * heads + h, new Site(kind, l, Position: p, Head: h)));
        }

        if (options.Sweep.Naive)
        {
            int done = 0;
            for (int i = 0; i < cells.Count; i++)
            {
                var (flat, site) = cells[i];
                if (options.Journal != null && options.Journal.TryGet(i, out double known)) patched.Data[flat] = known;
                else
                {
                    var last = RunPatched(session, targetTokens, sourceCache, [site]);
                    patched.Data[flat] = Metric(last, options.Metric, ans, wr);
                    options.Journal?.Record(i, patched.Data[flat]);
                }
                options.Progress?.Invoke(++done, cells.Count);
            }
        }
        else
        {
            // logit_diff (and normalized) read two logits: the fast path computes only those.
            bool diff = options.Metric is PatchMetric.LogitDiff or PatchMetric.Normalized;
            if (diff) RunFast(session, targetBase!, sourceCache, cells, options, v => (double)v[0] - v[1], patched, [ans, wr]);
            else RunFast(session, targetBase!, sourceCache, cells, options, v => Metric(v, options.Metric, ans, wr), patched, null);
        }
        double denom = cleanMetric - corruptMetric;
        var normalized = patched.Map(v => (v - corruptMetric) / denom);
        var values = options.Metric == PatchMetric.Normalized ? normalized : patched;
        return new PatchResult(options.Activation, options.Direction, options.Metric, perHead && options.PerPosition,
            cleanTokens, corruptTokens, ans, wr, axes, cleanMetric, corruptMetric, patched, normalized, values);
    }
}
