using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>Result of <see cref="DirectLogitAttribution.Run"/>: each component's direct contribution to logits[P][target].</summary>
public sealed record DlaResult(
    int[] Tokens,
    int Target,
    // [n_layers][n_heads]
    Grid Heads,
    double[] Mlp,
    double[] AttnBias,
    double Embed,
    double LnFinalBiasTerm,
    // The real logit of the run.
    double Logit,
    double SumOfParts,
    // The frozen final-norm scale s = ln_final.hook_scale[P].
    double FinalScale);

/// <summary>
/// Direct logit attribution (SPEC "direct logit attribution"): one run; the final residual at P decomposes into
/// embed + Σ_L (Σ_h head[L][h] + attn_bias[L] + mlp[L]); each part c is mapped through the final norm with its scale
/// FROZEN to the real run's (LayerNorm: (c − mean c)/s·w; RMSNorm: c/s·w; Gemma: c/s·(1+w)) and dotted with the target's
/// unembedding row. The final-norm bias gives the constant b·u. Computed in double from the run's float activations.
/// </summary>
public static class DirectLogitAttribution
{
    public static DlaResult Run(Session session, int[] tokens, int? target = null)
    {
        var c = session.Config;
        var model = session.Model;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        int T = tokens.Length, P = T - 1, L = c.NLayers, H = c.NHeads, d = c.HeadDim, D = c.DModel, V = c.VocabSize;
        var names = new HashSet<string> { HookPoints.Name(HookKind.ResidPre, 0), HookPoints.Name(HookKind.LnFinalScale, -1) };
        for (int l = 0; l < L; l++) { names.Add(HookPoints.Name(HookKind.Z, l)); names.Add(HookPoints.Name(HookKind.MlpOut, l)); }
        var (logits, cache) = session.RunWithCache(tokens, names.Contains);
        var last = InterpMath.LastRow(logits, V);
        int tgt = target ?? Session.ArgMax(last);

        double s = cache[HookPoints.Name(HookKind.LnFinalScale, -1)].Data[P];
        var u = InterpMath.UnembedRow(model, tgt);
        var w = model.Weights.FinalNormWeight;
        // g = (offset + w) ⊙ u / s; attribution(c) = c·g − mean(c)·Σg (the mean term for LayerNorm only)
        var g = new double[D];
        double gSum = 0;
        for (int i = 0; i < D; i++) { g[i] = (c.NormWeightOffset + (double)w[i]) * u[i] / s; gSum += g[i]; }
        bool center = c.Norm == NormKind.LayerNorm;
        double Attr(ReadOnlySpan<double> x)
        {
            double dot = 0, sum = 0;
            for (int i = 0; i < D; i++) { dot += x[i] * g[i]; sum += x[i]; }
            return center ? dot - sum / D * gSum : dot;
        }
        double AttrF(ReadOnlySpan<float> x)
        {
            var xd = new double[x.Length];
            for (int i = 0; i < x.Length; i++) xd[i] = x[i];
            return Attr(xd);
        }

        double embed = AttrF(cache[HookPoints.Name(HookKind.ResidPre, 0)].Data.AsSpan(P * D, D));
        var heads = new Grid(L, H);
        var mlp = new double[L];
        var attnBias = new double[L];
        var part = new double[D];
        for (int l = 0; l < L; l++)
        {
            var o = model.Weights.Layers[l].O;                                      // [D, H*d] (nn.Linear layout)
            var z = cache[HookPoints.Name(HookKind.Z, l)].Data;                      // [T, H, d]
            for (int h = 0; h < H; h++)
            {
                var zh = z.AsSpan((P * H + h) * d, d);
                for (int r = 0; r < D; r++)
                {
                    double acc = 0;
                    for (int j = 0; j < d; j++) acc += zh[j] * (double)InterpMath.Weight(o, r, h * d + j);
                    part[r] = acc;
                }
                heads[l, h] = Attr(part);
            }
            if (o.Bias is { } b)
            {
                for (int r = 0; r < D; r++) part[r] = b[r];
                attnBias[l] = Attr(part);
            }
            mlp[l] = AttrF(cache[HookPoints.Name(HookKind.MlpOut, l)].Data.AsSpan(P * D, D));
        }
        double biasTerm = 0;
        if (model.Weights.FinalNormBias is { } fb)
            for (int i = 0; i < D; i++) biasTerm += fb[i] * u[i];
        double sumOfParts = embed + heads.Data.Sum() + attnBias.Sum() + mlp.Sum() + biasTerm;
        return new DlaResult(tokens, tgt, heads, mlp, attnBias, embed, biasTerm, last[tgt], sumOfParts, s);
    }
}
