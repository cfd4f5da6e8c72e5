using Engine.Interp;
using Engine.Interp.Reports;

namespace Engine.Cli.Commands;

/// <summary>engine dla: direct logit attribution (SPEC "direct logit attribution").</summary>
public static class InterpDlaCommand
{
    public static CommandSpec Spec { get; } = new("dla",
        "direct logit attribution: each head's, MLP's and the embedding's direct contribution to a logit",
        "engine dla --model M (--prompt TEXT | --tokens IDS) [--target T] [--json] [--out FILE.json] [--out-svg FILE.svg] [--backend B]\n\n" +
        "One run; the final residual at the last position P is split into embed + per layer (heads, attn_bias, mlp); each part\n" +
        "goes through the final norm with its scale FROZEN to the real run's ln_final.hook_scale[P] (LayerNorm centres the part;\n" +
        "Gemma multiplies by 1+w) and is dotted with the target's unembedding row. The final-norm bias gives\n" +
        "ln_final_bias_term; sum_of_parts equals the real logit. Default target: the argmax at P.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "token whose logit is attributed (id or one token's text; default: the argmax at the last position)", ValueName: "T"),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        var r = DirectLogitAttribution.Run(session, tokens, target);
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
        }, () => Figures.Dla(r, text));
    }
}
