using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine patch: activation patching (SPEC "activation patching of the residual stream"; TransformerLens variants).</summary>
public static class InterpPatchCommand
{
    internal static readonly string[] Acts = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern"];
    internal static readonly string[] Metrics = ["logit_diff", "normalized", "prob", "logprob"];

    public static CommandSpec Spec { get; } = new("patch",
        "activation patching: which activations carry the difference between a clean and a corrupted prompt",
        "engine patch --model M (--clean-tokens IDS | --clean-prompt TEXT) (--corrupt-tokens IDS | --corrupt-prompt TEXT)\n" +
        "             [--answer A] [--wrong W] [--act resid_pre|resid_mid|resid_post|attn_out|mlp_out|z|q|k|v|pattern]\n" +
        "             [--per-position] [--metric logit_diff|normalized|prob|logprob] [--direction denoise|noise] [--json] ...\n\n" +
        "denoise (default): run the corrupted prompt with one activation slice taken from the clean run; noise: the reverse.\n" +
        "resid_*/attn_out/mlp_out: one run per (layer, position), that position's whole d_model row. z/q/k/v/pattern: one run\n" +
        "per (layer, head) over all positions (k/v by KV head under GQA; pattern: the head's whole [Tq, Tk] map), or with\n" +
        "--per-position per (layer, position, head) (pattern: the destination row). metric at the last position P:\n" +
        "logit_diff = logit[answer] - logit[wrong] (default); normalized = (patched - corrupt) / (clean - corrupt) of it;\n" +
        "prob / logprob of the answer. JSON: patched (the raw metric), normalized, values (the chosen metric), axes.\n" +
        "Defaults: answer = clean argmax at P, wrong = corrupted argmax (or the clean runner-up if they agree).",
        [Common.ModelOption,
         .. PromptPairOptions,
         new("--act", "activation to patch: " + string.Join(" | ", Acts), ValueName: "ACT", Default: "resid_pre"),
         new("--per-position", "per-head activations: one cell per (layer, position, head)", IsFlag: true),
         new("--metric", "metric: " + string.Join(" | ", Metrics), ValueName: "M", Default: "logit_diff"),
         new("--direction", "denoise (corrupted run gets clean values) | noise (clean run gets corrupted values)", ValueName: "D", Default: "denoise"),
         new("--naive", "one full forward pass per cell (the definition; slow), instead of reusing the cached states of the unpatched run", IsFlag: true),
         .. InterpCommands.OutputOptions, .. SweepJournal.Options], Run);

    /// <summary>The clean / corrupted prompt pair and the answer / wrong tokens (shared with engine attrib-patch).</summary>
    internal static OptionSpec[] PromptPairOptions =>
    [
        new("--clean-tokens", "clean prompt as token ids", ValueName: "IDS"),
        new("--clean-prompt", "clean prompt as text (needs the tokenizer)", ValueName: "TEXT"),
        new("--corrupt-tokens", "corrupted prompt as token ids (same length)", ValueName: "IDS"),
        new("--corrupt-prompt", "corrupted prompt as text", ValueName: "TEXT"),
        new("--bos", "prepend BOS to text prompts", IsFlag: true),
        new("--no-bos", "do not prepend BOS to text prompts", IsFlag: true),
        new("--answer", "answer token (id or one token's text)", ValueName: "A"),
        new("--wrong", "wrong token for logit_diff (id or text)", ValueName: "W"),
    ];

    /// <summary>Reads <see cref="PromptPairOptions"/>: the two prompts (same length) and the optional answer / wrong tokens.</summary>
    internal static (int[] Clean, int[] Corrupt, int? Answer, int? Wrong) PromptPair(CliArgs a, Model model)
    {
        var clean = Common.InputTokens(a, model, "--clean-prompt", "--clean-tokens");
        var corrupt = Common.InputTokens(a, model, "--corrupt-prompt", "--corrupt-tokens");
        if (clean.Length != corrupt.Length)
            throw new UsageException($"--corrupt-tokens: the corrupted prompt has {corrupt.Length} tokens, the clean one {clean.Length}; they must have the same length");
        int? answer = InterpCommands.TokenOption(a, model, "--answer");
        int? wrong = InterpCommands.TokenOption(a, model, "--wrong");
        return (clean, corrupt, answer, wrong);
    }

    static int Run(CliArgs a)
    {
        var act = a.Choice("--act", Acts);
        var metric = a.Choice("--metric", Metrics);
        var direction = a.Choice("--direction", "denoise", "noise");
        var options = new PatchOptions
        {
            Activation = (PatchActivation)Array.IndexOf(Acts, act),
            Metric = (PatchMetric)Array.IndexOf(Metrics, metric),
            Direction = direction == "noise" ? PatchDirection.Noise : PatchDirection.Denoise,
            PerPosition = a.Flag("--per-position"),
            Progress = InterpCommands.Progress(a, "patch"),
            Sweep = a.Flag("--naive") ? Engine.Interp.Sweeps.SweepOptions.NaiveMode : Engine.Interp.Sweeps.SweepOptions.Default,
        };
        if (options.PerPosition && !ActivationPatching.IsPerHead(options.Activation))
            throw new UsageException($"--per-position: only for per-head activations (z, q, k, v, pattern); {act} is always patched per (layer, position)");
        var outs = InterpCommands.ResolveOutputs(a);
        SweepJournal.Validate(a);
        using var model = Common.LoadModel(a);
        ActivationPatching.CheckExists(model.Config, options.Activation);
        var (clean, corrupt, answer, wrong) = PromptPair(a, model);
        using var session = InterpCommands.OpenSession(a, model, clean.Length);
        using var journal = SweepJournal.Open(a, model);
        var r = ActivationPatching.Run(session, clean, corrupt, answer, wrong, options with { Journal = journal });
        journal?.Complete(a, model);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        string baseMetric = options.Metric == PatchMetric.Normalized ? "logit_diff" : metric;
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("patch", model, session.Kernels.Name);
            w.WriteString("act", act);
            w.WriteString("hook", Engine.Runtime.HookPoints.Name(ActivationPatching.Kind(options.Activation), 0).Replace("blocks.0.", "blocks.L."));
            w.WriteString("direction", direction);
            w.WriteString("metric", metric);
            w.WriteString("base_metric", baseMetric);
            w.WriteBoolean("per_position", r.PerPosition);
            w.WriteStartArray("axes");
            foreach (var ax in r.Axes) w.WriteStringValue(ax);
            w.WriteEndArray();
            w.TokenArray("clean_tokens", clean, tok);
            w.TokenArray("corrupt_tokens", corrupt, tok);
            w.WriteNumber("answer_token", r.AnswerToken);
            w.WriteNumber("wrong_token", r.WrongToken);
            w.WriteDouble("clean_metric", r.CleanMetric);
            w.WriteDouble("corrupt_metric", r.CorruptMetric);
            w.WriteGrid("patched", r.Patched);
            w.WriteGrid("normalized", r.Normalized);
            w.WriteGrid("values", r.Values);
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"{direction} patching of {act}, metric {metric} (answer {RunCommand.Quote(text(r.AnswerToken))}, wrong {RunCommand.Quote(text(r.WrongToken))})");
            o.WriteLine($"clean {baseMetric} {r.CleanMetric:F4}, corrupted {r.CorruptMetric:F4}");
            var g = r.Values;
            if (g.Rank == 2)
                InterpCommands.Table(o, g, "layer", l => $"L{l}",
                    r.Axes[1] == "position" ? InterpCommands.PositionLabel(corrupt, text) : h => $"H{h}");
            else
                for (int h = 0; h < g.Shape[2]; h++)
                {
                    o.WriteLine($"{r.Axes[2]} {h}:");
                    InterpCommands.Table(o, g.SliceLast(h), "layer", l => $"L{l}", InterpCommands.PositionLabel(corrupt, text));
                }
        }, () => Figures.Patching(r, text), () => Parts(r, text, act, metric, direction, baseMetric));
    }

    /// <summary>patched.csv: one row per cell (the result's axes as columns) with patched (raw metric), normalized and value.</summary>
    internal static InterpCommands.ReportParts Parts(PatchResult r, Func<int, string> text, string act, string metric, string direction, string baseMetric)
    {
        var cols = new List<string>(r.Axes);
        bool byPosition = r.Axes.Contains("position");
        if (byPosition) { cols.Add("token"); cols.Add("token_text"); }
        cols.AddRange(["patched", "normalized", "value"]);
        var table = new CsvTable("patched", [.. cols])
        {
            Caption = $"{direction} patching of {act}: patched = {baseMetric} with the cell patched, normalized = (patched - corrupt) / (clean - corrupt), value = {metric}.",
        };
        var g = r.Values;
        int n = g.Data.Length;
        var idx = new int[g.Rank];
        for (int i = 0; i < n; i++)
        {
            int rem = i;
            for (int ax = g.Rank - 1; ax >= 0; ax--) { idx[ax] = rem % g.Shape[ax]; rem /= g.Shape[ax]; }
            var row = new List<object?>();
            row.AddRange(idx.Select(v => (object?)v));
            if (byPosition) { int t = idx[Array.IndexOf(r.Axes, "position")]; row.Add(r.CorruptTokens[t]); row.Add(text(r.CorruptTokens[t])); }
            row.Add(r.Patched.Data[i]); row.Add(r.Normalized.Data[i]); row.Add(g.Data[i]);
            table.Add([.. row]);
        }
        return new InterpCommands.ReportParts
        {
            Tables = [table],
            Title = $"Activation patching ({direction}) of {act}",
            Summary =
            [
                $"answer {RunCommand.Quote(text(r.AnswerToken))} (id {r.AnswerToken}), wrong {RunCommand.Quote(text(r.WrongToken))} (id {r.WrongToken})",
                string.Create(System.Globalization.CultureInfo.InvariantCulture, $"clean {baseMetric} {r.CleanMetric:G6}, corrupted {r.CorruptMetric:G6}"),
            ],
        };
    }
}
