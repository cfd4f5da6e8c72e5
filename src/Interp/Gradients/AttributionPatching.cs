using Engine.Loader;
using Engine.Runtime;
using Engine.Training;

namespace Engine.Interp.Gradients;

public sealed record AttributionOptions
{
    public PatchActivation Activation { get; init; } = PatchActivation.ResidPre;
    public PatchMetric Metric { get; init; } = PatchMetric.LogitDiff;
    public PatchDirection Direction { get; init; } = PatchDirection.Denoise;
    /// <summary>Per-head activations: one cell per (layer, position, head) instead of per (layer, head).</summary>
    public bool PerPosition { get; init; }
}

/// <summary>
/// Result of attribution patching. <see cref="Attribution"/> is the first-order estimate of (patched − unpatched metric)
/// for every cell, Σ ∂metric/∂act · (act_source − act_target) over the cell's elements. <see cref="Estimate"/> presents
/// it as activation patching does (same axes, Patched = unpatched run's metric + attribution, Normalized, Values), so
/// the two methods' tables, CSVs and pictures line up.
/// </summary>
public sealed record AttributionResult(PatchResult Estimate, Grid Attribution, Precision Precision);

/// <summary>
/// Attribution patching (Nanda; SPEC "Methods without fixtures"): attr(cell) = Σ_d ∂metric/∂act|corrupted ·
/// (act_clean − act_corrupted) over the cell, from one clean forward, one corrupted forward and one backward pass of the
/// metric on the corrupted run (denoising). Noising swaps the roles: the gradient at the clean run times
/// (act_corrupted − act_clean). Every activation kind activation patching supports: resid_pre/mid/post, attn_out,
/// mlp_out by (layer, position); z/q/k/v (q/k before RoPE; k/v by KV head) and pattern by (layer, head) summed over
/// positions, or per (layer, position, head) (pattern: the destination row). Metrics as activation patching; the
/// normalized one divides by (clean − corrupted) logit_diff. Answer/wrong defaults follow activation patching.
/// </summary>
public static class AttributionPatching
{
    public static AttributionResult Run(GradientModel gm, int[] cleanTokens, int[] corruptTokens, int? answer = null, int? wrong = null, AttributionOptions? options = null)
    {
        options ??= new AttributionOptions();
        var c = gm.Config;
        if (cleanTokens.Length != corruptTokens.Length)
            throw new UsageException($"--corrupt-tokens: {corruptTokens.Length} tokens, but the clean prompt has {cleanTokens.Length}; patching needs prompts of the same length");
        foreach (var (t, name) in new[] { (cleanTokens, "--clean-tokens"), (corruptTokens, "--corrupt-tokens") })
            for (int i = 0; i < t.Length; i++)
                if ((uint)t[i] >= (uint)c.VocabSize) throw new UsageException($"{name}: token id {t[i]} at index {i} is out of range (vocabulary size {c.VocabSize})");
        ActivationPatching.CheckExists(c, options.Activation);
        if (options.PerPosition && !ActivationPatching.IsPerHead(options.Activation))
            throw new UsageException($"--per-position: only for per-head activations (z, q, k, v, pattern)");
        var kind = ActivationPatching.Kind(options.Activation);
        int T = cleanTokens.Length, L = c.NLayers;
        bool denoise = options.Direction == PatchDirection.Denoise;

        var cleanLast = gm.Forward(cleanTokens);
        var cleanActs = Enumerable.Range(0, L).Select(l => gm.Activation(kind, l)).ToArray();
        var corruptLast = gm.Forward(corruptTokens);
        var corruptActs = Enumerable.Range(0, L).Select(l => gm.Activation(kind, l)).ToArray();
        var (da, dw) = ActivationPatching.DefaultAnswerWrong(cleanLast, corruptLast);
        int ans = answer ?? da, wr = wrong ?? dw;
        var baseMetric = options.Metric switch
        {
            PatchMetric.Prob => OutputMetric.Prob, PatchMetric.LogProb => OutputMetric.LogProb, _ => OutputMetric.LogitDiff,
        };
        double cleanMetric = GradientModel.Metric(cleanLast, baseMetric, ans, wr).Value;
        double corruptMetric = GradientModel.Metric(corruptLast, baseMetric, ans, wr).Value;

        // gradient at the run that receives the patches (corrupted when denoising): one backward pass
        if (!denoise) gm.Forward(cleanTokens);
        var (_, dLast) = GradientModel.Metric(denoise ? corruptLast : cleanLast, baseMetric, ans, wr);
        gm.Backward(dLast, new HashSet<HookKind> { kind });

        bool perHead = ActivationPatching.IsPerHead(options.Activation);
        bool kv = options.Activation is PatchActivation.K or PatchActivation.V;
        int heads = kv ? c.NKvHeads : c.NHeads;
        string[] axes;
        Grid attr;
        if (!perHead) { axes = ["layer", "position"]; attr = new Grid(L, T); }
        else if (!options.PerPosition) { axes = ["layer", kv ? "kv_head" : "head"]; attr = new Grid(L, heads); }
        else { axes = ["layer", "position", kv ? "kv_head" : "head"]; attr = new Grid(L, T, heads); }

        for (int l = 0; l < L; l++)
        {
            var g = gm.Gradient(kind, l);
            var src = denoise ? cleanActs[l] : corruptActs[l];
            var dst = denoise ? corruptActs[l] : cleanActs[l];
            if (!perHead)
            {
                int D = g.Length / T;
                for (int t = 0; t < T; t++)
                {
                    double s = 0;
                    for (int i = t * D; i < (t + 1) * D; i++) s += g[i] * (src[i] - dst[i]);
                    attr[l, t] = s;
                }
            }
            else if (options.Activation == PatchActivation.Pattern)
            {
                // [H, T, T]: per head, or per (destination row, head)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < T; i++)
                    {
                        double s = 0;
                        for (int j = 0; j <= i; j++) { int o = (h * T + i) * T + j; s += g[o] * (src[o] - dst[o]); }
                        if (options.PerPosition) attr[l, i, h] = s; else attr[l, h] += s;
                    }
            }
            else
            {
                // [T, heads, d]
                int d = c.HeadDim;
                for (int t = 0; t < T; t++)
                    for (int h = 0; h < heads; h++)
                    {
                        double s = 0;
                        for (int i = (t * heads + h) * d; i < (t * heads + h + 1) * d; i++) s += g[i] * (src[i] - dst[i]);
                        if (options.PerPosition) attr[l, t, h] = s; else attr[l, h] += s;
                    }
            }
        }
        double start = denoise ? corruptMetric : cleanMetric;
        var patched = attr.Map(a => start + a);
        var normalized = patched.Map(v => (v - corruptMetric) / (cleanMetric - corruptMetric));
        var values = options.Metric == PatchMetric.Normalized ? normalized : patched;
        var estimate = new PatchResult(options.Activation, options.Direction, options.Metric, perHead && options.PerPosition,
            cleanTokens, corruptTokens, ans, wr, axes, cleanMetric, corruptMetric, patched, normalized, values);
        return new AttributionResult(estimate, attr, gm.Precision);
    }

    /// <summary>Pearson correlation of two grids of the same shape over the cells finite in both.</summary>
    public static double Pearson(Grid a, Grid b)
    {
        if (a.Data.Length != b.Data.Length) throw new ArgumentException("grids of different sizes");
        var pairs = a.Data.Zip(b.Data).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second)).ToArray();
        if (pairs.Length < 2) return double.NaN;
        double ma = pairs.Average(p => p.First), mb = pairs.Average(p => p.Second);
        double sab = 0, saa = 0, sbb = 0;
        foreach (var (x, y) in pairs) { sab += (x - ma) * (y - mb); saa += (x - ma) * (x - ma); sbb += (y - mb) * (y - mb); }
        return saa == 0 || sbb == 0 ? double.NaN : sab / Math.Sqrt(saa * sbb);
    }
}
