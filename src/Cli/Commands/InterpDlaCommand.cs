using Engine.Interp;
using System.Globalization;
using Engine.Interp.Reports;

namespace Engine.Cli.Commands;

/// <summary>engine dla: direct logit attribution (SPEC "direct logit attribution").</summary>
public static class InterpDlaCommand
{
    public static CommandSpec Spec { get; } = new("dla",
        "direct logit attribution: each head's, MLP's and the embedding's direct contribution to a logit",
        "engine dla --model M (--prompt TEXT | --tokens IDS) [--target T] [--per-neuron [--top N]] [--accumulated [--incl-mid]] [--decomposed] [--json] [--out DIR] [--json-out FILE.json] [--svg FILE.svg] [--png FILE.png] [--backend B]\n\n" +
        "One run; the final residual at the last position P is split into embed + per layer (heads, attn_bias, mlp); each part\n" +
        "goes through the final norm with its scale FROZEN to the real run's ln_final.hook_scale[P] (LayerNorm centres the part;\n" +
        "Gemma multiplies by 1+w) and is dotted with the target's unembedding row. The final-norm bias gives\n" +
        "ln_final_bias_term; sum_of_parts equals the real logit. Default target: the argmax at P.\n" +
        "--per-neuron: each FFN neuron's m_i W_out[:, i] (m = mlp.hook_post at P) through the same frozen norm, plus each\n" +
        "layer's MLP output bias (neurons + bias = mlp[L]); the --top N by |attribution| are listed. --accumulated: the\n" +
        "accumulated residual stream at each layer boundary (TransformerLens accumulated_resid: 0_pre = embed, 1_pre, ...,\n" +
        "final_post; --incl-mid adds L_mid), frozen norm, no bias (final_post + ln_final_bias_term = logit). --decomposed:\n" +
        "embed, pos_embed (learned positions), each head, each attention bias, each MLP; they sum (+ the bias term) to the logit.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "token whose logit is attributed (id or one token's text; default: the argmax at the last position)", ValueName: "T"),
         new("--per-neuron", "also attribute every FFN neuron (m_i W_out[:, i]) and each MLP bias", IsFlag: true),
         new("--top", "--per-neuron: how many neurons to list (by |attribution|)", ValueName: "N", Default: "20"),
         new("--accumulated", "also attribute the accumulated residual stream at each layer boundary", IsFlag: true),
         new("--incl-mid", "--accumulated: include each layer's resid_mid", IsFlag: true),
         new("--decomposed", "also list every part of the residual stream: embed, pos_embed, heads, attention biases, MLPs", IsFlag: true),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        int top = a.Int("--top", 20, 1);
        if (a.Has("--top") && !a.Flag("--per-neuron")) throw new Engine.Loader.UsageException("--top: only with --per-neuron");
        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        var r = DirectLogitAttribution.Run(session, tokens, target, new DlaOptions
        {
            PerNeuron = a.Flag("--per-neuron"), Accumulated = a.Flag("--accumulated"), IncludeMid = a.Flag("--incl-mid"), Decomposed = a.Flag("--decomposed"),
        });
        var topNeurons = r.Neurons == null ? [] : Ranking.TopAbs(r.Neurons.SelectMany((row, l) => row.Select((v, i) => new ScoredComponent($"L{l}N{i}", l, i, v))), top);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("dla", model, session.Kernels.Name);
            w.WriteString("variant", "final-norm scale frozen to the real run (TransformerLens apply_ln_to_stack)");
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("target_token", r.Target);
            if (tok != null) w.WriteString("target_text", text(r.Target));
            w.WriteGrid("heads", r.Heads);
            w.WriteDoubles("mlp", r.Mlp);
            w.WriteDoubles("attn_bias", r.AttnBias);
            w.WriteDouble("embed", r.Embed);
            w.WriteDouble("ln_final_bias_term", r.LnFinalBiasTerm);
            w.WriteDouble("logit", r.Logit);
            w.WriteDouble("sum_of_parts", r.SumOfParts);
            w.WriteDouble("final_scale", r.FinalScale);
            if (r.Neurons != null)
            {
                w.WriteStartObject("per_neuron");
                w.WriteString("definition", "m_i * W_out[:, i] at the last position (m = mlp.hook_post) through the frozen final norm, dotted with the unembedding row");
                w.WriteDoubles("mlp_bias", r.MlpBias!);
                w.WriteDoubles("layer_sums", r.Neurons.Select((row, l) => row.Sum() + r.MlpBias![l]));
                w.WriteStartArray("top_neurons");
                foreach (var x in topNeurons)
                {
                    w.WriteStartObject();
                    w.WriteString("label", x.Label); w.WriteNumber("layer", x.Layer); w.WriteNumber("neuron", x.Index); w.WriteDouble("logit", x.Score);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            if (r.Accumulated != null) Parts(w, "accumulated", r.Accumulated, "accumulated residual stream at each layer boundary (TransformerLens accumulated_resid labels), frozen final norm, no bias");
            if (r.Decomposed != null)
            {
                Parts(w, "decomposed", r.Decomposed, "embed, pos_embed, each head, each attention bias, each MLP; sum + ln_final_bias_term = logit");
                w.WriteDouble("decomposed_sum", r.Decomposed.Sum(x => x.Value) + r.LnFinalBiasTerm);
            }
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"direct logit attribution to {RunCommand.Quote(text(r.Target))} (id {r.Target}) at position {tokens.Length - 1}");
            o.WriteLine($"logit {r.Logit:F4} = sum of parts {r.SumOfParts:F4}: embed {r.Embed:F4}, ln_final bias {r.LnFinalBiasTerm:F4}");
            int L = r.Mlp.Length, H = r.Heads.Shape[1];
            var g = new Grid(L, H + 2);
            for (int l = 0; l < L; l++)
            {
                for (int h = 0; h < H; h++) g[l, h] = r.Heads[l, h];
                g[l, H] = r.AttnBias[l];
                g[l, H + 1] = r.Mlp[l];
            }
            InterpCommands.Table(o, g, "layer", l => $"L{l}", c => c < H ? $"H{c}" : c == H ? "attn_bias" : "mlp");
            if (r.Neurons != null)
            {
                o.WriteLine($"FFN neurons, top {topNeurons.Count} by |attribution| (neurons + MLP bias = mlp per layer):");
                foreach (var x in topNeurons) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {x.Label,-14} {x.Score,12:F4}"));
                o.WriteLine("MLP bias terms: " + string.Join("  ", r.MlpBias!.Select((v, l) => string.Create(CultureInfo.InvariantCulture, $"L{l} {v:F4}"))));
            }
            if (r.Accumulated != null)
            {
                o.WriteLine("accumulated residual stream (frozen norm, no bias):");
                foreach (var (label, v) in r.Accumulated) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {label,-12} {v,12:F4}"));
            }
            if (r.Decomposed != null)
            {
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"decomposition (sum + ln_final bias = {r.Decomposed.Sum(x => x.Value) + r.LnFinalBiasTerm:F4}):"));
                foreach (var (label, v) in r.Decomposed) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {label,-14} {v,12:F4}"));
            }
        }, () => Figures.Dla(r, text), () => MoreParts(Parts(r, text), r, text, top));
    }

    static void Parts(System.Text.Json.Utf8JsonWriter w, string name, IReadOnlyList<(string Label, double Value)> parts, string definition)
    {
        w.WriteStartObject(name);
        w.WriteString("definition", definition);
        w.WriteStartArray("labels");
        foreach (var p in parts) w.WriteStringValue(p.Label);
        w.WriteEndArray();
        w.WriteDoubles("values", parts.Select(p => p.Value));
        w.WriteEndObject();
    }

    /// <summary>The --per-neuron / --accumulated / --decomposed tables and their picture, added to the report.</summary>
    static InterpCommands.ReportParts MoreParts(InterpCommands.ReportParts p, DlaResult r, Func<int, string> text, int top)
    {
        var tables = p.Tables.ToList();
        if (r.Neurons != null)
        {
            var t = new CsvTable("dla_neurons", "layer", "neuron", "logit") { Caption = "Direct contribution of every FFN neuron (m_i W_out[:, i]); per layer they sum, with the MLP bias, to mlp." };
            for (int l = 0; l < r.Neurons.Length; l++) for (int i = 0; i < r.Neurons[l].Length; i++) t.Add(l, i, r.Neurons[l][i]);
            tables.Add(t);
        }
        if (r.Accumulated != null)
        {
            var t = new CsvTable("dla_accumulated", "boundary", "logit") { Caption = "Accumulated residual stream at each layer boundary, frozen final norm, no bias." };
            foreach (var (label, v) in r.Accumulated) t.Add(label, v);
            tables.Add(t);
        }
        if (r.Decomposed != null)
        {
            var t = new CsvTable("dla_decomposed", "part", "logit") { Caption = "Every part of the final residual stream; with the final-norm bias term they sum to the logit." };
            foreach (var (label, v) in r.Decomposed) t.Add(label, v);
            tables.Add(t);
        }
        var extra = MethodFigures.DlaExtras(r, text, top);
        return p with { Tables = tables, MoreFigures = extra == null ? p.MoreFigures : [.. p.MoreFigures, ("dla_extra", extra)] };
    }

    /// <summary>dla.csv: one row per component (embed, each head, each attn bias, each mlp, the final-norm bias).</summary>
    internal static InterpCommands.ReportParts Parts(DlaResult r, Func<int, string> text)
    {
        var table = new CsvTable("dla", "component", "layer", "head", "logit")
        { Caption = $"Direct contribution of each component to the logit of {RunCommand.Quote(text(r.Target))} (id {r.Target}), final-norm scale frozen; the rows sum to the logit." };
        table.Add("embed", null, null, r.Embed);
        for (int l = 0; l < r.Mlp.Length; l++)
        {
            for (int h = 0; h < r.Heads.Shape[1]; h++) table.Add("head", l, h, r.Heads[l, h]);
            table.Add("attn_bias", l, null, r.AttnBias[l]);
            table.Add("mlp", l, null, r.Mlp[l]);
        }
        table.Add("ln_final_bias", null, null, r.LnFinalBiasTerm);
        return new InterpCommands.ReportParts
        {
            Tables = [table],
            Title = $"Direct logit attribution to {text(r.Target)}",
            Summary = [string.Create(CultureInfo.InvariantCulture, $"logit {r.Logit:G6} = sum of parts {r.SumOfParts:G6}; final-norm scale {r.FinalScale:G6}")],
        };
    }
}
