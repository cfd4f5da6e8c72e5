using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>engine ablate: head ablation (SPEC "zero-ablation of attention heads"), mean ablation, neuron ablation.</summary>
public static class InterpAblateCommand
{
    public static CommandSpec Spec { get; } = new("ablate",
        "ablate attention heads (zero or mean) or MLP neurons and measure the change of a logit",
        "engine ablate --model M (--prompt TEXT | --tokens IDS) [--target T] [--heads all|L:H,...] [--neurons L:I,...]\n" +
        "              [--mode zero|mean] [--mean-tokens IDS;IDS;...] [--together] [--json] [--out FILE.json] [--out-svg FILE.svg]\n\n" +
        "Heads: at blocks.L.attn.hook_z, z[t][h][:] = 0 (zero) or the mean of z[:, h, :] over the positions of the reference\n" +
        "prompts (mean; default reference: the prompt itself) at every position t; the output projection and its bias run as\n" +
        "usual. GQA: h is the query head. Neurons: blocks.L.mlp.hook_post[:, i] at every position. One run per head/neuron\n" +
        "(default) or all of them together (--together). delta = ablated logit[P][target] - base. Default target: the argmax\n" +
        "at P; default heads: all (when no --neurons). L:* selects every head of layer L.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "token whose logit is measured (id or text; default: the argmax at the last position)", ValueName: "T"),
         new("--heads", "heads to ablate: all, or LAYER:HEAD list (1:3,2:0; 1:* = all heads of layer 1)", ValueName: "H"),
         new("--neurons", "MLP neurons to ablate (mlp.hook_post): LAYER:INDEX list", ValueName: "N"),
         new("--mode", "zero | mean", ValueName: "MODE", Default: "zero"),
         new("--mean-tokens", "mean mode: reference prompts as token ids, prompts separated by ';' (default: the prompt)", ValueName: "IDS;IDS"),
         new("--together", "ablate all selected heads/neurons in one run", IsFlag: true),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        string mode = a.Choice("--mode", "zero", "mean");
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        var neurons = a.Has("--neurons") ? InterpCommands.ParseNeurons(a.Require("--neurons"), "--neurons") : null;
        var heads = a.Has("--heads") ? InterpCommands.ParseHeads(a.Require("--heads"), model.Config, "--heads") : null;
        List<int[]>? meanPrompts = null;
        if (a.Has("--mean-tokens"))
        {
            if (mode != "mean") throw new UsageException("--mean-tokens: only with --mode mean");
            meanPrompts = a.Require("--mean-tokens").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(p => CliArgs.ParseIntList("--mean-tokens", p)).ToList();
            foreach (var p in meanPrompts) model.ValidateTokens(p, "--mean-tokens");
        }
        int capacity = Math.Max(tokens.Length, meanPrompts?.Max(p => p.Length) ?? 0);
        using var session = InterpCommands.OpenSession(a, model, capacity);
        var r = HeadAblation.Run(session, tokens, target, new AblationOptions
        {
            Mode = mode == "mean" ? AblationMode.Mean : AblationMode.Zero,
            Heads = heads, Neurons = neurons, Together = a.Flag("--together"), MeanPrompts = meanPrompts,
        });
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("ablate", model, session.Kernels.Name);
            w.WriteString("mode", mode);
            if (r.MeanSource != null) w.WriteString("mean_over", r.MeanSource);
            w.WriteBoolean("together", a.Flag("--together"));
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("target_token", r.Target);
            if (tok != null) w.WriteString("target_text", text(r.Target));
            w.WriteDouble("base", r.Base);
            if (r.Delta != null) w.WriteGrid("delta", r.Delta);
            w.WriteStartArray("results");
            foreach (var e in r.Entries)
            {
                w.WriteStartObject();
                w.WriteString("label", e.Label);
                w.WriteStartArray("heads");
                foreach (var h in e.Heads) { w.WriteStartArray(); w.WriteNumberValue(h.Layer); w.WriteNumberValue(h.Head); w.WriteEndArray(); }
                w.WriteEndArray();
                w.WriteStartArray("neurons");
                foreach (var n in e.Neurons) { w.WriteStartArray(); w.WriteNumberValue(n.Layer); w.WriteNumberValue(n.Index); w.WriteEndArray(); }
                w.WriteEndArray();
                w.WriteDouble("logit", e.Logit);
                w.WriteDouble("delta", e.Delta);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"{mode} ablation: logit of {RunCommand.Quote(text(r.Target))} (id {r.Target}) at position {tokens.Length - 1}, base {r.Base:F4}");
            if (r.MeanSource != null) o.WriteLine($"mean over {r.MeanSource}");
            if (r.Delta != null)
            {
                o.WriteLine("delta (ablated - base):");
                InterpCommands.Table(o, r.Delta, "layer", l => $"L{l}", h => $"H{h}");
            }
            foreach (var e in r.Entries.Where(e => r.Delta == null || e.Heads.Length != 1 || e.Neurons.Length != 0))
                o.WriteLine($"  {e.Label,-20} logit {e.Logit,10:F4}  delta {e.Delta,10:F4}");
        }, () => Figures.Ablation(r, text));
    }
}
