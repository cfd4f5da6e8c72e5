using System.Globalization;

namespace Engine.Interp.Reports;

/// <summary>The standard picture of each method (render with <see cref="Figure.ToSvg"/> / <see cref="Figure.ToPng"/>). <c>tokenText</c> turns an id into readable text (e.g. "&lt;42&gt;" without a tokenizer).</summary>
public static class Figures
{
    static string[] PositionLabels(int[] tokens, Func<int, string> tokenText) =>
        tokens.Select((t, i) => $"{i}: {tokenText(t)}").ToArray();

    static string[] LayerLabels(int n) => Enumerable.Range(0, n).Select(l => $"L{l}").ToArray();

    static double[][] Rows(Grid g) => g.ToRows();

    /// <summary>Logit lens: layers × positions, colour = top-1 probability, cell text = top-1 token.</summary>
    public static Figure LogitLens(LogitLensResult r, Func<int, string> tokenText)
    {
        int L = r.TopIds.Length, T = r.Tokens.Length;
        var values = new double[L][];
        var text = new string?[L][];
        for (int l = 0; l < L; l++)
        {
            values[l] = new double[T];
            text[l] = new string?[T];
            for (int t = 0; t < T; t++)
            {
                values[l][t] = r.TopProbs[l][t].Length > 0 ? r.TopProbs[l][t][0] : double.NaN;
                text[l][t] = r.TopIds[l][t].Length > 0 ? Short(tokenText(r.TopIds[l][t][0])) : null;
            }
        }
        var panels = new List<Heatmap>
        {
            new()
            {
                Title = "Logit lens: top-1 token per layer (resid_post)", Values = values, CellText = text,
                RowLabels = LayerLabels(L), ColLabels = PositionLabels(r.Tokens, tokenText),
                RowAxis = "layer", ColAxis = "position: input token", Map = ColorMap.Viridis, Min = 0, Max = 1, ColorBarLabel = "top-1 prob",
            },
        };
        if (r.TargetProb != null && r.TargetToken is int tg)
            panels.Add(new Heatmap
            {
                Title = $"p(target {Q(tokenText(tg))})", Values = Rows(r.TargetProb),
                RowLabels = LayerLabels(L), ColLabels = PositionLabels(r.Tokens, tokenText),
                RowAxis = "layer", ColAxis = "position: input token", Map = ColorMap.Viridis, Min = 0, Max = 1, ColorBarLabel = "prob",
            });
        return new Figure(null, panels.ToArray());
    }

    /// <summary>Activation patching: layers × positions (or heads); per-position heads as (layer, head) rows × positions.</summary>
    public static Figure Patching(PatchResult r, Func<int, string> tokenText)
    {
        var g = r.Values;
        string metric = ActivationPatching.Name(r.Metric);
        bool denoise = r.Direction == PatchDirection.Denoise;
        string title = $"{(denoise ? "Denoising" : "Noising")} patching of {ActivationPatching.Name(r.Activation)}: {metric}";
        // white = the value of the run that receives the patches without any (corrupted when denoising, clean when noising)
        double center = r.Metric == PatchMetric.Normalized ? (denoise ? 0 : 1) : denoise ? r.CorruptMetric : r.CleanMetric;
        var map = ColorMap.Diverging;
        metric += $" (white = {(denoise ? "corrupted" : "clean")} run, {center.ToString("G4", CultureInfo.InvariantCulture)})";
        Heatmap h;
        if (g.Rank == 2 && r.Axes[1] == "position")
            h = new Heatmap { Title = title, Values = Rows(g), RowLabels = LayerLabels(g.Shape[0]), ColLabels = PositionLabels(r.CorruptTokens, tokenText), RowAxis = "layer", ColAxis = "position: corrupted token", Map = map, Center = center, ColorBarLabel = metric };
        else if (g.Rank == 2)
            h = new Heatmap { Title = title, Values = Rows(g), RowLabels = LayerLabels(g.Shape[0]), ColLabels = Enumerable.Range(0, g.Shape[1]).Select(i => $"H{i}").ToArray(), RowAxis = "layer", ColAxis = r.Axes[1], Map = map, Center = center, ColorBarLabel = metric };
        else
        {
            int L = g.Shape[0], T = g.Shape[1], H = g.Shape[2];
            var rows = new double[L * H][];
            var labels = new string[L * H];
            for (int l = 0; l < L; l++)
                for (int hh = 0; hh < H; hh++)
                {
                    rows[l * H + hh] = Enumerable.Range(0, T).Select(t => g[l, t, hh]).ToArray();
                    labels[l * H + hh] = $"L{l}H{hh}";
                }
            h = new Heatmap { Title = title, Values = rows, RowLabels = labels, ColLabels = PositionLabels(r.CorruptTokens, tokenText), RowAxis = "layer, " + r.Axes[2], ColAxis = "position: corrupted token", Map = map, Center = center, ColorBarLabel = metric };
        }
        return new Figure(null, h);
    }

    /// <summary>Ablation: layers × heads of delta (diverging); otherwise a single row of the ablation entries.</summary>
    public static Figure Ablation(AblationResult r, Func<int, string> tokenText)
    {
        string title = $"{(r.Mode == AblationMode.Zero ? "Zero" : "Mean")} ablation: Δ logit of {Q(tokenText(r.Target))} (base {r.Base.ToString("G4", CultureInfo.InvariantCulture)})";
        if (r.Delta != null)
            return new Figure(null, new Heatmap
            {
                Title = title, Values = Rows(r.Delta), RowLabels = LayerLabels(r.Delta.Shape[0]),
                ColLabels = Enumerable.Range(0, r.Delta.Shape[1]).Select(i => $"H{i}").ToArray(),
                RowAxis = "layer", ColAxis = "head", Map = ColorMap.Diverging, ColorBarLabel = "Δ logit",
            });
        return new Figure(null, new Heatmap
        {
            Title = title, Values = [r.Entries.Select(e => e.Delta).ToArray()], RowLabels = ["Δ logit"],
            ColLabels = r.Entries.Select(e => e.Label).ToArray(), ColAxis = "ablated", Map = ColorMap.Diverging, ColorBarLabel = "Δ logit",
        });
    }

    /// <summary>
    /// The ROME figure: three heatmaps (single restored state, MLP window, attention window), tokens as rows with the
    /// subject tokens marked, layers as columns, colour = p(target) after restoration.
    /// </summary>
    public static Figure CausalTrace(TraceResult r, Func<int, string> tokenText)
    {
        var marked = r.SubjectPositions.ToHashSet();
        string[] rowLabels = r.Tokens.Select(t => tokenText(t)).ToArray();
        string target = Q(tokenText(r.Target));
        var panels = new List<Heatmap>();
        void Add(Grid? g, string title, ColorMap map)
        {
            if (g == null) return;
            int L = g.Shape[0], T = g.Shape[1];
            var rows = new double[T][];
            for (int t = 0; t < T; t++) rows[t] = Enumerable.Range(0, L).Select(l => g[l, t]).ToArray();
            panels.Add(new Heatmap
            {
                Title = title, Values = rows, RowLabels = rowLabels, ColLabels = Enumerable.Range(0, L).Select(l => l.ToString(CultureInfo.InvariantCulture)).ToArray(),
                RowAxis = "token (* = subject, corrupted)", ColAxis = "restored layer", Map = map, MarkedRows = marked,
                Min = Math.Min(r.CorruptProb, g.Data.Where(double.IsFinite).DefaultIfEmpty(0).Min()), ColorBarLabel = $"p({target})",
            });
        }
        Add(r.Resid, "Single restored layer (resid)", ColorMap.Purples);
        Add(r.Mlp, $"Restored MLP, window {r.Window}", ColorMap.Greens);
        Add(r.Attn, $"Restored attention, window {r.Window}", ColorMap.Reds);
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Causal trace of p({target}): clean {r.CleanProb:G4}, corrupted {r.CorruptProb:G4} ({r.Noise.Samples} noise samples)");
        return new Figure(title, panels.ToArray());
    }

    /// <summary>DLA: layers × heads, and layers × (attn bias, mlp); embed and the final-norm bias term in the title.</summary>
    public static Figure Dla(DlaResult r, Func<int, string> tokenText)
    {
        int L = r.Mlp.Length;
        string title = string.Create(CultureInfo.InvariantCulture,
            $"Direct logit attribution to {Q(tokenText(r.Target))}: logit {r.Logit:G5} = sum of parts {r.SumOfParts:G5} (embed {r.Embed:G4}, ln_final bias {r.LnFinalBiasTerm:G4})");
        double m = Math.Max(r.Heads.Data.Select(Math.Abs).DefaultIfEmpty(0).Max(), r.Mlp.Concat(r.AttnBias).Select(Math.Abs).DefaultIfEmpty(0).Max());
        if (m == 0) m = 1;
        var heads = new Heatmap
        {
            Title = "Attention heads", Values = Rows(r.Heads), RowLabels = LayerLabels(L),
            ColLabels = Enumerable.Range(0, r.Heads.Shape[1]).Select(i => $"H{i}").ToArray(),
            RowAxis = "layer", ColAxis = "head", Map = ColorMap.Diverging, Min = -m, Max = m, ColorBarLabel = "logit",
        };
        var other = new Heatmap
        {
            Title = "Other components", Values = Enumerable.Range(0, L).Select(l => new[] { r.AttnBias[l], r.Mlp[l] }).ToArray(),
            RowLabels = LayerLabels(L), ColLabels = ["attn bias", "mlp"], RowAxis = "layer", Map = ColorMap.Diverging, Min = -m, Max = m, ColorBarLabel = "logit",
        };
        return new Figure(title, heads, other);
    }

    static string Short(string s) => SvgHeatmap.Label(s);

    /// <summary>A token in a title: quoted, so leading spaces show.</summary>
    static string Q(string s) => "'" + SvgHeatmap.Label(s) + "'";
}
