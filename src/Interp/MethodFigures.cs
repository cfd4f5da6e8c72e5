using System.Globalization;

namespace Engine.Interp.Reports;

/// <summary>
/// Pictures of the component-level methods (neuron attribution, comparative neuron analysis, noise making, steering,
/// the DLA extensions), built from the same <see cref="Heatmap"/> / <see cref="Figure"/> pieces as <see cref="Figures"/>.
/// </summary>
public static class MethodFigures
{
    static string[] LayerLabels(int n) => Enumerable.Range(0, n).Select(l => $"L{l}").ToArray();

    static string G(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    static string Q(string s) => "'" + SvgHeatmap.Label(s) + "'";

    /// <summary>A one-column heatmap of ranked items (row labels = item labels, cell text = value).</summary>
    public static Heatmap Ranked(string title, IReadOnlyList<ScoredComponent> items, string valueName, ColorMap map = ColorMap.Diverging) => new()
    {
        Title = title,
        Values = items.Count == 0 ? [[double.NaN]] : items.Select(x => new[] { x.Score }).ToArray(),
        RowLabels = items.Count == 0 ? ["(none)"] : items.Select(x => x.Label).ToArray(),
        ColLabels = [valueName],
        CellText = items.Count == 0 ? null : items.Select(x => new string?[] { G(x.Score) }).ToArray(),
        RowAxis = "", ColAxis = "", Map = map, ColorBarLabel = valueName, MinCellWidth = 60, MaxCellWidth = 90,
    };

    /// <summary>Neuron attribution: head Imp (layers × heads), layer Imp (attention, FFN), top FFN neurons and top query neurons.</summary>
    public static Figure NeuronAttribution(NeuronAttributionResult r, Func<int, string> tokenText)
    {
        int L = r.HeadImp.Shape[0], H = r.HeadImp.Shape[1];
        var heads = new Heatmap
        {
            Title = "Heads: Imp (baseline resid_pre)", Values = r.HeadImp.ToRows(), RowLabels = LayerLabels(L),
            ColLabels = Enumerable.Range(0, H).Select(h => $"H{h}").ToArray(), RowAxis = "layer", ColAxis = "head",
            Map = ColorMap.Diverging, ColorBarLabel = "Δ log p",
        };
        var layers = new Heatmap
        {
            Title = "Layers: Imp", Values = Enumerable.Range(0, L).Select(l => new[] { r.AttnLayerImp[l], r.MlpLayerImp[l] }).ToArray(),
            RowLabels = LayerLabels(L), ColLabels = ["attn", "ffn"], RowAxis = "layer", Map = ColorMap.Diverging, ColorBarLabel = "Δ log p",
        };
        var panels = new List<Heatmap> { heads, layers, Ranked("Top FFN neurons: Imp", r.TopNeurons, "Δ log p") };
        if (r.QueryNeurons.Count > 0) panels.Add(Ranked($"Top query neurons (over {r.QueryFrom} value neurons)", r.QueryNeurons, "score"));
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Neuron-level attribution of {Q(tokenText(r.Target))} (log p {r.TargetLogProb:G4}; final norm frozen, σ_final {r.FinalScale:G4})");
        return new Figure(title, panels.ToArray());
    }

    /// <summary>Comparative neuron analysis: the top neurons by Imp(original) − Imp(head zeroed).</summary>
    public static Figure Cna(CnaResult r, Func<int, string> tokenText)
    {
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Comparative neuron analysis for head L{r.Head.Layer}H{r.Head.Head}, target {Q(tokenText(r.Target))}: log p {r.LogProb:G4} → {r.AblatedLogProb:G4} with the head zeroed");
        return new Figure(title, Ranked("FFN neurons: Imp(original) − Imp(head zeroed)", r.Top, "CNA"));
    }

    /// <summary>Noise making: the drop table of a sweep, or the ranked components / the per-sample metrics.</summary>
    public static Figure Noise(NoiseResult r, Func<int, string> tokenText, int top = 20)
    {
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Noise making: drop of {r.Metric.Name}({SvgHeatmap.Label(tokenText(r.Metric.Target))}) from clean {r.Clean:G4}, σ {r.SigmaMode}, {r.Samples} samples");
        if (r.DropGrid is { } g && r.GridAxes is { } axes)
        {
            string[] cols = axes[1] switch
            {
                "head" => Enumerable.Range(0, g.Shape[1]).Select(h => $"H{h}").ToArray(),
                "position" => Enumerable.Range(0, g.Shape[1]).Select(t => $"{t}: {tokenText(r.Tokens[t])}").ToArray(),
                _ => ["attn_out", "mlp_out"],
            };
            return new Figure(title, new Heatmap
            {
                Title = "Mean drop of the metric (clean − noised)", Values = g.ToRows(), RowLabels = LayerLabels(g.Shape[0]), ColLabels = cols,
                RowAxis = axes[0], ColAxis = axes[1] == "position" ? "noised position: token" : axes[1], Map = ColorMap.Diverging, ColorBarLabel = "drop",
            });
        }
        if (r.Components.Count == 1)
        {
            var c = r.Components[0];
            return new Figure(title, new Heatmap
            {
                Title = $"{c.Label}: metric per sample (σ {G(c.Sigma)}; mean {G(c.Mean)} ± {G(c.Spread)})",
                Values = [c.Samples], RowLabels = [r.Metric.Name], ColLabels = Enumerable.Range(0, c.Samples.Length).Select(s => $"s{s}").ToArray(),
                CellText = [c.Samples.Select(G).ToArray()], MinCellWidth = 44,
                ColAxis = "sample", Map = ColorMap.Diverging, Center = r.Clean, ColorBarLabel = r.Metric.Name,
            });
        }
        var items = r.Ranked.Take(top).Select(s => new ScoredComponent(s.Label, s.Component.Layer, s.Component.Index ?? 0, s.Drop)).ToList();
        return new Figure(title, Ranked("Components by mean drop", items, "drop"));
    }

    /// <summary>Steering: next-token probabilities before and after the edits, over the union of both top-k lists.</summary>
    public static Figure Steer(SteerResult r, Func<int, string> tokenText, int k = 10)
    {
        var before = InterpMath.TopK(r.LogitsBefore, k);
        var after = InterpMath.TopK(r.LogitsAfter, k);
        var ids = before.Concat(after.Where(a => !before.Contains(a))).ToArray();
        double[] P(float[] logits) => ids.Select(i => InterpMath.Prob(logits, i)).ToArray();
        var vb = P(r.LogitsBefore);
        var va = P(r.LogitsAfter);
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Next-token distribution at the last prompt position, before and after the intervention (KL {r.Kl:G4} nats{(r.FrozenAttention ? ", attention frozen" : "")})");
        return new Figure(title, new Heatmap
        {
            Title = "p(token)", Values = [vb, va], RowLabels = ["before", "after"], ColLabels = ids.Select(i => tokenText(i)).ToArray(),
            CellText = [vb.Select(G).ToArray(), va.Select(G).ToArray()], ColAxis = "token", Map = ColorMap.Viridis, Min = 0, ColorBarLabel = "prob",
        });
    }

    /// <summary>DLA extensions: accumulated residual, decomposition and top neurons, as extra panels.</summary>
    public static Figure? DlaExtras(DlaResult r, Func<int, string> tokenText, int top = 20)
    {
        var panels = new List<Heatmap>();
        if (r.Accumulated is { Count: > 0 } acc)
            panels.Add(new Heatmap
            {
                Title = "Accumulated residual (frozen final norm)", Values = acc.Select(x => new[] { x.Value }).ToArray(), RowLabels = acc.Select(x => x.Label).ToArray(),
                ColLabels = ["logit attr"], CellText = acc.Select(x => new string?[] { G(x.Value) }).ToArray(), RowAxis = "layer boundary", Map = ColorMap.Diverging,
                ColorBarLabel = "logit", MinCellWidth = 60, MaxCellWidth = 90,
            });
        if (r.Decomposed is { Count: > 0 } dec)
        {
            var items = dec.Select((x, i) => new ScoredComponent(x.Label, i, 0, x.Value)).ToList();
            panels.Add(Ranked($"Largest parts of the decomposition (top {Math.Min(top, items.Count)} by |attr|)", Ranking.TopAbs(items, top), "logit"));
        }
        if (r.Neurons is { } ns)
        {
            var items = new List<ScoredComponent>();
            for (int l = 0; l < ns.Length; l++) for (int i = 0; i < ns[l].Length; i++) items.Add(new ScoredComponent($"L{l}N{i}", l, i, ns[l][i]));
            panels.Add(Ranked($"FFN neurons (top {top} by |attr|)", Ranking.TopAbs(items, top), "logit"));
        }
        if (panels.Count == 0) return null;
        return new Figure($"Direct logit attribution to {Q(tokenText(r.Target))}: logit {G(r.Logit)}", panels.ToArray());
    }
}
