using Engine.Runtime;

namespace Engine.Interp;

/// <summary>Result of <see cref="LogitLens.Run"/>. Arrays are [n_layers][T][k] and [n_layers][T].</summary>
public sealed record LogitLensResult(
    int[] Tokens,
    int K,
    int[][][] TopIds,
    double[][][] TopProbs,
    int? TargetToken,
    // 0-based rank of the target (0 = most probable) per layer and position; null without a target.
    Grid? TargetRank,
    Grid? TargetProb);

/// <summary>
/// Logit lens (nostalgebraist 2020; SPEC "logit lens"): for every layer L and position t, probs =
/// softmax(unembed(final_norm(blocks.L.hook_resid_post[t]))) with the final norm's statistics recomputed from that
/// residual (not frozen). One forward pass. Top-k in descending probability, exact ties: lower id first.
/// </summary>
public static class LogitLens
{
    public static LogitLensResult Run(Session session, int[] tokens, int k = 5, int? target = null)
    {
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (k < 1) throw new Engine.Loader.UsageException($"--top: {k} must be at least 1");
        if (target is int tt) InterpMath.CheckToken(c, tt, "--target");
        k = Math.Min(k, c.VocabSize);
        int T = tokens.Length, V = c.VocabSize, L = c.NLayers;
        var names = new HashSet<string>(Enumerable.Range(0, L).Select(l => HookPoints.Name(HookKind.ResidPost, l)));
        var (_, cache) = session.RunWithCache(tokens, names.Contains);

        var topIds = new int[L][][];
        var topProbs = new double[L][][];
        Grid? rank = target != null ? new Grid(L, T) : null;
        Grid? prob = target != null ? new Grid(L, T) : null;
        var logits = new float[T * V];
        for (int l = 0; l < L; l++)
        {
            var x = cache[HookPoints.Name(HookKind.ResidPost, l)].Data;     // [T, D]
            InterpMath.FinalNormUnembed(session, x, T, logits);
            topIds[l] = new int[T][];
            topProbs[l] = new double[T][];
            for (int t = 0; t < T; t++)
            {
                var row = logits.AsSpan(t * V, V);
                double lse = InterpMath.LogSumExp(row);
                var ids = InterpMath.TopK(row, k);
                topIds[l][t] = ids;
                var probs = new double[ids.Length];
                for (int j = 0; j < ids.Length; j++) probs[j] = Math.Exp(row[ids[j]] - lse);
                topProbs[l][t] = probs;
                if (target is int tg)
                {
                    rank![l, t] = InterpMath.Rank(row, tg);
                    prob![l, t] = Math.Exp(row[tg] - lse);
                }
            }
        }
        return new LogitLensResult(tokens, k, topIds, topProbs, target, rank, prob);
    }
}
