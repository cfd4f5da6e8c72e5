using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>engine ablate: head ablation (SPEC "zero-ablation of attention heads"), mean ablation, neuron ablation.</summary>
public static class InterpAblateCommand
{
    public static CommandSpec Spec { get; } = new("ablate",
        "ablate attention heads (zero or mean) or MLP neurons and measure the change of a logit",
        "engine ablate --model M (--prompt TEXT | --tokens IDS) [--target T] [--heads all|L:H,...] [--neurons all|L:I,... [--layers L,...]]\n" +
        "              [--mode zero|mean|resample] [--mean-tokens IDS;IDS;...] [--source-tokens IDS;IDS;... | --source-prompt TEXT]\n" +
        "              [--metric logit|logit_diff|prob|logprob] [--wrong W] [--together] [--top N] [--json]\n" +
        "              [--out DIR] [--json-out FILE.json] [--svg FILE.svg] [--png FILE.png]\n\n" +
        "Heads: at blocks.L.attn.hook_z, z[t][h][:] = 0 (zero) or the mean of z[:, h, :] over the positions of the reference\n" +
        "prompts (mean; default reference: the prompt itself) at every position t; the output projection and its bias run as\n" +
        "usual. GQA: h is the query head. Neurons: blocks.L.mlp.hook_post[:, i] at every position. One run per head/neuron\n" +
        "(default) or all of them together (--together). delta = ablated logit[P][target] - base. Default target: the argmax\n" +
        "at P; default heads: all (when no --neurons). L:* selects every head of layer L.\n" +
        "Resample (--mode resample): the values come from another prompt's run at the same positions (--source-tokens, same\n" +
        "length; several prompts separated by ';': the metric is averaged over them). --neurons all --layers L,... ablates\n" +
        "every neuron of those layers one at a time (a sweep); 'ranked' lists the --top N ablations by |delta|. --metric:\n" +
        "logit (default, as SPEC), logit_diff (target - --wrong), prob or logprob of the target; base and delta use it.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "token whose logit is measured (id or text; default: the argmax at the last position)", ValueName: "T"),
         new("--heads", "heads to ablate: all, or LAYER:HEAD list (1:3,2:0; 1:* = all heads of layer 1)", ValueName: "H"),
         new("--neurons", "MLP neurons to ablate (mlp.hook_post): LAYER:INDEX list", ValueName: "N"),
         new("--mode", "zero | mean | resample", ValueName: "MODE", Default: "zero"),
         new("--mean-tokens", "mean mode: reference prompts as token ids, prompts separated by ';' (default: the prompt)", ValueName: "IDS;IDS"),
         new("--together", "ablate all selected heads/neurons in one run", IsFlag: true),
         new("--source-tokens", "resample mode: source prompts as token ids (as long as the prompt), separated by ';'", ValueName: "IDS;IDS"),
         new("--source-prompt", "resample mode: a source prompt as text (as many tokens as the prompt)", ValueName: "TEXT"),
         new("--layers", "with --neurons all: the layers whose neurons are ablated (default: all)", ValueName: "L,..."),
         new("--metric", "logit | logit_diff | prob | logprob (of --target at the last position)", ValueName: "M", Default: "logit"),
         new("--wrong", "logit_diff: the token subtracted", ValueName: "W"),
         new("--top", "how many ablations 'ranked' lists (by |delta|)", ValueName: "N", Default: "20"),
         new("--naive", "one full forward pass per cell (the definition; slow), instead of reusing the cached states of the unpatched run", IsFlag: true),
         .. InterpCommands.OutputOptions, .. SweepJournal.Options], Run);

    static int Run(CliArgs a)
    {
        string mode = a.Choice("--mode", "zero", "mean", "resample");
        int top = a.Int("--top", 20, 1);
        var metricKind = MetricSpec.Parse(a.Require("--metric"), "--metric");
        var outs = InterpCommands.ResolveOutputs(a);
        SweepJournal.Validate(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        int? wrong = InterpCommands.TokenOption(a, model, "--wrong");
        if (metricKind == OutputMetric.LogitDiff && wrong == null) throw new UsageException("--wrong: the logit_diff metric needs --wrong");
        if (wrong != null && metricKind != OutputMetric.LogitDiff) throw new UsageException("--wrong: only with --metric logit_diff");
        bool allNeurons = a.Get("--neurons")?.Trim() == "all";
        if (a.Has("--layers") && !allNeurons) throw new UsageException("--layers: only with --neurons all");
        var neurons = !a.Has("--neurons") ? null
            : allNeurons ? HeadAblation.AllNeurons(model.Config, a.Has("--layers") ? a.IntList("--layers") : Enumerable.Range(0, model.Config.NLayers))
            : InterpCommands.ParseNeurons(a.Require("--neurons"), "--neurons");
        var heads = a.Has("--heads") ? InterpCommands.ParseHeads(a.Require("--heads"), model.Config, "--heads") : null;
        List<int[]>? meanPrompts = null;
        if (a.Has("--mean-tokens"))
        {
            if (mode != "mean") throw new UsageException("--mean-tokens: only with --mode mean");
            meanPrompts = a.Require("--mean-tokens").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(p => CliArgs.ParseIntList("--mean-tokens", p)).ToList();
            foreach (var p in meanPrompts) model.ValidateTokens(p, "--mean-tokens");
        }
        List<int[]>? sources = null;
        if (a.Has("--source-tokens") || a.Has("--source-prompt"))
        {
            if (mode != "resample") throw new UsageException($"{(a.Has("--source-tokens") ? "--source-tokens" : "--source-prompt")}: only with --mode resample");
            if (a.Has("--source-tokens") && a.Has("--source-prompt")) throw new UsageException("--source-prompt: give either --source-tokens or --source-prompt");
            if (a.Has("--source-tokens"))
            {
                sources = a.Require("--source-tokens").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(p => CliArgs.ParseIntList("--source-tokens", p)).ToList();
                if (sources.Count == 0) throw new UsageException("--source-tokens: no source prompt given");
                foreach (var p in sources) model.ValidateTokens(p, "--source-tokens");
            }
            else
            {
                var tk = Common.Tokenizer(model) ?? throw new UsageException("--source-prompt: the model has no tokenizer; use --source-tokens");
                bool? bos = a.Flag("--bos") ? true : a.Flag("--no-bos") ? false : null;
                sources = [tk.Encode(a.Require("--source-prompt"), bos)];
            }
            foreach (var p in sources)
                if (p.Length != tokens.Length)
                    throw new UsageException($"{(a.Has("--source-tokens") ? "--source-tokens" : "--source-prompt")}: a source prompt has {p.Length} tokens, the prompt {tokens.Length}; resampling takes values at the same positions");
        }
        else if (mode == "resample") throw new UsageException("--mode resample: give the source prompt(s) with --source-tokens IDS or --source-prompt TEXT");
        int capacity = Math.Max(tokens.Length, meanPrompts?.Max(p => p.Length) ?? 0);
        using var session = InterpCommands.OpenSession(a, model, capacity);
        using var journal = SweepJournal.Open(a, model);
        var r = HeadAblation.Run(session, tokens, target, new AblationOptions
        {
            Journal = journal,
            Mode = mode == "mean" ? AblationMode.Mean : mode == "resample" ? AblationMode.Resample : AblationMode.Zero,
            Heads = heads, Neurons = neurons, Together = a.Flag("--together"), MeanPrompts = meanPrompts,
            ResamplePrompts = sources, Metric = metricKind, Wrong = wrong, Top = top, Progress = InterpCommands.Progress(a, "ablate"),
            Sweep = a.Flag("--naive") ? Engine.Interp.Sweeps.SweepOptions.NaiveMode : Engine.Interp.Sweeps.SweepOptions.Default,
        });
        journal?.Complete(a, model);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("ablate", model, session.Kernels.Name);
            w.WriteString("mode", mode);
            if (r.MeanSource != null) w.WriteString("mean_over", r.MeanSource);
            if (sources != null)
            {
                w.WriteStartArray("source_tokens");
                foreach (var p in sources) { w.WriteStartArray(); foreach (var t in p) w.WriteNumberValue(t); w.WriteEndArray(); }
                w.WriteEndArray();
                w.WriteString("resample", sources.Count > 1 ? "values of each source run at the same positions; the metric is averaged over the sources" : "values of the source run at the same positions");
            }
            w.WriteString("metric", r.Metric.Name);
            if (wrong != null) w.WriteNumber("wrong_token", wrong.Value);
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
            w.WriteStartArray("ranked");
            foreach (var e in r.Ranked) { w.WriteStartObject(); w.WriteString("label", e.Label); w.WriteDouble("delta", e.Delta); w.WriteEndObject(); }
            w.WriteEndArray();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"{mode} ablation: {r.Metric.Name} of {RunCommand.Quote(text(r.Target))} (id {r.Target}) at position {tokens.Length - 1}, base {r.Base:F4}");
            if (r.MeanSource != null) o.WriteLine($"mean over {r.MeanSource}");
            if (r.Delta != null)
            {
                o.WriteLine("delta (ablated - base):");
                InterpCommands.Table(o, r.Delta, "layer", l => $"L{l}", h => $"H{h}");
            }
            var rest = r.Entries.Where(e => r.Delta == null || e.Heads.Length != 1 || e.Neurons.Length != 0).ToList();
            if (rest.Count > top)
            {
                o.WriteLine($"top {r.Ranked.Count} of {r.Entries.Count} ablations by |delta|:");
                rest = r.Ranked.ToList();
            }
            foreach (var e in rest)
                o.WriteLine($"  {e.Label,-20} {r.Metric.Name} {e.Logit,10:F4}  delta {e.Delta,10:F4}");
        }, () => Figures.Ablation(r, text), () => Parts(r, text, mode));
    }

    /// <summary>ablation.csv: one row per ablation run (layer/head/neuron filled for single heads and neurons).</summary>
    internal static InterpCommands.ReportParts Parts(AblationResult r, Func<int, string> text, string mode)
    {
        var table = new CsvTable("ablation", "label", "layer", "head", "neuron", "n_heads", "n_neurons", "logit", "delta")
        { Caption = $"{mode} ablation: {r.Metric.Name} of {RunCommand.Quote(text(r.Target))} (id {r.Target}) at the last position with the component ablated (column 'logit'); delta = it - base." };
        foreach (var e in r.Entries)
        {
            bool oneHead = e.Heads.Length == 1 && e.Neurons.Length == 0, oneNeuron = e.Neurons.Length == 1 && e.Heads.Length == 0;
            table.Add(e.Label, oneHead ? e.Heads[0].Layer : oneNeuron ? e.Neurons[0].Layer : null, oneHead ? e.Heads[0].Head : null,
                oneNeuron ? e.Neurons[0].Index : null, e.Heads.Length, e.Neurons.Length, e.Logit, e.Delta);
        }
        var worst = r.Entries.OrderBy(e => e.Delta).FirstOrDefault();
        var summary = new List<string> { string.Create(System.Globalization.CultureInfo.InvariantCulture, $"target {RunCommand.Quote(text(r.Target))} (id {r.Target}), base logit {r.Base:G6}") };
        if (worst != null) summary.Add(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"largest drop: {worst.Label} (delta {worst.Delta:G6})"));
        return new InterpCommands.ReportParts { Tables = [table], Summary = summary, Title = $"{char.ToUpperInvariant(mode[0])}{mode[1..]} ablation" };
    }
}
