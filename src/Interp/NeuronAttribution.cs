using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

public sealed record NeuronAttributionOptions
{
    /// <summary>How many heads / FFN neurons / query components to list (the full head table is always kept).</summary>
    public int Top { get; init; } = 20;
    /// <summary>How many of the most important FFN neurons the query-neuron scores are summed over (paper: 100); 0 = skip.</summary>
    public int QueryFrom { get; init; } = 100;
    public Action<int, int>? Progress { get; init; }
}

/// <summary>
/// The run-level data neuron attribution needs, cached once: per layer the baselines (resid_pre / resid_mid at P),
/// hook_post and z at P, and the real attn_out / mlp_out at P.
/// </summary>
internal sealed class AttributionRun
{
    public required int[] Tokens { get; init; }
    public required float[] LastLogits { get; init; }
    public required double FinalScale { get; init; }
    public required double[][] ResidPre { get; init; }          // [L][D] at P
    public required double[][] MlpInput { get; init; }          // [L][D] resid_mid at P (resid_pre for parallel residual)
    public required float[][] Post { get; init; }               // [L][M] hook_post at P
    public required float[][] Z { get; init; }                  // [L][H*d] at P
    public required double[][] AttnOut { get; init; }           // [L][D] at P
    public required double[][] MlpOut { get; init; }            // [L][D] at P
    public required double[] FinalResid { get; init; }          // [D] resid_post of the last layer at P

    public static AttributionRun Capture(Session s, int[] tokens, IEnumerable<(HookKind, int, HookFn)>? extraHooks = null)
    {
        var c = s.Config;
        int T = tokens.Length, P = T - 1, L = c.NLayers, D = c.DModel, M = c.DMlp, Q = c.QDim;
        var residPre = new double[L][]; var mlpIn = new double[L][]; var post = new float[L][]; var z = new float[L][];
        var attnOut = new double[L][]; var mlpOut = new double[L][]; var final = new double[D];
        double scale = 0;
        var handles = new List<IDisposable>();
        try
        {
            if (extraHooks != null) foreach (var (k, l, fn) in extraHooks) handles.Add(s.Hooks.Add(k, l, fn));
            for (int l = 0; l < L; l++)
            {
                int layer = l;
                handles.Add(s.Hooks.Add(HookKind.ResidPre, l, tap => residPre[layer] = DenseWeights.ToDouble(tap.Data.Slice((P - tap.Pos0) * D, D))));
                if (!c.ParallelResidual)
                    handles.Add(s.Hooks.Add(HookKind.ResidMid, l, tap => mlpIn[layer] = DenseWeights.ToDouble(tap.Data.Slice((P - tap.Pos0) * D, D))));
                handles.Add(s.Hooks.Add(HookKind.MlpPost, l, tap => post[layer] = tap.Data.Slice((P - tap.Pos0) * M, M).ToArray()));
                handles.Add(s.Hooks.Add(HookKind.Z, l, tap => z[layer] = tap.Data.Slice((P - tap.Pos0) * Q, Q).ToArray()));
                handles.Add(s.Hooks.Add(HookKind.AttnOut, l, tap => attnOut[layer] = DenseWeights.ToDouble(tap.Data.Slice((P - tap.Pos0) * D, D))));
                handles.Add(s.Hooks.Add(HookKind.MlpOut, l, tap => mlpOut[layer] = DenseWeights.ToDouble(tap.Data.Slice((P - tap.Pos0) * D, D))));
            }
            handles.Add(s.Hooks.Add(HookKind.ResidPost, L - 1, tap => final = DenseWeights.ToDouble(tap.Data.Slice((P - tap.Pos0) * D, D))));
            handles.Add(s.Hooks.Add(HookKind.LnFinalScale, -1, tap => scale = tap.Data[P - tap.Pos0]));
            var logits = InterpMath.LastRow(s.Run(tokens), c.VocabSize).ToArray();
            if (c.ParallelResidual) for (int l = 0; l < L; l++) mlpIn[l] = residPre[l];
            return new AttributionRun
            {
                Tokens = tokens, LastLogits = logits, FinalScale = scale, ResidPre = residPre, MlpInput = mlpIn, Post = post, Z = z,
                AttnOut = attnOut, MlpOut = mlpOut, FinalResid = final,
            };
        }
        finally
        {
            foreach (var h in handles) h.Dispose();
        }
    }
}

/// <summary>Result of <see cref="NeuronAttribution.Run"/>.</summary>
public sealed record NeuronAttributionResult(
    int[] Tokens,
    int Target,
    // log p(target) of the real run at P, and the frozen final-norm scale σ_final.
    double TargetLogProb,
    double FinalScale,
    // What the FFN baseline is: "resid_mid" or "resid_pre (parallel residual: no resid_mid)".
    string MlpBaseline,
    // Imp of every head [n_layers][n_heads] (baseline resid_pre), and of each whole attention / FFN layer output.
    Grid HeadImp,
    double[] AttnLayerImp,
    double[] MlpLayerImp,
    // Imp of every FFN neuron [n_layers][d_mlp] (baseline resid_mid).
    double[][] NeuronImp,
    List<ScoredComponent> TopHeads,
    List<ScoredComponent> TopNeurons,
    // Query neurons: number of value neurons used, and the summed scores of lower components.
    int QueryFrom,
    List<ScoredComponent> QueryNeurons,
    List<ScoredComponent> QueryHeads,
    // Embedding, attention biases, MLP biases as lower components (label, score).
    List<ScoredComponent> QueryOther,
    // What the query key is ("W_in row ⊙ ln2 weight" or the gate row for gated MLPs).
    string QueryKey)
{
    /// <summary>The value neurons the query scores sum over, and for each Σ_c ⟨c, k⟩ (= ⟨the MLP's residual input at P, k⟩).</summary>
    public IReadOnlyList<ScoredComponent> QueryValues { get; init; } = [];
    public IReadOnlyList<double> QueryDenominators { get; init; } = [];
}

/// <summary>
/// Neuron-level knowledge attribution (Yu &amp; Ananiadou, EMNLP 2024; SPEC "Methods without fixtures"). Target w = the
/// top-1 token at P (or given). Imp(v) = log p(w | v + h) − log p(w | h) with p through the final norm FROZEN to the real
/// run's σ_final at P and without the final-norm bias (<see cref="LogProbIncrease"/>). Heads and attention layers: h =
/// resid_pre of the layer at P; FFN neurons and FFN layers: h = resid_mid at P (resid_pre for parallel-residual models).
/// FFN neuron i of layer l: v = m_i · W_out[:, i] (m = hook_post at P); head h: v = z[P, h, :] through its W_O columns.
/// Query neurons: for each of the top <see cref="NeuronAttributionOptions.QueryFrom"/> FFN neurons n (layer L_n) with
/// key k = W_in[n, :] ⊙ ln2 weight (gated MLPs: the gate row), every lower component c of the residual stream the MLP
/// of L_n reads (embedding, heads and attention biases of layers ≤ L_n (&lt; L_n for parallel residual), FFN neurons and MLP
/// biases of layers &lt; L_n) scores ⟨c, k⟩ / Σ_c ⟨c, k⟩ × Imp(n); scores are summed over the n.
/// </summary>
public static class NeuronAttribution
{
    public static NeuronAttributionResult Run(Session session, int[] tokens, int? target = null, NeuronAttributionOptions? options = null)
    {
        options ??= new NeuronAttributionOptions();
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        if (options.Top < 1) throw new UsageException($"--top: {options.Top} must be at least 1");
        if (options.QueryFrom < 0) throw new UsageException($"--query-from: {options.QueryFrom} must not be negative");
        int L = c.NLayers, H = c.NHeads, d = c.HeadDim, D = c.DModel, M = c.DMlp;

        var run = AttributionRun.Capture(session, tokens);
        int tgt = target ?? Session.ArgMax(run.LastLogits);
        var norm = new FrozenFinalNorm(session, run.FinalScale);
        int totalSteps = 2 * L, step = 0;

        var headImp = new Grid(L, H);
        var attnImp = new double[L];
        var mlpImp = new double[L];
        var neuronImp = new double[L][];
        var oCols = new float[L][];
        for (int l = 0; l < L; l++)
        {
            // heads and the whole attention output: baseline resid_pre
            var scorerA = new LogProbIncrease(norm, run.ResidPre[l], tgt);
            oCols[l] = DenseWeights.Columns(session.Model.Weights.Layers[l].O);
            var heads = DenseWeights.HeadVectors(run.Z[l], oCols[l], H, d, D);
            var rows = new float[(H + 1) * D];
            for (int h = 0; h < H; h++) for (int i = 0; i < D; i++) rows[h * D + i] = (float)heads[h][i];
            for (int i = 0; i < D; i++) rows[H * D + i] = (float)run.AttnOut[l][i];
            var imp = scorerA.Of(rows, H + 1);
            for (int h = 0; h < H; h++) headImp[l, h] = imp[h];
            attnImp[l] = imp[H];
            options.Progress?.Invoke(++step, totalSteps);

            // FFN neurons and the whole MLP output: baseline resid_mid
            neuronImp[l] = NeuronImps(session, norm, run, l, tgt, out mlpImp[l]);
            options.Progress?.Invoke(++step, totalSteps);
        }

        var headItems = new List<ScoredComponent>();
        for (int l = 0; l < L; l++) for (int h = 0; h < H; h++) headItems.Add(new ScoredComponent($"L{l}H{h}", l, h, headImp[l, h]));
        var topHeads = Ranking.Top(headItems, options.Top);
        var neuronItems = NeuronItems(neuronImp);
        var topNeurons = Ranking.Top(neuronItems, options.Top);

        // ---- query neurons
        int qn = Math.Min(options.QueryFrom, L * M);
        var values = Ranking.Top(neuronItems, qn);
        var (qNeurons, qHeads, qOther, denoms) = QueryScores(session, run, values, oCols);
        string key = c.GatedMlp
            ? "gate-projection row of the neuron ⊙ the post-attention norm weight" + (c.NormWeightOffset != 0 ? " (1 + w)" : "")
            : "input-projection row of the neuron (W_in[:, n]) ⊙ the post-attention norm weight" + (c.NormWeightOffset != 0 ? " (1 + w)" : "");
        return new NeuronAttributionResult(tokens, tgt, InterpMath.LogProb(run.LastLogits, tgt), run.FinalScale,
            c.ParallelResidual ? "resid_pre (parallel residual: the model has no resid_mid; its MLP reads resid_pre)" : "resid_mid",
            headImp, attnImp, mlpImp, neuronImp, topHeads, topNeurons, qn,
            Ranking.Top(qNeurons, options.Top), Ranking.Top(qHeads, options.Top), qOther, key)
        {
            QueryValues = values, QueryDenominators = denoms,
        };
    }

    internal static List<ScoredComponent> NeuronItems(double[][] imp)
    {
        var list = new List<ScoredComponent>();
        for (int l = 0; l < imp.Length; l++)
            for (int i = 0; i < imp[l].Length; i++) list.Add(new ScoredComponent($"L{l}N{i}", l, i, imp[l][i]));
        return list;
    }

    /// <summary>Imp of every FFN neuron of layer l (and of the whole mlp_out) against the layer's MLP-input baseline.</summary>
    internal static double[] NeuronImps(Session session, FrozenFinalNorm norm, AttributionRun run, int l, int target, out double layerImp)
    {
        var c = session.Config;
        int D = c.DModel, M = c.DMlp;
        var scorer = new LogProbIncrease(norm, run.MlpInput[l], target);
        var wOut = DenseWeights.Columns(session.Model.Weights.Layers[l].MlpOut);      // [M, D]: row i = W_out[:, i]
        var rows = new float[(M + 1) * D];
        var m = run.Post[l];
        for (int i = 0; i < M; i++)
        {
            float mi = m[i];
            if (mi == 0) continue;
            for (int j = 0; j < D; j++) rows[i * D + j] = mi * wOut[i * D + j];
        }
        for (int j = 0; j < D; j++) rows[M * D + j] = (float)run.MlpOut[l][j];
        var imp = scorer.Of(rows, M + 1);
        layerImp = imp[M];
        return imp[..M];
    }

    /// <summary>The key of FFN neuron n of layer l: W_in[n, :] (gated: the gate row) ⊙ the effective ln2 weight.</summary>
    public static double[] Key(Session session, int layer, int neuron)
    {
        var c = session.Config;
        var lw = session.Model.Weights.Layers[layer];
        var row = DenseWeights.Row(lw.MlpIn, neuron);
        var k = new double[c.DModel];
        for (int i = 0; i < c.DModel; i++) k[i] = row[i] * (c.NormWeightOffset + (double)lw.Ln2Weight[i]);
        return k;
    }

    static (List<ScoredComponent> Neurons, List<ScoredComponent> Heads, List<ScoredComponent> Other, double[] Denominators) QueryScores(
        Session session, AttributionRun run, List<ScoredComponent> values, float[][] oCols)
    {
        var c = session.Config;
        int L = c.NLayers, H = c.NHeads, d = c.HeadDim, D = c.DModel, M = c.DMlp;
        var neuronScore = new double[L][];
        for (int l = 0; l < L; l++) neuronScore[l] = new double[M];
        var headScore = new double[L, H];
        var attnBiasScore = new double[L];
        var mlpBiasScore = new double[L];
        double embedScore = 0;
        if (values.Count == 0) return ([], [], [], []);

        var keys = values.Select(v => Key(session, v.Layer, v.Index)).ToArray();
        // ⟨c, k⟩ for every component, per key: accumulate the denominators first (Σ_c ⟨c, k⟩), then the shares.
        int K = values.Count;
        var embed = run.ResidPre[0];
        var embedDot = keys.Select(k => DenseWeights.Dot(embed, k)).ToArray();
        var headDots = new double[L][][];        // [l][h][key]
        var attnBiasDots = new double[L][];
        var mlpBiasDots = new double[L][];
        var neuronDots = new double[L][];        // [l][i * K + key]
        var denom = (double[])embedDot.Clone();
        bool parallel = c.ParallelResidual;
        for (int l = 0; l < L; l++)
        {
            var lw = session.Model.Weights.Layers[l];
            // attention of layer l feeds the MLP of layer l (sequential) or only of later layers (parallel)
            bool attnUsedBy(int kl) => parallel ? l < kl : l <= kl;
            bool mlpUsedBy(int kl) => l < kl;
            if (!Enumerable.Range(0, K).Any(j => attnUsedBy(values[j].Layer))) continue;
            var heads = DenseWeights.HeadVectors(run.Z[l], oCols[l], H, d, D);
            headDots[l] = new double[H][];
            for (int h = 0; h < H; h++)
            {
                headDots[l][h] = new double[K];
                for (int j = 0; j < K; j++)
                    if (attnUsedBy(values[j].Layer)) { double x = DenseWeights.Dot(heads[h], keys[j]); headDots[l][h][j] = x; denom[j] += x; }
            }
            attnBiasDots[l] = new double[K];
            if (lw.O.Bias is { } ob)
            {
                var b = DenseWeights.ToDouble(ob);
                for (int j = 0; j < K; j++)
                    if (attnUsedBy(values[j].Layer)) { double x = DenseWeights.Dot(b, keys[j]); attnBiasDots[l][j] = x; denom[j] += x; }
            }
            if (!Enumerable.Range(0, K).Any(j => mlpUsedBy(values[j].Layer))) continue;
            mlpBiasDots[l] = new double[K];
            if (lw.MlpOut.Bias is { } mb)
            {
                var b = DenseWeights.ToDouble(mb);
                for (int j = 0; j < K; j++)
                    if (mlpUsedBy(values[j].Layer)) { double x = DenseWeights.Dot(b, keys[j]); mlpBiasDots[l][j] = x; denom[j] += x; }
            }
            var wOut = DenseWeights.Columns(lw.MlpOut);                   // [M, D]
            var post = run.Post[l];
            var nd = neuronDots[l] = new double[M * K];
            Parallel.For(0, M, i =>
            {
                float mi = post[i];
                if (mi == 0) return;
                var col = wOut.AsSpan(i * D, D);
                for (int j = 0; j < K; j++)
                    if (mlpUsedBy(values[j].Layer))
                    {
                        double acc = 0;
                        var k = keys[j];
                        for (int r = 0; r < D; r++) acc += col[r] * k[r];
                        nd[i * K + j] = mi * acc;
                    }
            });
            for (int i = 0; i < M; i++) for (int j = 0; j < K; j++) denom[j] += nd[i * K + j];
        }

        for (int j = 0; j < K; j++)
        {
            double w = values[j].Score / denom[j];
            embedScore += embedDot[j] * w;
            for (int l = 0; l < L; l++)
            {
                if (headDots[l] != null) for (int h = 0; h < H; h++) headScore[l, h] += headDots[l][h][j] * w;
                if (attnBiasDots[l] != null) attnBiasScore[l] += attnBiasDots[l][j] * w;
                if (mlpBiasDots[l] != null) mlpBiasScore[l] += mlpBiasDots[l][j] * w;
                if (neuronDots[l] != null) for (int i = 0; i < M; i++) neuronScore[l][i] += neuronDots[l][i * K + j] * w;
            }
        }
        var neurons = NeuronItems(neuronScore);
        var headsList = new List<ScoredComponent>();
        for (int l = 0; l < L; l++) for (int h = 0; h < H; h++) if (headDots[l] != null) headsList.Add(new ScoredComponent($"L{l}H{h}", l, h, headScore[l, h]));
        var other = new List<ScoredComponent> { new("embed", -1, 0, embedScore) };
        for (int l = 0; l < L; l++)
        {
            if (headDots[l] != null && session.Model.Weights.Layers[l].O.Bias != null) other.Add(new ScoredComponent($"L{l}_attn_bias", l, 0, attnBiasScore[l]));
            if (mlpBiasDots[l] != null && session.Model.Weights.Layers[l].MlpOut.Bias != null) other.Add(new ScoredComponent($"L{l}_mlp_bias", l, 1, mlpBiasScore[l]));
        }
        // neurons of layers no value neuron reads from are not candidates
        var candidates = neurons.Where(n => neuronDots[n.Layer] != null).ToList();
        return (candidates, headsList, other, denom);
    }
}

/// <summary>Result of <see cref="ComparativeNeuronAnalysis.Run"/>.</summary>
public sealed record CnaResult(
    int[] Tokens,
    int Target,
    HeadRef Head,
    double FinalScale,
    // log p(target) of the real run and of the run with the head zeroed (the head's own importance = their difference).
    double LogProb,
    double AblatedLogProb,
    double[][] ImpOriginal,
    double[][] ImpAblated,
    // CNA[l][i] = Imp_original − Imp_ablated.
    double[][] Cna,
    List<ScoredComponent> Top);

/// <summary>
/// Comparative neuron analysis (Yu &amp; Ananiadou, EMNLP 2024, arithmetic heads): every FFN neuron's Imp (see
/// <see cref="NeuronAttribution"/>) in the original run minus its Imp in a run where head L.H is zeroed (its z slice at
/// every position, as SPEC's head ablation), both through the final norm frozen to the ORIGINAL run's σ_final and for the
/// original target. Neurons are ranked by that difference.
/// </summary>
public static class ComparativeNeuronAnalysis
{
    public static CnaResult Run(Session session, int[] tokens, HeadRef head, int? target = null, int top = 20, Action<int, int>? progress = null)
    {
        var c = session.Config;
        InterpMath.CheckTokens(session, tokens, "--tokens");
        if (target is int tg0) InterpMath.CheckToken(c, tg0, "--target");
        if (head.Layer < 0 || head.Layer >= c.NLayers || head.Head < 0 || head.Head >= c.NHeads)
            throw new UsageException($"--cna-head: {head.Layer}.{head.Head} is out of range (model has {c.NLayers} layers of {c.NHeads} heads)");
        if (top < 1) throw new UsageException($"--top: {top} must be at least 1");
        int L = c.NLayers, d = c.HeadDim;
        var original = AttributionRun.Capture(session, tokens);
        int tgt = target ?? Session.ArgMax(original.LastLogits);
        var zero = new Site(HookKind.Z, head.Layer, Head: head.Head);
        var ablated = AttributionRun.Capture(session, tokens, [(HookKind.Z, head.Layer, tap => zero.Fill(tap, 0f))]);
        var norm = new FrozenFinalNorm(session, original.FinalScale);
        var impO = new double[L][]; var impA = new double[L][]; var cna = new double[L][];
        for (int l = 0; l < L; l++)
        {
            impO[l] = NeuronAttribution.NeuronImps(session, norm, original, l, tgt, out _);
            impA[l] = NeuronAttribution.NeuronImps(session, norm, ablated, l, tgt, out _);
            cna[l] = new double[impO[l].Length];
            for (int i = 0; i < cna[l].Length; i++) cna[l][i] = impO[l][i] - impA[l][i];
            progress?.Invoke(l + 1, L);
        }
        return new CnaResult(tokens, tgt, head, original.FinalScale, InterpMath.LogProb(original.LastLogits, tgt), InterpMath.LogProb(ablated.LastLogits, tgt),
            impO, impA, cna, Ranking.Top(NeuronAttribution.NeuronItems(cna), top));
    }
}
