using System.Globalization;
using Engine.Interp;
using Engine.Interp.Gradients;
using Engine.Interp.Reports;
using Engine.Loader;
using Engine.Training;

namespace Engine.Cli.Commands;

/// <summary>engine attrib-patch: attribution patching (gradient × activation difference), optionally next to activation patching.</summary>
public static class AttributionPatchCommand
{
    static readonly string[] Acts = InterpPatchCommand.Acts, Metrics = InterpPatchCommand.Metrics;

    public static CommandSpec Spec { get; } = new("attrib-patch",
        "attribution patching: the gradient linear approximation of activation patching, in one backward pass",
        "engine attrib-patch --model M (--clean-tokens IDS | --clean-prompt TEXT) (--corrupt-tokens IDS | --corrupt-prompt TEXT)\n" +
        "             [--answer A] [--wrong W] [--act resid_pre|resid_mid|resid_post|attn_out|mlp_out|z|q|k|v|pattern]\n" +
        "             [--per-position] [--metric logit_diff|normalized|prob|logprob] [--direction denoise|noise]\n" +
        "             [--compare] [--precision f32|f64] [--json] ...\n\n" +
        "Nanda's attribution patching: attr(cell) = sum over the cell of d metric / d act at the corrupted run times\n" +
        "(act_clean - act_corrupted) (denoise; noise: the gradient at the clean run times (act_corrupted - act_clean)): one\n" +
        "clean forward, one corrupted forward and one backward pass (the training engine's backward on the loaded weights).\n" +
        "The same options, cells and metrics as engine patch; 'patched' = the unpatched run's metric + attribution (the\n" +
        "first-order estimate of what engine patch measures). --compare also runs activation patching and reports both side\n" +
        "by side (picture, CSV) with their Pearson correlation. --precision: the gradient engine's precision (default f32).",
        [Common.ModelOption,
         .. InterpPatchCommand.PromptPairOptions,
         new("--act", "activation: " + string.Join(" | ", Acts), ValueName: "ACT", Default: "resid_pre"),
         new("--per-position", "per-head activations: one cell per (layer, position, head)", IsFlag: true),
         new("--metric", "metric: " + string.Join(" | ", Metrics), ValueName: "M", Default: "logit_diff"),
         new("--direction", "denoise (gradient at the corrupted run) | noise (gradient at the clean run)", ValueName: "D", Default: "denoise"),
         new("--compare", "also run activation patching (engine patch) and show both, with their Pearson correlation", IsFlag: true),
         new("--precision", "precision of the gradient engine: f32 | f64", ValueName: "P", Default: "f32"),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        var act = a.Choice("--act", Acts);
        var metric = a.Choice("--metric", Metrics);
        var direction = a.Choice("--direction", "denoise", "noise");
        var precision = a.Choice("--precision", "f32", "f64") == "f64" ? Precision.F64 : Precision.F32;
        var options = new AttributionOptions
        {
            Activation = (PatchActivation)Array.IndexOf(Acts, act),
            Metric = (PatchMetric)Array.IndexOf(Metrics, metric),
            Direction = direction == "noise" ? PatchDirection.Noise : PatchDirection.Denoise,
            PerPosition = a.Flag("--per-position"),
        };
        if (options.PerPosition && !ActivationPatching.IsPerHead(options.Activation))
            throw new UsageException($"--per-position: only for per-head activations (z, q, k, v, pattern); {act} is always by (layer, position)");
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        ActivationPatching.CheckExists(model.Config, options.Activation);
        var (clean, corrupt, answer, wrong) = InterpPatchCommand.PromptPair(a, model);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var gm = GradientModel.Load(model, precision);
        var r = AttributionPatching.Run(gm, clean, corrupt, answer, wrong, options);
        double attrSeconds = sw.Elapsed.TotalSeconds;
        PatchResult? ap = null;
        double apSeconds = 0, pearson = double.NaN;
        string? backend = null;
        if (a.Flag("--compare"))
        {
            using var session = InterpCommands.OpenSession(a, model, clean.Length);
            backend = session.Kernels.Name;
            sw.Restart();
            ap = ActivationPatching.Run(session, clean, corrupt, r.Estimate.AnswerToken, r.Estimate.WrongToken, new PatchOptions
            {
                Activation = options.Activation, Metric = options.Metric, Direction = options.Direction, PerPosition = options.PerPosition,
                Progress = InterpCommands.Progress(a, "patch"),
            });
            apSeconds = sw.Elapsed.TotalSeconds;
            pearson = AttributionPatching.Pearson(r.Estimate.Patched, ap.Patched);
        }
        var est = r.Estimate;
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        string baseMetric = options.Metric == PatchMetric.Normalized ? "logit_diff" : metric;
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("attrib-patch", model, backend);
            w.WriteString("variant", "attribution patching (Nanda): sum over the cell of d metric/d act at the " +
                (direction == "denoise" ? "corrupted run x (act_clean - act_corrupted)" : "clean run x (act_corrupted - act_clean)"));
            w.WriteString("precision", GradientModel.Name(precision));
            w.WriteString("act", act);
            w.WriteString("hook", Engine.Runtime.HookPoints.Name(ActivationPatching.Kind(options.Activation), 0).Replace("blocks.0.", "blocks.L."));
            w.WriteString("direction", direction);
            w.WriteString("metric", metric);
            w.WriteString("base_metric", baseMetric);
            w.WriteBoolean("per_position", est.PerPosition);
            w.WriteStartArray("axes");
            foreach (var ax in est.Axes) w.WriteStringValue(ax);
            w.WriteEndArray();
            w.TokenArray("clean_tokens", clean, tok);
            w.TokenArray("corrupt_tokens", corrupt, tok);
            w.WriteNumber("answer_token", est.AnswerToken);
            w.WriteNumber("wrong_token", est.WrongToken);
            w.WriteDouble("clean_metric", est.CleanMetric);
            w.WriteDouble("corrupt_metric", est.CorruptMetric);
            w.WriteGrid("attribution", r.Attribution);
            w.WriteGrid("patched", est.Patched);
            w.WriteGrid("normalized", est.Normalized);
            w.WriteGrid("values", est.Values);
            w.WriteDouble("seconds", attrSeconds);
            if (ap != null)
            {
                w.WriteStartObject("activation_patching");
                w.WriteGrid("patched", ap.Patched);
                w.WriteGrid("normalized", ap.Normalized);
                w.WriteGrid("values", ap.Values);
                w.WriteDouble("seconds", apSeconds);
                w.WriteEndObject();
                w.WriteDouble("pearson", pearson);
            }
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"attribution patching ({direction}) of {act}, metric {metric} (answer {RunCommand.Quote(text(est.AnswerToken))}, wrong {RunCommand.Quote(text(est.WrongToken))}), {GradientModel.Name(precision)}");
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"clean {baseMetric} {est.CleanMetric:F4}, corrupted {est.CorruptMetric:F4}; attribution in {attrSeconds:F2} s"));
            Print(o, est, corrupt, text);
            if (ap != null)
            {
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"activation patching ({apSeconds:F2} s):"));
                Print(o, ap, corrupt, text);
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"Pearson correlation (attribution vs activation patching): {pearson:F4}"));
            }
        }, () => Picture(r, ap, pearson, text), () => Parts(r, ap, pearson, text, act, metric, direction));
    }

    static void Print(TextWriter o, PatchResult r, int[] corrupt, Func<int, string> text)
    {
        var g = r.Values;
        if (g.Rank == 2)
            InterpCommands.Table(o, g, "layer", l => $"L{l}", r.Axes[1] == "position" ? InterpCommands.PositionLabel(corrupt, text) : h => $"H{h}");
        else
            for (int h = 0; h < g.Shape[2]; h++)
            {
                o.WriteLine($"{r.Axes[2]} {h}:");
                InterpCommands.Table(o, g.SliceLast(h), "layer", l => $"L{l}", InterpCommands.PositionLabel(corrupt, text));
            }
    }

    static Heatmap Retitle(Heatmap h, string title, double? min, double? max) => new()
    {
        Title = title, Values = h.Values, RowLabels = h.RowLabels, ColLabels = h.ColLabels, RowAxis = h.RowAxis, ColAxis = h.ColAxis,
        Map = h.Map, Min = min ?? h.Min, Max = max ?? h.Max, CellText = h.CellText, MarkedRows = h.MarkedRows, MarkedCols = h.MarkedCols,
        ColorBarLabel = h.ColorBarLabel, Center = h.Center, NanColor = h.NanColor, MinCellWidth = h.MinCellWidth, MaxCellWidth = h.MaxCellWidth,
    };

    /// <summary>Activation patching (left, with --compare) and attribution patching (right) on one colour scale.</summary>
    internal static Figure Picture(AttributionResult r, PatchResult? ap, double pearson, Func<int, string> text)
    {
        var attrPanel = Figures.Patching(r.Estimate, text).Panels[0];
        string act = ActivationPatching.Name(r.Estimate.Activation);
        if (ap == null) return new Figure(null, Retitle(attrPanel, $"Attribution patching of {act} (estimate of the patched metric)", null, null));
        var apPanel = Figures.Patching(ap, text).Panels[0];
        double center = attrPanel.Center;
        double m = attrPanel.Values.Concat(apPanel.Values).SelectMany(x => x).Where(double.IsFinite).Select(v => Math.Abs(v - center)).DefaultIfEmpty(1).Max();
        if (m == 0) m = 1;
        return new Figure(string.Create(CultureInfo.InvariantCulture, $"{act}: activation patching vs attribution patching (Pearson r = {pearson:F3})"),
            Retitle(apPanel, $"Activation patching of {act}", center - m, center + m),
            Retitle(attrPanel, $"Attribution patching of {act}", center - m, center + m));
    }

    static InterpCommands.ReportParts Parts(AttributionResult r, PatchResult? ap, double pearson, Func<int, string> text, string act, string metric, string direction)
    {
        var est = r.Estimate;
        var cols = new List<string>(est.Axes);
        bool byPosition = est.Axes.Contains("position");
        if (byPosition) { cols.Add("token"); cols.Add("token_text"); }
        cols.AddRange(["attribution", "patched_estimate", "normalized_estimate", "value_estimate"]);
        if (ap != null) cols.AddRange(["activation_patched", "activation_normalized", "activation_value"]);
        var table = new CsvTable("attribution", [.. cols])
        {
            Caption = $"{direction} attribution patching of {act}: attribution = first-order estimate of (patched − unpatched {metric}); " +
                      (ap != null ? "activation_* = engine patch's measured values." : ""),
        };
        var g = est.Values;
        var idx = new int[g.Rank];
        for (int i = 0; i < g.Data.Length; i++)
        {
            int rem = i;
            for (int ax = g.Rank - 1; ax >= 0; ax--) { idx[ax] = rem % g.Shape[ax]; rem /= g.Shape[ax]; }
            var row = new List<object?>();
            row.AddRange(idx.Select(v => (object?)v));
            if (byPosition) { int t = idx[Array.IndexOf(est.Axes, "position")]; row.Add(est.CorruptTokens[t]); row.Add(text(est.CorruptTokens[t])); }
            row.Add(r.Attribution.Data[i]); row.Add(est.Patched.Data[i]); row.Add(est.Normalized.Data[i]); row.Add(g.Data[i]);
            if (ap != null) { row.Add(ap.Patched.Data[i]); row.Add(ap.Normalized.Data[i]); row.Add(ap.Values.Data[i]); }
            table.Add([.. row]);
        }
        var summary = new List<string>
        {
            $"answer {RunCommand.Quote(text(est.AnswerToken))} (id {est.AnswerToken}), wrong {RunCommand.Quote(text(est.WrongToken))} (id {est.WrongToken})",
            string.Create(CultureInfo.InvariantCulture, $"clean {(metric == "normalized" ? "logit_diff" : metric)} {est.CleanMetric:G6}, corrupted {est.CorruptMetric:G6}; gradient engine {GradientModel.Name(r.Precision)}"),
        };
        if (ap != null) summary.Add(string.Create(CultureInfo.InvariantCulture, $"Pearson correlation with activation patching: {pearson:F4}"));
        return new InterpCommands.ReportParts { Tables = [table], Title = $"Attribution patching ({direction}) of {act}", Summary = summary };
    }
}
