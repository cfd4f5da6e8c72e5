using System.Security.Cryptography;
using System.Text;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp.Explain;

public sealed record ExplainOptions
{
    /// <summary>How many top-activating contexts to keep per feature.</summary>
    public int Top { get; init; } = 20;
    /// <summary>How many promoted/suppressed tokens (weight-based) and changed tokens (ablation) to report.</summary>
    public int LogitTop { get; init; } = 10;
    /// <summary>Checkpoint file (JSON, written atomically); null = none.</summary>
    public string? StatePath { get; init; }
    /// <summary>Continue from <see cref="StatePath"/> (which must exist and belong to the same run).</summary>
    public bool Resume { get; init; }
    /// <summary>Write the checkpoint every this many windows (and when stopping).</summary>
    public int CheckpointEvery { get; init; } = 50;
    /// <summary>Process at most this many windows in this call, then write the checkpoint and return (incomplete).</summary>
    public int? StopAfter { get; init; }
    /// <summary>Ablation effect over the first this many corpus windows (0 = no effect measurement)...</summary>
    public int EffectWindows { get; init; } = 16;
    /// <summary>...or over this prompt instead.</summary>
    public int[]? EffectTokens { get; init; }
    /// <summary>(windows done, total windows) after each window.</summary>
    public Action<int, int>? Progress { get; init; }
}

/// <summary>
/// One top-activating context: window <see cref="Window"/> of the corpus (its tokens and the feature's activation at
/// every position), the position of the maximum and its value. Activations at an added BOS position are NaN.
/// </summary>
public sealed record ActivatingContext(int Window, string Source, int Start, int MaxPosition, float Value, int[] Tokens, float[] Activations);

public sealed record TokenScore(int Id, double Value);

/// <summary>Weight-based output logits of a feature's output vector (see <see cref="FeatureExplainer.OutputVector"/>).</summary>
public sealed record WeightLogits(string Vector, string Formula, TokenScore[] Promoted, TokenScore[] Suppressed);

/// <summary>
/// The measured effect of ablating the feature (neuron zeroed / direction projected out, at every position) on the
/// output distribution: KL(p_clean ‖ p_ablated) per position (mean and max) and the tokens whose probability changes
/// most on average over the positions.
/// </summary>
public sealed record AblationEffect(string Over, int Prompts, int Positions, double MeanKl, double MaxKl, TokenScore[] Increased, TokenScore[] Decreased);

/// <summary>Activation statistics over every corpus position read (added BOS positions excluded).</summary>
public sealed record FeatureStats(long Positions, double Sum, double SumSquares, long Positive, float Max, float Min)
{
    public double Mean => Positions == 0 ? double.NaN : Sum / Positions;
    public double Density => Positions == 0 ? double.NaN : (double)Positive / Positions;
}

public sealed record FeatureExplanation(Feature Feature, IReadOnlyList<ActivatingContext> Top, FeatureStats Stats, WeightLogits? Logits, string? LogitsNote, AblationEffect? Effect);

/// <summary>Result: per feature its explanation; <see cref="Complete"/> false when the run stopped early (StopAfter).</summary>
public sealed record ExplainResult(IReadOnlyList<FeatureExplanation> Features, Corpus Corpus, int WindowsDone, bool Complete, int ResumedFrom, string Fingerprint);

/// <summary>
/// Feature explanation (issue 3, method 8). Input-based: stream the corpus window by window (one full forward pass
/// each, from position 0), read the feature's activation at every position and keep the top-N windows by their
/// maximum activation (ties: the earlier window; within a window the first maximal position), with the whole window's
/// tokens and activations. Resumable: the state (windows done, top lists, statistics) is checkpointed atomically and a
/// resumed run gives exactly the result of an uninterrupted one. Output-based: the tokens the feature's output vector
/// promotes/suppresses through the final norm's weight and the unembedding (weight-based), and the measured effect of
/// ablating it on the output distribution.
/// </summary>
public static class FeatureExplainer
{
    public static ExplainResult Run(Session session, Corpus corpus, IReadOnlyList<Feature> features, ExplainOptions? options = null)
    {
        options ??= new ExplainOptions();
        var c = session.Config;
        if (features.Count == 0) throw new UsageException("--neuron: nothing to explain (give --neuron L:I or --direction FILE --hook NAME)");
        foreach (var f in features) f.Validate(c);
        var dupe = features.GroupBy(f => f.Label).FirstOrDefault(g => g.Count() > 1);
        if (dupe != null) throw new UsageException($"--neuron: {dupe.Key} given twice");
        if (options.Top < 1) throw new UsageException("--top: must be at least 1");
        if (corpus.Context > session.Capacity) throw new UsageException($"--context: {corpus.Context} is more than the session's capacity of {session.Capacity}");
        if (corpus.Context > c.ContextLength) throw new UsageException($"--context: {corpus.Context} is longer than the model's context of {c.ContextLength}");
        if (options.Resume && options.StatePath == null) throw new UsageException("--resume: needs --state FILE");

        string fingerprint = Fingerprint(session, corpus, features, options.Top);
        ExplainState state;
        if (options.Resume && File.Exists(options.StatePath!)) state = ExplainState.Load(options.StatePath!, fingerprint, features.Count);
        else if (options.Resume) throw new UsageException($"--resume: state file '{options.StatePath}' does not exist");
        else state = new ExplainState(fingerprint, features.Count);
        int resumedFrom = state.WindowsDone;

        // one hook per (kind, layer) that computes every feature read there
        var acts = new float[features.Count][];
        for (int i = 0; i < acts.Length; i++) acts[i] = new float[corpus.Context];
        var handles = new List<IDisposable>();
        try
        {
            foreach (var group in Enumerable.Range(0, features.Count).GroupBy(i => (features[i].Kind, features[i].Layer)))
            {
                var idx = group.ToArray();
                handles.Add(session.Hooks.Add(group.Key.Kind, group.Key.Layer, tap =>
                {
                    int rows = tap.Shape.D0;
                    foreach (int i in idx)
                        for (int t = 0; t < rows; t++) acts[i][t] = features[i].Activation(tap.Row(t));
                }));
            }

            int total = corpus.Windows.Count, processed = 0;
            while (state.WindowsDone < total)
            {
                if (options.StopAfter is int stop && processed >= stop) break;
                var w = corpus.Windows[state.WindowsDone];
                session.Run(w.Tokens);
                int T = w.Tokens.Length, t0 = w.HasBos ? 1 : 0;
                for (int i = 0; i < features.Count; i++)
                    state.Add(i, w.Index, acts[i].AsSpan(0, T), t0, options.Top);
                state.WindowsDone++;
                processed++;
                if (options.StatePath != null && state.WindowsDone % Math.Max(1, options.CheckpointEvery) == 0) state.Save(options.StatePath);
                options.Progress?.Invoke(state.WindowsDone, total);
            }
        }
        finally
        {
            foreach (var h in handles) h.Dispose();
        }
        if (options.StatePath != null) state.Save(options.StatePath);
        bool complete = state.WindowsDone == corpus.Windows.Count;

        var list = new List<FeatureExplanation>();
        for (int i = 0; i < features.Count; i++)
        {
            var f = features[i];
            var top = state.Top[i].Select(e =>
            {
                var w = corpus.Windows[e.Window];
                return new ActivatingContext(e.Window, w.Source, w.Start, e.MaxPosition, e.Value, w.Tokens, e.Activations);
            }).ToList();
            WeightLogits? logits = null;
            string? note = null;
            AblationEffect? effect = null;
            if (complete)
            {
                var (v, what, why) = OutputVector(session.Model, f);
                if (v != null) logits = WeightBasedLogits(session.Model, v, what, options.LogitTop, f.Kind == HookKind.LnFinalNormalized);
                else note = why;
            }
            list.Add(new FeatureExplanation(f, top, state.Stats(i), logits, note, effect));
        }
        if (complete && (options.EffectTokens != null || options.EffectWindows > 0))
        {
            var prompts = options.EffectTokens != null ? [options.EffectTokens] : corpus.Windows.Take(options.EffectWindows).Select(w => w.Tokens).ToList();
            string over = options.EffectTokens != null ? "the given prompt" : $"the first {prompts.Count} corpus windows";
            var effects = MeasureAblation(session, prompts, features, options.LogitTop, over);
            for (int i = 0; i < list.Count; i++) list[i] = list[i] with { Effect = effects[i] };
        }
        return new ExplainResult(list, corpus, state.WindowsDone, complete, resumedFrom, fingerprint);
    }

    /// <summary>The run's identity in a checkpoint: model, backend, corpus windows, features, N.</summary>
    static string Fingerprint(Session s, Corpus corpus, IReadOnlyList<Feature> features, int top)
    {
        var sb = new StringBuilder();
        sb.Append("model=").Append(Path.GetFullPath(s.Model.Folder)).Append(";type=").Append(s.Config.ModelType)
          .Append(";layers=").Append(s.Config.NLayers).Append(";backend=").Append(s.Kernels.Name)
          .Append(";corpus=").Append(corpus.Fingerprint()).Append(";context=").Append(corpus.Context).Append(";top=").Append(top);
        foreach (var f in features)
        {
            sb.Append(";feature=").Append(f.Label).Append('@').Append(f.Hook);
            if (f is DirectionFeature d)
                sb.Append('#').Append(Convert.ToHexString(SHA256.HashData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(d.Direction.AsSpan())))[..16]);
        }
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString()))).ToLowerInvariant();
    }

    /// <summary>
    /// The feature's output vector in the residual stream (d_model), or null with the reason. Neuron i of layer L:
    /// W_out[:, i]. Direction d in a residual-stream tap (hook_embed, hook_pos_embed, resid_pre/mid/post, attn_out,
    /// mlp_out): d itself; in mlp.hook_post: W_out d; in attn.hook_z: W_O d (all heads' slices); in
    /// ln_final.hook_normalized: d (already after the final norm).
    /// </summary>
    public static (double[]? Vector, string What, string? Why) OutputVector(Model model, Feature f)
    {
        var c = model.Config;
        var w = model.Weights;
        int D = c.DModel;
        double[] Project(Linear lin, Func<int, double> input)
        {
            var v = new double[D];
            for (int o = 0; o < D; o++)
            {
                double s = 0;
                for (int j = 0; j < lin.In; j++) s += InterpMath.Weight(lin, o, j) * input(j);
                v[o] = s;
            }
            return v;
        }
        switch (f)
        {
            case NeuronFeature n:
            {
                var lin = w.Layers[n.NeuronLayer].MlpOut;
                var v = new double[D];
                for (int o = 0; o < D; o++) v[o] = InterpMath.Weight(lin, o, n.Index);
                return (v, $"W_out[:, {n.Index}] of layer {n.NeuronLayer}", null);
            }
            case DirectionFeature d:
                switch (d.Kind)
                {
                    case HookKind.Embed or HookKind.PosEmbed or HookKind.ResidPre or HookKind.ResidMid or HookKind.ResidPost or HookKind.AttnOut or HookKind.MlpOut or HookKind.LnFinalNormalized:
                        return (d.Direction.Select(x => (double)x).ToArray(), "the direction itself", null);
                    case HookKind.MlpPost:
                        return (Project(w.Layers[d.Layer].MlpOut, j => d.Direction[j]), $"W_out d (layer {d.Layer})", null);
                    case HookKind.Z:
                        return (Project(w.Layers[d.Layer].O, j => d.Direction[j]), $"W_O d (layer {d.Layer}, all heads)", null);
                    default:
                        return (null, "", $"{d.Hook} does not write to the residual stream directly, so it has no weight-based output logits");
                }
            default:
                throw new ArgumentException("unknown feature kind");
        }
    }

    /// <summary>
    /// Weight-based logits of an output vector v: W_U · (w_ln ⊙ v'), v' = v − mean(v) for LayerNorm models (the centring
    /// the final norm applies) and v for RMSNorm; w_ln the final norm's weight (Gemma: 1 + w). The norm's 1/scale
    /// (unknown without an input) and its bias (independent of v) are left out: they do not change the ranking.
    /// <paramref name="afterNorm"/>: v is already past the final norm (ln_final.hook_normalized): W_U · v.
    /// </summary>
    public static WeightLogits WeightBasedLogits(Model model, double[] v, string what, int k, bool afterNorm = false)
    {
        var c = model.Config;
        var w = model.Weights;
        int D = c.DModel;
        var x = new double[D];
        string formula;
        if (afterNorm)
        {
            Array.Copy(v, x, D);
            formula = "W_U · v (v is after the final norm)";
        }
        else
        {
            double mean = c.Norm == NormKind.LayerNorm ? v.Average() : 0;
            for (int i = 0; i < D; i++) x[i] = (w.FinalNormWeight[i] + (double)c.NormWeightOffset) * (v[i] - mean);
            formula = c.Norm == NormKind.LayerNorm
                ? "W_U · (w_ln ⊙ (v − mean(v))): final LayerNorm weight applied and v centred as the norm does; scale and bias left out"
                : c.NormWeightOffset != 0 ? $"W_U · ((1 + w_ln) ⊙ v): final RMSNorm weight (with Gemma's +{c.NormWeightOffset}) applied; scale left out"
                : "W_U · (w_ln ⊙ v): final RMSNorm weight applied; scale left out";
        }
        var logits = UnembedVector(model, x);
        var order = Enumerable.Range(0, logits.Length).ToArray();
        Array.Sort(order, (a, b) => logits[b] != logits[a] ? logits[b].CompareTo(logits[a]) : a.CompareTo(b));
        k = Math.Min(k, logits.Length);
        var promoted = order.Take(k).Select(id => new TokenScore(id, logits[id])).ToArray();
        var asc = Enumerable.Range(0, logits.Length).ToArray();
        Array.Sort(asc, (a, b) => logits[a] != logits[b] ? logits[a].CompareTo(logits[b]) : a.CompareTo(b));
        var suppressed = asc.Take(k).Select(id => new TokenScore(id, logits[id])).ToArray();
        return new WeightLogits(what, formula, promoted, suppressed);
    }

    /// <summary>W_U x in double for every token (x in d_model).</summary>
    public static double[] UnembedVector(Model model, double[] x)
    {
        var u = model.Weights.Unembed;
        var logits = new double[u.Out];
        Parallel.For(0, u.Out, id =>
        {
            double s = 0;
            for (int i = 0; i < u.In; i++) s += InterpMath.Weight(u, id, i) * x[i];
            logits[id] = s;
        });
        return logits;
    }

    /// <summary>Per feature: KL and probability changes when it is ablated at every position of each prompt.</summary>
    public static AblationEffect[] MeasureAblation(Session session, IReadOnlyList<int[]> prompts, IReadOnlyList<Feature> features, int k, string over)
    {
        int V = session.Config.VocabSize;
        int cap = prompts.Max(p => p.Length);
        foreach (var p in prompts) InterpMath.CheckTokens(session, p, "--effect-tokens");
        using var s = new Session(session.Model, new SessionOptions { Kernels = session.Kernels, Capacity = Math.Max(cap, 1), AllLogits = true });
        var klSum = new double[features.Count];
        var klMax = new double[features.Count];
        var dp = new double[features.Count][];
        for (int i = 0; i < dp.Length; i++) dp[i] = new double[V];
        int positions = 0;
        foreach (var tokens in prompts)
        {
            int T = tokens.Length;
            var clean = LogSoftmaxRows(s.Run(tokens), T, V);
            for (int i = 0; i < features.Count; i++)
            {
                var f = features[i];
                double[] abl;
                using (s.Hooks.Add(f.Kind, f.Layer, tap => { for (int t = 0; t < tap.Shape.D0; t++) f.Ablate(tap.Row(t)); }))
                    abl = LogSoftmaxRows(s.Run(tokens), T, V);
                for (int t = 0; t < T; t++)
                {
                    double kl = 0;
                    int o = t * V;
                    for (int v = 0; v < V; v++)
                    {
                        double pc = Math.Exp(clean[o + v]), pa = Math.Exp(abl[o + v]);
                        if (pc > 0) kl += pc * (clean[o + v] - abl[o + v]);
                        dp[i][v] += pa - pc;
                    }
                    klSum[i] += kl;
                    klMax[i] = Math.Max(klMax[i], kl);
                }
            }
            positions += T;
        }
        var result = new AblationEffect[features.Count];
        for (int i = 0; i < features.Count; i++)
        {
            var mean = dp[i].Select(x => x / positions).ToArray();
            var ids = Enumerable.Range(0, V).ToArray();
            var up = ids.OrderByDescending(v => mean[v]).ThenBy(v => v).Take(k).Select(v => new TokenScore(v, mean[v])).ToArray();
            var down = ids.OrderBy(v => mean[v]).ThenBy(v => v).Take(k).Select(v => new TokenScore(v, mean[v])).ToArray();
            result[i] = new AblationEffect(over, prompts.Count, positions, klSum[i] / positions, klMax[i], up, down);
        }
        return result;
    }

    static double[] LogSoftmaxRows(ReadOnlySpan<float> logits, int T, int V)
    {
        var r = new double[T * V];
        for (int t = 0; t < T; t++)
        {
            var row = logits.Slice(t * V, V);
            double lse = InterpMath.LogSumExp(row);
            for (int v = 0; v < V; v++) r[t * V + v] = row[v] - lse;
        }
        return r;
    }

    /// <summary>
    /// Brute force (for tests): every window's activations of one feature, by a plain cached run per window.
    /// [window][position] (NaN at an added BOS).
    /// </summary>
    public static float[][] AllActivations(Session session, Corpus corpus, Feature feature)
    {
        var result = new float[corpus.Windows.Count][];
        foreach (var w in corpus.Windows)
        {
            var a = new float[w.Tokens.Length];
            using (session.Hooks.Add(feature.Kind, feature.Layer, tap => { for (int t = 0; t < tap.Shape.D0; t++) a[t] = feature.Activation(tap.Row(t)); }))
                session.Run(w.Tokens);
            if (w.HasBos) a[0] = float.NaN;
            result[w.Index] = a;
        }
        return result;
    }
}
