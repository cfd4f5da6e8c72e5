using System.Globalization;
using Engine.Interp.Sweeps;
using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// The fixed corruption of a causal trace: <see cref="Data"/> = noise [Samples, SubjectCount, DModel], already scaled,
/// added to hook_embed at the subject positions. <see cref="Source"/> says where it came from.
/// </summary>
public sealed record TraceNoise(
    float[] Data,
    int Samples,
    int SubjectCount,
    int DModel,
    // "file FILE", "gaussian, std of the subject tokens' embeddings", "gaussian, std of the whole embedding matrix" or "gaussian, given std".
    string Source,
    // Standard deviation the scale multiplies (generated noise only).
    double? Std = null,
    // k in k × std (generated noise only).
    double? Scale = null,
    int? Seed = null,
    // subject_positions from the file's metadata, when present.
    int[]? FileSubjectPositions = null)
{
    /// <summary>Reads tensor "noise" [S, n, d_model] (any float dtype) and metadata subject_positions from a safetensors file.</summary>
    public static TraceNoise FromFile(string path, int dModel)
    {
        using var f = SafeTensorFile.Open(path);
        if (!f.Contains("noise")) throw new UsageException($"--noise: {path} has no tensor named 'noise' (expected [samples, n_subject, d_model])");
        var v = f.View("noise");
        if (v.Rank != 3 || v.Shape[2] != dModel || v.Shape[0] < 1 || v.Shape[1] < 1)
            throw new UsageException($"--noise: tensor 'noise' in {path} has shape [{string.Join(", ", v.Shape)}], expected [samples, n_subject, {dModel}]");
        int[]? positions = null;
        if (f.Metadata.TryGetValue("subject_positions", out var s))
        {
            var parts = s.Trim('[', ']', ' ').Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var list = new List<int>();
            foreach (var p in parts) if (int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out int x)) list.Add(x);
            if (list.Count == parts.Length) positions = list.ToArray();
        }
        return new TraceNoise(v.ToFloatArray(), (int)v.Shape[0], (int)v.Shape[1], dModel, $"file {path}", FileSubjectPositions: positions);
    }

    /// <summary>
    /// Seeded Gaussian noise, scale × std (ROME: 3 × std, 10 samples). <paramref name="stdTokens"/>: token ids whose embedding
    /// rows give the std (all their elements; unbiased, as torch.std); null = the whole embedding matrix. <paramref name="std"/>
    /// overrides both.
    /// </summary>
    public static TraceNoise Generate(Model model, int subjectCount, IReadOnlyList<int>? stdTokens, int samples = 10, double scale = 3, int seed = 1, double? std = null)
    {
        if (samples < 1) throw new UsageException($"--samples: {samples} must be at least 1");
        if (subjectCount < 1) throw new UsageException("--subject-positions: at least one subject position is needed");
        int D = model.Config.DModel;
        string source;
        double sd;
        if (std is double given) { sd = given; source = "gaussian, given std"; }
        else if (stdTokens is { Count: > 0 }) { sd = EmbeddingStd(model, stdTokens); source = "gaussian, std of the subject tokens' embeddings"; }
        else { sd = EmbeddingStd(model, null); source = "gaussian, std of the whole embedding matrix"; }
        var rng = new Random(seed);
        var data = new float[samples * subjectCount * D];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(scale * sd * Gaussian(rng));
        return new TraceNoise(data, samples, subjectCount, D, source, sd, scale, seed);
    }

    /// <summary>Standard deviation (unbiased) of all elements of the embedding rows of these tokens (null: every row).</summary>
    public static double EmbeddingStd(Model model, IReadOnlyList<int>? tokens)
    {
        var e = model.Weights.TokenEmbedding;
        int D = model.Config.DModel, V = model.Config.VocabSize;
        var row = new float[D];
        double sum = 0, sumSq = 0;
        long n = 0;
        IEnumerable<int> rows = tokens ?? Enumerable.Range(0, V);
        foreach (int id in rows)
        {
            e.Widen((long)id * D, row);
            foreach (var x in row) { sum += x; sumSq += (double)x * x; }
            n += D;
        }
        if (n < 2) return 0;
        double mean = sum / n;
        return Math.Sqrt(Math.Max(0, (sumSq - n * mean * mean) / (n - 1)));
    }

    internal static double Gaussian(Random rng)
    {
        // Box–Muller; 1 - NextDouble() is in (0, 1]
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }
}

public sealed record TraceOptions
{
    /// <summary>Window W of the mlp/attn traces (ROME default 10).</summary>
    public int Window { get; init; } = 10;
    public bool Resid { get; init; } = true;
    public bool Mlp { get; init; } = true;
    public bool Attn { get; init; } = true;
    /// <summary>Called after each forward run with (done, total).</summary>
    public Action<int, int>? Progress { get; init; }
    /// <summary>
    /// How the runs go: by default each corrupted sample is captured once and every restoration reruns only the layers
    /// from the (first) restored one and the positions from the restored one, many per batched pass, one sample at a
    /// time; <see cref="SweepOptions.Naive"/> = one full forward pass per run (the definition).
    /// </summary>
    public SweepOptions Sweep { get; init; } = SweepOptions.Default;
    /// <summary>Finished forward runs (numbered in the method's run order), for a sweep that resumes after an interruption.</summary>
    public ICellJournal? Journal { get; init; }
}

/// <summary>Result of <see cref="CausalTrace.Run"/>. Grids are [n_layers][T] of mean restored probabilities (null when not traced).</summary>
public sealed record TraceResult(
    int[] Tokens,
    int[] SubjectPositions,
    int Target,
    int Window,
    TraceNoise Noise,
    double CleanProb,
    double CorruptProb,
    Grid? Resid,
    Grid? Mlp,
    Grid? Attn)
{
    /// <summary>ROME's total effect: clean − corrupted probability.</summary>
    public double TotalEffect => CleanProb - CorruptProb;
    /// <summary>Indirect effect of each restoration: restored − corrupted probability.</summary>
    public Grid? IndirectEffect(Grid? restored) => restored?.Map(v => v - CorruptProb);
}

/// <summary>
/// ROME causal tracing (Meng et al. 2022; SPEC "ROME causal tracing"): corrupt the subject's token embeddings with fixed
/// noise, then restore one clean state at a time and measure the target's probability at the last position, averaged
/// over the noise samples. resid: blocks.L.hook_resid_post[t] alone; mlp/attn: hook_mlp_out/hook_attn_out[t] at every
/// layer of window(L) = [L − ⌊W/2⌋, L + ⌈W/2⌉) ∩ [0, n_layers).
/// </summary>
public static class CausalTrace
{
    public static (int Start, int End) WindowOf(int layer, int window, int nLayers) =>
        (Math.Max(0, layer - window / 2), Math.Min(nLayers, layer + (window + 1) / 2));

    public static TraceResult Run(Session session, int[] tokens, int[] subjectPositions, TraceNoise noise, int? target = null, TraceOptions? options = null)
    {
        options ??= new TraceOptions();
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        int T = tokens.Length, L = c.NLayers, D = c.DModel, V = c.VocabSize, S = noise.Samples, n = subjectPositions.Length;
        if (n == 0) throw new UsageException("--subject-positions: at least one subject position is needed");
        foreach (int p in subjectPositions)
            if (p < 0 || p >= T) throw new UsageException($"--subject-positions: position {p} is out of range [0, {T})");
        if (subjectPositions.Distinct().Count() != n) throw new UsageException("--subject-positions: positions repeat");
        if (noise.SubjectCount != n || noise.DModel != D)
            throw new UsageException($"--noise: noise has shape [{S}, {noise.SubjectCount}, {noise.DModel}], but there are {n} subject positions and d_model is {D}");
        if (options.Window < 1) throw new UsageException($"--window: {options.Window} must be at least 1");

        // Clean run: the states to restore.
        var kinds = new List<(HookKind Kind, bool On)> { (HookKind.ResidPost, options.Resid), (HookKind.MlpOut, options.Mlp), (HookKind.AttnOut, options.Attn) };
        var names = new HashSet<string>();
        foreach (var (k, on) in kinds) if (on) for (int l = 0; l < L; l++) names.Add(HookPoints.Name(k, l));
        var (cleanLogits, clean) = session.RunWithCache(tokens, names.Contains);
        var cleanLast = InterpMath.LastRow(cleanLogits, V);
        int tgt = target ?? Session.ArgMax(cleanLast);
        double cleanProb = InterpMath.Prob(cleanLast, tgt);

        int runsPerSample = 1 + kinds.Count(k => k.On) * L * T;
        int total = runsPerSample * S, done = 0;
        if (!options.Sweep.Naive) return RunFast();

        long calls = 0;
        double Prob(int s, List<EditHook> restore)
        {
            long key = calls++;
            if (options.Journal != null && options.Journal.TryGet(key, out double known)) { options.Progress?.Invoke(++done, total); return known; }
            double p = ProbOf(s, restore);
            options.Journal?.Record(key, p);
            return p;
        }

        double ProbOf(int s, List<EditHook> restore)
        {
            var hooks = new List<EditHook> { new(HookKind.Embed, -1, NoiseEdit(noise, s, subjectPositions)) };
            hooks.AddRange(restore);
            var last = InterpMath.RunLastEdited(session, tokens, hooks);
            options.Progress?.Invoke(++done, total);
            return InterpMath.Prob(last, tgt);
        }

        double corrupt = 0;
        for (int s = 0; s < S; s++) corrupt += Prob(s, []);
        corrupt /= S;

        Grid? Trace(HookKind kind, bool on, bool windowed)
        {
            if (!on) return null;
            var g = new Grid(L, T);
            for (int l = 0; l < L; l++)
            {
                var (a, b) = windowed ? WindowOf(l, options.Window, L) : (l, l + 1);
                for (int t = 0; t < T; t++)
                {
                    var restore = new List<EditHook>();
                    for (int ll = a; ll < b; ll++)
                        restore.Add(BlockList.CopySites(kind, ll, [new Site(kind, ll, Position: t)], clean[HookPoints.Name(kind, ll)].Data));
                    double sum = 0;
                    for (int s = 0; s < S; s++) sum += Prob(s, restore);
                    g[l, t] = sum / S;
                }
            }
            return g;
        }

        var resid = Trace(HookKind.ResidPost, options.Resid, false);
        var mlp = Trace(HookKind.MlpOut, options.Mlp, true);
        var attn = Trace(HookKind.AttnOut, options.Attn, true);
        return new TraceResult(tokens, subjectPositions, tgt, options.Window, noise, cleanProb, corrupt, resid, mlp, attn);

        // One corrupted sample at a time (its base: the noisy run's states; memory = one base): every restoration of the
        // sample starts at its first restored layer and at the restored position. Sums over the samples are taken in
        // sample order per cell, as the definition's loop does.
        TraceResult RunFast()
        {
            var traced = kinds.Where(k => k.On).Select(k => k.Kind).ToArray();
            var sums = traced.Select(_ => new double[L * T]).ToArray();
            // The restorations (kind, layer, position): sites and hooks, fixed over the samples.
            var plan = new List<(int Kind, int Flat, PatchSite[] Sites, (HookKind Kind, int Layer, SitePatch Patch, float[] Src)[] Hooks)>();
            for (int k = 0; k < traced.Length; k++)
            {
                var kind = traced[k];
                bool windowed = kind != HookKind.ResidPost;
                for (int l = 0; l < L; l++)
                {
                    var (a, b) = windowed ? WindowOf(l, options.Window, L) : (l, l + 1);
                    for (int t = 0; t < T; t++)
                    {
                        var sites = new PatchSite[b - a];
                        var hooks = new (HookKind, int, SitePatch, float[])[b - a];
                        for (int ll = a; ll < b; ll++)
                        {
                            var at = SweepCell.Lift(c, new PatchSite(kind, ll, t));
                            sites[ll - a] = at;
                            hooks[ll - a] = (at.Kind, at.Layer, new SitePatch(new Site(kind, ll, Position: t), HookPoints.Shape(c, kind, T, T)), clean[HookPoints.Name(kind, ll)].Data);
                        }
                        plan.Add((k, l * T + t, sites, hooks));
                    }
                }
            }
            double corruptSum = 0;
            var journal = options.Journal;
            long stride = plan.Count + 1;   // journal numbering: sample s's cells s·stride + i, its corrupted run s·stride + plan.Count
            for (int s = 0; s < S; s++)
            {
                long first = s * stride;
                if (journal != null && journal.TryGet(first + plan.Count, out double knownCorrupt)
                    && Enumerable.Range(0, plan.Count).All(i => journal.Has(first + i)))
                {
                    // a sample finished before the interruption: its values, added in the same order
                    corruptSum += knownCorrupt;
                    for (int i = 0; i < plan.Count; i++) { journal.TryGet(first + i, out double v); sums[plan[i].Kind][plan[i].Flat] += v; }
                    done += plan.Count + 1;
                    options.Progress?.Invoke(done, total);
                    continue;
                }
                SweepBase sample;
                using (session.Hooks.AddIntervention(HookKind.Embed, -1, NoiseEdit(noise, s, subjectPositions)))
                    sample = session.CaptureBase(tokens);
                using (sample)
                {
                    double corruptProb = InterpMath.Prob(sample.LastLogits, tgt);
                    corruptSum += corruptProb;
                    if (journal != null && !journal.Has(first + plan.Count)) journal.Record(first + plan.Count, corruptProb);
                    options.Progress?.Invoke(++done, total);
                    var cells = new List<SweepCell>(plan.Count);
                    foreach (var (_, _, sites, hooks) in plan)
                        cells.Add(SweepCell.Create(c, sample, sites.Select((site, i) => new SweepPatch(site, hooks[i].Patch.CopyHook(hooks[i].Kind, hooks[i].Layer, hooks[i].Src))).ToArray()));
                    var probs = new double[plan.Count];
                    for (int i = 0; i < plan.Count; i++)
                        if (journal != null && journal.TryGet(first + i, out double v)) { probs[i] = v; done++; }
                    SweepRunner.Run(session, cells, options.Sweep.Resuming(journal, first), (i, last) =>
                    {
                        probs[i] = InterpMath.Prob(last, tgt);
                        if (journal != null && journal.Has(first + i)) return;
                        journal?.Record(first + i, probs[i]);
                        options.Progress?.Invoke(++done, total);
                    });
                    for (int i = 0; i < plan.Count; i++) sums[plan[i].Kind][plan[i].Flat] += probs[i];
                }
            }
            Grid? Result(HookKind kind)
            {
                int k = Array.IndexOf(traced, kind);
                return k < 0 ? null : new Grid([L, T], sums[k].Select(v => v / S).ToArray());
            }
            return new TraceResult(tokens, subjectPositions, tgt, options.Window, noise, cleanProb, corruptSum / S,
                Result(HookKind.ResidPost), Result(HookKind.MlpOut), Result(HookKind.AttnOut));
        }
    }

    /// <summary>
    /// Adds noise[s][i] to hook_embed row subjectPositions[i], as intervention blocks (Add reading the noise table, which a
    /// device backend uploads once): what <see cref="NoiseHook"/> does, with the same arithmetic (x + 1 · n = x + n).
    /// </summary>
    public static Func<TapCall, IEnumerable<DeviceIntervention>> NoiseEdit(TraceNoise noise, int sample, int[] subjectPositions)
    {
        int D = noise.DModel, n = subjectPositions.Length;
        return call =>
        {
            var list = new BlockList();
            for (int i = 0; i < n; i++)
            {
                int row = subjectPositions[i] - call.Pos0;
                if (row < 0 || row >= call.Shape.D0) continue;
                list.Piece(InterventionOp.Add, row, 0, D, noise.Data, (sample * n + i) * D, D);
            }
            return list;
        };
    }

    /// <summary>Adds noise[s][i] to hook_embed row subjectPositions[i] (the host hook; the methods register <see cref="NoiseEdit"/>).</summary>
    public static HookFn NoiseHook(TraceNoise noise, int sample, int[] subjectPositions)
    {
        int D = noise.DModel, n = subjectPositions.Length;
        return tap =>
        {
            for (int i = 0; i < n; i++)
            {
                int row = subjectPositions[i] - tap.Pos0;
                if (row < 0 || row >= tap.Shape.D0) continue;
                var dst = tap.Data.Slice(row * D, D);
                var src = noise.Data.AsSpan((sample * n + i) * D, D);
                for (int j = 0; j < D; j++) dst[j] += src[j];
            }
        };
    }
}
