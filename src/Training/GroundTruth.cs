using Engine.Loader;
using Engine.Runtime;

namespace Engine.Training;

/// <summary>
/// Ground-truth checks of trained models through the inference runtime (any <see cref="Session"/>, with hooks): held-out
/// accuracy with interventions (heads or neurons ablated), and per-head induction scores read from the attention
/// pattern. These are what the tests and `engine demo` use to show that the interpretability methods find the circuits
/// the recipes plant.
/// </summary>
public static class GroundTruth
{
    /// <summary>A hook registration: hook kind, layer, function.</summary>
    public readonly record struct Hook(HookKind Kind, int Layer, HookFn Fn);

    /// <summary>Accuracy of a held-out task (token accuracy or exact match, as the task says) with the hooks registered.</summary>
    public static double Accuracy(Session session, EvalTask task, IReadOnlyList<Hook>? hooks = null) =>
        Trainer.Score(task, Predictions(session, task, hooks));

    /// <summary>The argmax token at every scored position of every example.</summary>
    public static List<int[]> Predictions(Session session, EvalTask task, IReadOnlyList<Hook>? hooks = null)
    {
        var regs = new List<IDisposable>();
        try
        {
            foreach (var h in hooks ?? []) regs.Add(session.Hooks.Add(h.Kind, h.Layer, h.Fn));
            int V = session.Config.VocabSize;
            var preds = new List<int[]>();
            foreach (var e in task.Examples)
            {
                var logits = session.Run(e.Tokens);
                var p = new int[e.Positions.Length];
                for (int k = 0; k < p.Length; k++) p[k] = Trainer.ArgMax(logits.Slice(e.Positions[k] * V, V));
                preds.Add(p);
            }
            return preds;
        }
        finally { foreach (var r in regs) r.Dispose(); }
    }

    /// <summary>Hooks that zero the given heads' z at every position (SPEC zero-ablation).</summary>
    public static List<Hook> ZeroHeads(ModelConfig c, IEnumerable<(int Layer, int Head)> heads) =>
        heads.GroupBy(h => h.Layer).Select(g =>
        {
            var hs = g.Select(x => x.Head).ToArray();
            return new Hook(HookKind.Z, g.Key, tap =>
            {
                int T = tap.Shape.D0, H = tap.Shape.D1, d = tap.Shape.D2;
                for (int t = 0; t < T; t++) foreach (int h in hs) tap.Data.Slice((t * H + h) * d, d).Clear();
            });
        }).ToList();

    /// <summary>Hooks that set the given MLP neurons (mlp.hook_post columns) to a value (0 = zero-ablation) at every position.</summary>
    public static List<Hook> SetNeurons(ModelConfig c, IEnumerable<(int Layer, int Neuron)> neurons, Func<int, int, float>? value = null) =>
        neurons.GroupBy(n => n.Layer).Select(g =>
        {
            var ns = g.Select(x => x.Neuron).ToArray();
            int layer = g.Key;
            return new Hook(HookKind.MlpPost, layer, tap =>
            {
                int T = tap.Shape.D0, M = tap.Shape.D1;
                for (int t = 0; t < T; t++) foreach (int n in ns) tap.Data[t * M + n] = value?.Invoke(layer, n) ?? 0f;
            });
        }).ToList();

    /// <summary>
    /// Induction score of every head [layer][head]: the mean attention weight, over the scored positions of the task's
    /// examples, on <see cref="EvalExample.Sources"/> (the token after the previous occurrence of the current token).
    /// </summary>
    public static double[][] InductionScores(Session session, EvalTask task) =>
        MeanAttention(session, task, (e, k) => e.Sources?[k] ?? throw new ArgumentException($"task {task.Name} has no induction sources"));

    /// <summary>
    /// Previous-token score of every head [layer][head]: the mean attention weight, over the scored positions, on the
    /// position just before (the first half of an induction circuit copies each token's predecessor forward).
    /// </summary>
    public static double[][] PreviousTokenScores(Session session, EvalTask task) =>
        MeanAttention(session, task, (e, k) => Math.Max(0, e.Positions[k] - 1));

    /// <summary>Mean attention [layer][head] from each scored position k of each example to key position source(e, k).</summary>
    static double[][] MeanAttention(Session session, EvalTask task, Func<EvalExample, int, int> source)
    {
        var c = session.Config;
        var sum = new double[c.NLayers][];
        for (int l = 0; l < c.NLayers; l++) sum[l] = new double[c.NHeads];
        long count = 0;
        foreach (var e in task.Examples)
        {
            var (_, cache) = session.RunWithCache(e.Tokens, n => n.EndsWith("attn.hook_pattern", StringComparison.Ordinal));
            int T = e.Tokens.Length;
            for (int l = 0; l < c.NLayers; l++)
            {
                var pat = cache[HookPoints.Name(HookKind.Pattern, l)].Data;   // [heads, T, T]
                for (int h = 0; h < c.NHeads; h++)
                    for (int k = 0; k < e.Positions.Length; k++)
                        sum[l][h] += pat[(h * T + e.Positions[k]) * T + source(e, k)];
            }
            count += e.Positions.Length;
        }
        foreach (var row in sum) for (int h = 0; h < row.Length; h++) row[h] /= Math.Max(1, count);
        return sum;
    }
}
