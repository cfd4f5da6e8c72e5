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
    double FinalScale)
{
    /// <summary>--per-neuron: attribution of each FFN neuron's m_i · W_out[:, i] at P, [n_layers][d_mlp]; null when not asked.</summary>
    public double[][]? Neurons { get; init; }
    /// <summary>--per-neuron: attribution of each layer's MLP output bias (0 without one); Σ_i neurons[L][i] + this = mlp[L].</summary>
    public double[]? MlpBias { get; init; }
    /// <summary>--accumulated: (label, attribution) of the accumulated residual stream at each layer boundary (TransformerLens accumulated_resid labels).</summary>
    public IReadOnlyList<(string Label, double Value)>? Accumulated { get; init; }
    /// <summary>--decomposed: (label, attribution) of every part of the final residual; Σ + ln_final_bias_term = logit.</summary>
    public IReadOnlyList<(string Label, double Value)>? Decomposed { get; init; }
}

public sealed record DlaOptions
{
    /// <summary>Attribute each FFN neuron (m_i · W_out[:, i]) and each MLP bias.</summary>
    public bool PerNeuron { get; init; }
    /// <summary>Attribute the accumulated residual stream at each layer boundary (0_pre = embed, 1_pre, ..., final_post).</summary>
    public bool Accumulated { get; init; }
    /// <summary>With <see cref="Accumulated"/>: also the resid_mid of each layer (TransformerLens incl_mid; not for parallel-residual models).</summary>
    public bool IncludeMid { get; init; }
    /// <summary>Attribute every part: embed, pos_embed (learned positions), each head, each attention bias, each MLP.</summary>
    public bool Decomposed { get; init; }
}

/// <summary>
/// Direct logit attribution (SPEC "direct logit attribution"): one run; the final residual at P decomposes into
/// embed + Σ_L (Σ_h head[L][h] + attn_bias[L] + mlp[L]); each part c is mapped through the final norm with its scale
/// FROZEN to the real run's (LayerNorm: (c − mean c)/s·w; RMSNorm: c/s·w; Gemma: c/s·(1+w)) and dotted with the target's
/// unembedding row. The final-norm bias gives the constant b·u. Computed in double from the run's float activations.
/// </summary>
public static class DirectLogitAttribution
{
    public static DlaResult Run(Session session, int[] tokens, int? target = null, DlaOptions? options = null)
    {
        options ??= new DlaOptions();
        var c = session.Config;
        var model = session.Model;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        int T = tokens.Length, P = T - 1, L = c.NLayers, H = c.NHeads, d = c.HeadDim, D = c.DModel, V = c.VocabSize;
        var names = new HashSet<string> { HookPoints.Name(HookKind.ResidPre, 0), HookPoints.Name(HookKind.LnFinalScale, -1) };
        for (int l = 0; l < L; l++) { names.Add(HookPoints.Name(HookKind.Z, l)); names.Add(HookPoints.Name(HookKind.MlpOut, l)); }
        if (options.IncludeMid && !options.Accumulated) throw new UsageException("--incl-mid: only with --accumulated");
        if (options.IncludeMid && c.ParallelResidual)
            throw new UsageException($"--incl-mid: this {c.ModelType} model uses a parallel residual and has no resid_mid");
        for (int l = 0; l < L; l++)
        {
            if (options.PerNeuron) names.Add(HookPoints.Name(HookKind.MlpPost, l));
            if (options.Accumulated) names.Add(HookPoints.Name(HookKind.ResidPre, l));
            if (options.Accumulated && options.IncludeMid) names.Add(HookPoints.Name(HookKind.ResidMid, l));
        }
        if (options.Accumulated) names.Add(HookPoints.Name(HookKind.ResidPost, L - 1));
        if (options.Decomposed)
        {
            names.Add(HookPoints.Name(HookKind.Embed, -1));
            if (c.Positions == PositionKind.Learned) names.Add(HookPoints.Name(HookKind.PosEmbed, -1));
        }
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

        double[][]? neurons = null;
        double[]? mlpBias = null;
        if (options.PerNeuron)
        {
            int M = c.DMlp;
            neurons = new double[L][];
            mlpBias = new double[L];
            var col = new double[D];
            for (int l = 0; l < L; l++)
            {
                var lw = model.Weights.Layers[l];
                var cols = DenseWeights.Columns(lw.MlpOut);                       // [M, D]: row i = W_out[:, i]
                var m = cache[HookPoints.Name(HookKind.MlpPost, l)].Data.AsSpan(P * M, M);
                neurons[l] = new double[M];
                for (int i = 0; i < M; i++)
                {
                    if (m[i] == 0) continue;
                    for (int r = 0; r < D; r++) col[r] = cols[(long)i * D + r];
                    neurons[l][i] = m[i] * Attr(col);
                }
                if (lw.MlpOut.Bias is { } mb) mlpBias[l] = AttrF(mb);
            }
        }

        List<(string, double)>? accumulated = null;
        if (options.Accumulated)
        {
            accumulated = [];
            for (int l = 0; l < L; l++)
            {
                accumulated.Add(($"{l}_pre", AttrF(cache[HookPoints.Name(HookKind.ResidPre, l)].Data.AsSpan(P * D, D))));
                if (options.IncludeMid) accumulated.Add(($"{l}_mid", AttrF(cache[HookPoints.Name(HookKind.ResidMid, l)].Data.AsSpan(P * D, D))));
            }
            accumulated.Add(("final_post", AttrF(cache[HookPoints.Name(HookKind.ResidPost, L - 1)].Data.AsSpan(P * D, D))));
        }

        List<(string, double)>? decomposed = null;
        if (options.Decomposed)
        {
            decomposed = [];
            var e = cache[HookPoints.Name(HookKind.Embed, -1)].Data.AsSpan(P * D, D);
            var ed = new double[D];
            for (int i = 0; i < D; i++) ed[i] = e[i] * (double)c.EmbedScale;      // Gemma: × float32(sqrt(D)), as the residual stream
            decomposed.Add(("embed", Attr(ed)));
            if (c.Positions == PositionKind.Learned)
                decomposed.Add(("pos_embed", AttrF(cache[HookPoints.Name(HookKind.PosEmbed, -1)].Data.AsSpan(P * D, D))));
            for (int l = 0; l < L; l++)
            {
                for (int h = 0; h < H; h++) decomposed.Add(($"L{l}H{h}", heads[l, h]));
                if (model.Weights.Layers[l].O.Bias != null) decomposed.Add(($"L{l}_attn_bias", attnBias[l]));
                decomposed.Add(($"L{l}_mlp", mlp[l]));
            }
        }
        return new DlaResult(tokens, tgt, heads, mlp, attnBias, embed, biasTerm, last[tgt], sumOfParts, s)
        {
            Neurons = neurons, MlpBias = mlpBias, Accumulated = accumulated, Decomposed = decomposed,
        };
    }
}
