using System.Globalization;
using Engine.Interp;
using Engine.Interp.Gradients;
using Engine.Interp.Reports;
using Engine.Loader;
using Engine.Training;

namespace Engine.Cli.Commands;

/// <summary>engine ig: integrated gradients and gradient × activation for MLP neurons.</summary>
public static class IntegratedGradientsCommand
{
    static readonly string[] Methods = ["ig", "grad-x-act", "both"];
    static readonly string[] MetricNames = ["prob", "logprob", "logit"];

    public static CommandSpec Spec { get; } = new("ig",
        "integrated gradients and gradient x activation of MLP neurons for a target token",
        "engine ig --model M (--tokens IDS | --prompt TEXT) [--target T] [--method ig|grad-x-act|both] [--steps N]\n" +
        "          [--metric prob|logprob|logit] [--layers L,..] [--position P] [--all-positions] [--top N] [--precision f32|f64] [--json] ...\n\n" +
        "Neurons = blocks.L.mlp.hook_post (gated MLPs: act(gate)*up). F = the metric of the target at the last position\n" +
        "(default: its probability, as knowledge-neuron work; target default: the top-1 token).\n" +
        "ig: per layer, the neurons at position P are scaled together from 0 to their value (alpha = k/N, k = 1..N);\n" +
        "attr_i = act_i x mean of dF/dact_i over the steps (right Riemann sum); the JSON's completeness section compares\n" +
        "the sum over a layer with F(act) - F(0 at that layer). grad-x-act: act_i x dF/dact_i in one backward pass, at P\n" +
        "or summed over all positions (--all-positions).",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "target token (id or one token's text; default: the top-1 prediction)", ValueName: "T"),
         new("--method", "ig | grad-x-act | both", ValueName: "M", Default: "both"),
         new("--steps", "integrated-gradients steps", ValueName: "N", Default: "20"),
         new("--metric", "F: prob | logprob | logit of the target", ValueName: "F", Default: "prob"),
         new("--layers", "layers to attribute (default: all)", ValueName: "L,.."),
         new("--position", "position of the attributed neurons (default: the last)", ValueName: "P"),
         new("--all-positions", "grad-x-act: sum over every position", IsFlag: true),
         new("--top", "neurons in the ranking", ValueName: "N", Default: "20"),
         new("--precision", "precision of the gradient engine: f32 | f64", ValueName: "P", Default: "f32"),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        var method = a.Choice("--method", Methods);
        var metricName = a.Choice("--metric", MetricNames);
        var metric = metricName switch { "logprob" => OutputMetric.LogProb, "logit" => OutputMetric.Logit, _ => OutputMetric.Prob };
        var precision = a.Choice("--precision", "f32", "f64") == "f64" ? Precision.F64 : Precision.F32;
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        var options = new NeuronGradientOptions
        {
            Metric = metric,
            Steps = a.Int("--steps", 20, 1, 10_000),
            Layers = a.Has("--layers") ? a.IntList("--layers") : null,
            Position = a.OptionalInt("--position", 0, tokens.Length - 1),
            AllPositions = a.Flag("--all-positions"),
            Top = a.Int("--top", 20, 1, 1_000_000),
            Progress = InterpCommands.Progress(a, "ig"),
        };
        var gm = GradientModel.Load(model, precision);
        var results = new List<NeuronGradientResult>();
        if (method is "ig" or "both") results.Add(NeuronGradients.IntegratedGradients(gm, tokens, target, options));
        if (method is "grad-x-act" or "both") results.Add(NeuronGradients.GradientTimesActivation(gm, tokens, target, options));
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        var first = results[0];
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("ig", model, null);
            w.WriteString("variant", "neurons = mlp.hook_post; ig: layer-wise scaling of position P's neurons from 0, right Riemann sum; grad_x_act: act x gradient");
            w.WriteString("precision", GradientModel.Name(precision));
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("target_token", first.Target);
            if (tok != null) w.WriteString("target_text", text(first.Target));
            w.WriteString("metric", metricName);
            w.WriteNumber("position", first.Position);
            w.WriteDouble("metric_value", first.MetricValue);
            w.WriteStartObject("methods");
            foreach (var r in results)
            {
                w.WriteStartObject(r.Method);
                if (r.Steps > 0) w.WriteNumber("steps", r.Steps);
                if (r.Method == "grad_x_act") w.WriteBoolean("all_positions", r.AllPositions);
                w.WriteGrid("attribution", r.Attribution);
                w.WriteDoubles("layer_sums", r.LayerSums);
                if (r.Method == "integrated_gradients") w.WriteDoubles("completeness_targets", r.LayerTargets);
                w.WriteStartArray("top_neurons");
                foreach (var (l, i, s) in r.Top)
                {
                    w.WriteStartObject(); w.WriteNumber("layer", l); w.WriteNumber("neuron", i); w.WriteDouble("score", s); w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"target {RunCommand.Quote(text(first.Target))} (id {first.Target}) at position {first.Position}: {metricName} {first.MetricValue:G5}"));
            foreach (var r in results)
            {
                o.WriteLine($"{r.Method}{(r.Steps > 0 ? $" ({r.Steps} steps)" : "")}: top neurons");
                foreach (var (l, i, s) in r.Top) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  L{l}N{i,-6} {s,12:G5}"));
                if (r.Method == "integrated_gradients")
                    for (int l = 0; l < r.LayerSums.Length; l++)
                        if (double.IsFinite(r.LayerSums[l]))
                            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  completeness L{l}: sum {r.LayerSums[l]:G5} vs F(act) - F(0) {r.LayerTargets[l]:G5}"));
            }
        }, () => Picture(results), () => Parts(results));
    }

    /// <summary>The top neurons (rows, ranked by the first method) × methods, colour = attribution.</summary>
    static Figure Picture(List<NeuronGradientResult> results)
    {
        var rows = results[0].Top.Select(t => (t.Layer, t.Neuron)).ToArray();
        var values = rows.Select(r => results.Select(m => m.Attribution[r.Layer, r.Neuron]).ToArray()).ToArray();
        return new Figure(null, new Heatmap
        {
            Title = $"Neuron attribution ({string.Join(", ", results.Select(r => r.Method))})", Values = values,
            RowLabels = rows.Select(r => $"L{r.Layer}N{r.Neuron}").ToArray(), ColLabels = results.Select(r => r.Method).ToArray(),
            RowAxis = "neuron (ranked)", ColAxis = "method", Map = ColorMap.Diverging, ColorBarLabel = "attribution",
            CellText = values.Select(r => r.Select(v => (string?)v.ToString("G3", CultureInfo.InvariantCulture)).ToArray()).ToArray(), MinCellWidth = 90,
        });
    }

    static InterpCommands.ReportParts Parts(List<NeuronGradientResult> results)
    {
        var table = new CsvTable("neurons", "method", "layer", "neuron", "attribution") { Caption = "every neuron's attribution (NaN: layer not attributed)" };
        foreach (var r in results)
            for (int l = 0; l < r.Attribution.Shape[0]; l++)
                for (int i = 0; i < r.Attribution.Shape[1]; i++) table.Add(r.Method, l, i, r.Attribution[l, i]);
        return new InterpCommands.ReportParts { Tables = [table], Title = "Gradient attribution of MLP neurons" };
    }
}
