using Engine.Loader;
using Engine.Runtime;
using Engine.Training;

namespace Engine.Interp.Gradients;

public sealed record NeuronGradientOptions
{
    /// <summary>What is attributed: the target's probability (knowledge-neuron work's choice, default), log-probability or logit at P.</summary>
    public OutputMetric Metric { get; init; } = OutputMetric.Prob;
    /// <summary>Layers to attribute (null = all).</summary>
    public IReadOnlyList<int>? Layers { get; init; }
    /// <summary>Integrated gradients: Riemann steps m (α = k/m, k = 1..m).</summary>
    public int Steps { get; init; } = 20;
    /// <summary>The position whose neurons are attributed (null = the last, P).</summary>
    public int? Position { get; init; }
    /// <summary>Gradient × activation: sum over every position instead of one.</summary>
    public bool AllPositions { get; init; }
    /// <summary>How many neurons the ranking keeps.</summary>
    public int Top { get; init; } = 20;
    public Action<int, int>? Progress { get; init; }
}

/// <summary>A neuron attribution table [n_layers][d_mlp] (NaN for layers not attributed) with its ranking.</summary>
public sealed record NeuronGradientResult(
    string Method, int[] Tokens, int Target, OutputMetric Metric, int Position, bool AllPositions, int Steps,
    double MetricValue, double BaselineMetricValue, Grid Attribution, IReadOnlyList<(int Layer, int Neuron, double Score)> Top,
    double[] LayerSums, double[] LayerTargets);

/// <summary>
/// Gradient-based attribution of MLP neurons (mlp.hook_post, what feeds the down/out projection; gated MLPs:
/// act(gate)·up), with the training engine's backward on the loaded model.
/// <list type="bullet">
/// <item>Gradient × activation: attr[l][i] = act[l][P, i] · ∂F/∂act[l][P, i] (summed over positions with AllPositions),
/// F = the metric of the target at P.</item>
/// <item>Integrated gradients (Sundararajan et al. 2017, as knowledge-neuron work uses them, Dai et al. 2022): per layer l,
/// the neurons of position P are scaled together, act' = α·act (baseline 0), attr[l][i] = act_i · (1/m) Σ_{k=1..m}
/// ∂F/∂act'_i at α = k/m (right Riemann sum, m = Steps). Completeness: Σ_i attr[l][i] ≈ F(act) − F(0·act at layer l,
/// position P), reported per layer as LayerSums vs LayerTargets.</item>
/// </list>
/// </summary>
public static class NeuronGradients
{
    static (int Target, int Pos, int[] Layers) Prepare(GradientModel gm, int[] tokens, int? target, NeuronGradientOptions o, float[] last)
    {
        var c = gm.Config;
        int tg = target ?? Session.ArgMax(last);
        InterpMath.CheckToken(c, tg, "--target");
        int pos = o.Position ?? tokens.Length - 1;
        if (pos < 0 || pos >= tokens.Length) throw new UsageException($"--position: {pos} is out of range [0, {tokens.Length})");
        var layers = (o.Layers ?? Enumerable.Range(0, c.NLayers).ToArray()).ToArray();
        foreach (var l in layers) if (l < 0 || l >= c.NLayers) throw new UsageException($"--layers: layer {l} is out of range [0, {c.NLayers})");
        return (tg, pos, layers);
    }

    public static NeuronGradientResult GradientTimesActivation(GradientModel gm, int[] tokens, int? target = null, NeuronGradientOptions? options = null)
    {
        options ??= new NeuronGradientOptions();
        var c = gm.Config;
        int M = c.DMlp, T = tokens.Length;
        var last = gm.Forward(tokens);
        var (tg, pos, layers) = Prepare(gm, tokens, target, options, last);
        var acts = layers.ToDictionary(l => l, l => gm.Activation(HookKind.MlpPost, l));
        var (value, dLast) = GradientModel.Metric(last, options.Metric, tg);
        gm.Backward(dLast, new HashSet<HookKind> { HookKind.MlpPost });
        var attr = new Grid(c.NLayers, M).Fill(double.NaN);
        foreach (int l in layers)
        {
            var g = gm.Gradient(HookKind.MlpPost, l);
            var a = acts[l];
            for (int i = 0; i < M; i++)
            {
                double s = 0;
                if (options.AllPositions) for (int t = 0; t < T; t++) s += a[t * M + i] * g[t * M + i];
                else s = a[pos * M + i] * g[pos * M + i];
                attr[l, i] = s;
            }
        }
        return Finish("grad_x_act", tokens, tg, options, pos, value, double.NaN, attr, layers, new double[c.NLayers].Select(_ => double.NaN).ToArray());
    }

    public static NeuronGradientResult IntegratedGradients(GradientModel gm, int[] tokens, int? target = null, NeuronGradientOptions? options = null)
    {
        options ??= new NeuronGradientOptions();
        if (options.Steps < 1) throw new UsageException($"--steps: {options.Steps} must be at least 1");
        var c = gm.Config;
        int M = c.DMlp;
        var last = gm.Forward(tokens);
        var (tg, pos, layers) = Prepare(gm, tokens, target, options, last);
        double value = GradientModel.Metric(last, options.Metric, tg).Value;
        var acts = layers.ToDictionary(l => l, l => gm.Activation(HookKind.MlpPost, l).AsSpan(pos * M, M).ToArray());
        var attr = new Grid(c.NLayers, M).Fill(double.NaN);
        var targets = new double[c.NLayers];
        Array.Fill(targets, double.NaN);
        int done = 0, total = layers.Length * (options.Steps + 1);
        foreach (int l in layers)
        {
            var act = acts[l];
            var sum = new double[M];
            double Scaled(double alpha, bool backward)
            {
                var lastA = gm.Forward(tokens, (kind, layer, v) =>
                {
                    if (kind != HookKind.MlpPost || layer != l) return;
                    for (int i = 0; i < M; i++) v[pos * M + i] = alpha * act[i];
                });
                var (f, d) = GradientModel.Metric(lastA, options.Metric, tg);
                if (backward)
                {
                    gm.Backward(d, new HashSet<HookKind> { HookKind.MlpPost });
                    var g = gm.Gradient(HookKind.MlpPost, l);
                    for (int i = 0; i < M; i++) sum[i] += g[pos * M + i];
                }
                options.Progress?.Invoke(++done, total);
                return f;
            }
            double f0 = Scaled(0, backward: false);
            for (int k = 1; k <= options.Steps; k++) Scaled((double)k / options.Steps, backward: true);
            for (int i = 0; i < M; i++) attr[l, i] = act[i] * sum[i] / options.Steps;
            targets[l] = value - f0;
        }
        return Finish("integrated_gradients", tokens, tg, options, pos, value, double.NaN, attr, layers, targets);
    }

    static NeuronGradientResult Finish(string method, int[] tokens, int tg, NeuronGradientOptions o, int pos, double value, double baseline, Grid attr, int[] layers, double[] targets)
    {
        int L = attr.Shape[0], M = attr.Shape[1];
        var sums = new double[L];
        for (int l = 0; l < L; l++)
        {
            if (!layers.Contains(l)) { sums[l] = double.NaN; continue; }
            for (int i = 0; i < M; i++) sums[l] += attr[l, i];
        }
        var top = (from l in layers from i in Enumerable.Range(0, M) let s = attr[l, i] orderby Math.Abs(s) descending, l, i select (l, i, s)).Take(o.Top).ToList();
        return new NeuronGradientResult(method, tokens, tg, o.Metric, pos, o.AllPositions && method == "grad_x_act", method == "integrated_gradients" ? o.Steps : 0,
            value, baseline, attr, top, sums, targets);
    }
}
