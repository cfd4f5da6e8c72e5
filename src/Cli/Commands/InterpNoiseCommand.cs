using System.Globalization;
using System.Text.Json;
using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine noise: Gaussian noise on an activation (or a sweep over components), and comparative neuron analysis.</summary>
public static class InterpNoiseCommand
{
    public static CommandSpec Spec { get; } = new("noise",
        "noise making: add Gaussian noise to an activation (or each component in turn) and measure the metric's drop; comparative neuron analysis",
        "engine noise --model M (--prompt TEXT | --tokens IDS) [--hook NAME [--index I] | --head L.H | --neuron L:I] [--positions P,...]\n" +
        "             [--sigma X | --sigma-rel K] [--std-over component|tap] [--samples S] [--seed N]\n" +
        "             [--metric prob|logprob|logit|logit_diff] [--target T] [--wrong W] [--sweep heads|layers|neurons|resid] [--layers L,...]\n" +
        "             [--top N] [--json] [--out DIR]\n" +
        "engine noise --model M (--prompt TEXT | --tokens IDS) --cna-head L.H [--target T] [--top N] [--json] [--out DIR]\n\n" +
        "Noise N(0, sigma^2) is added to the chosen activation at the chosen positions (default: every position): --hook NAME\n" +
        "(default hook_embed, the token-embedding lookup) with --index for one head of a per-head tap or one column of a [T, X]\n" +
        "tap; --head L.H = blocks.L.attn.hook_z, head H; --neuron L:I = blocks.L.mlp.hook_post, column I. sigma is absolute\n" +
        "(--sigma) or --sigma-rel K times the unbiased std of the clean activation over the prompt (all positions) - of the\n" +
        "component's own values (default) or of the whole tap (--std-over tap). Default: --sigma-rel 3. S samples (default 10)\n" +
        "from a generator seeded once per component (the same draws for every component of a sweep). Reported: the metric at\n" +
        "the last position (default: prob of the target = the clean top-1 token) over the samples - mean, spread (sample std),\n" +
        "min, max - and its drop from the clean run. --sweep perturbs each component in turn and ranks them by the drop:\n" +
        "heads (hook_z per head), layers (hook_attn_out and hook_mlp_out of each layer), neurons (hook_post columns of --layers,\n" +
        "default all), resid (blocks.L.hook_resid_pre at one position at a time).\n" +
        "--cna-head L.H: comparative neuron analysis (Yu & Ananiadou 2024): each FFN neuron's Imp (see engine attribute) in the\n" +
        "original run minus in the run with head L.H zeroed (its z slice at every position), both with the original run's\n" +
        "frozen sigma_final; neurons ranked by it.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--hook", "activation to perturb: a hook name (hook_embed, blocks.L.hook_resid_pre, blocks.L.attn.hook_z, ...)", ValueName: "NAME"),
         new("--index", "with --hook: one head (per-head taps) or one column ([T, X] taps) of it", ValueName: "I"),
         new("--head", "perturb one head's z slice: LAYER.HEAD", ValueName: "L.H"),
         new("--neuron", "perturb one MLP neuron (mlp.hook_post): LAYER:INDEX", ValueName: "L:I"),
         new("--positions", "positions that get noise (default: all)", ValueName: "P,..."),
         new("--sigma", "absolute noise standard deviation", ValueName: "X"),
         new("--sigma-rel", "sigma = K x the std of the clean activation over the prompt (default 3 when --sigma is absent)", ValueName: "K"),
         new("--std-over", "what the relative sigma's std is taken over: component | tap", ValueName: "S", Default: "component"),
         new("--samples", "noise samples", ValueName: "S", Default: "10"),
         new("--seed", "seed of the noise generator", ValueName: "N", Default: "1"),
         new("--metric", "prob | logprob | logit | logit_diff (of --target, minus --wrong)", ValueName: "M", Default: "prob"),
         new("--target", "token measured (id or text; default: the clean top-1 token at the last position)", ValueName: "T"),
         new("--wrong", "logit_diff: the token subtracted", ValueName: "W"),
         new("--sweep", "perturb each component in turn: heads | layers | neurons | resid", ValueName: "KIND"),
         new("--layers", "sweeps: only these layers (comma-separated)", ValueName: "L,..."),
         new("--top", "how many ranked components to list", ValueName: "N", Default: "20"),
         new("--cna-head", "comparative neuron analysis for head LAYER.HEAD", ValueName: "L.H"),
         .. InterpCommands.OutputOptions, .. SweepJournal.Options], Run);

    /// <summary>Exactly one head from --head (L.H or L:H).</summary>
    internal static HeadRef OneHead(CliArgs a, string option, Engine.Loader.ModelConfig c)
    {
        var hs = InterpCommands.ParseHeads(a.Require(option), c, option);
        if (hs.Count != 1) throw new UsageException($"{option}: give one head as LAYER.HEAD");
        var h = hs[0];
        if (h.Layer < 0 || h.Layer >= c.NLayers || h.Head < 0 || h.Head >= c.NHeads)
            throw new UsageException($"{option}: {h.Layer}.{h.Head} is out of range (model has {c.NLayers} layers of {c.NHeads} heads)");
        return h;
    }

    /// <summary>Exactly one neuron from --neuron (L:I).</summary>
    internal static NeuronRef OneNeuron(CliArgs a, string option, Engine.Loader.ModelConfig c)
    {
        var ns = InterpCommands.ParseNeurons(a.Require(option), option);
        if (ns.Count != 1) throw new UsageException($"{option}: give one neuron as LAYER:INDEX");
        var n = ns[0];
        if (n.Layer < 0 || n.Layer >= c.NLayers || n.Index < 0 || n.Index >= c.DMlp)
            throw new UsageException($"{option}: {n.Layer}:{n.Index} is out of range (model has {c.NLayers} layers of {c.DMlp} MLP neurons)");
        return n;
    }

    /// <summary>The component chosen by --hook [--index] | --head | --neuron (null when none is given).</summary>
    internal static TapSelection? Selection(CliArgs a, Engine.Loader.ModelConfig c, IReadOnlyCollection<int>? positions)
    {
        int given = (a.Has("--hook") ? 1 : 0) + (a.Has("--head") ? 1 : 0) + (a.Has("--neuron") ? 1 : 0);
        if (given > 1) throw new UsageException("--hook: give one of --hook, --head and --neuron");
        if (a.Has("--index") && !a.Has("--hook")) throw new UsageException("--index: only with --hook");
        if (a.Has("--head")) { var h = OneHead(a, "--head", c); return TapSelection.Head(h.Layer, h.Head, positions); }
        if (a.Has("--neuron")) { var n = OneNeuron(a, "--neuron", c); return TapSelection.Neuron(n.Layer, n.Index, positions); }
        if (!a.Has("--hook")) return null;
        var (kind, layer) = TapSelection.ParseHook(c, a.Require("--hook"), "--hook");
        var sel = new TapSelection(kind, layer, a.OptionalInt("--index"), positions);
        sel.Validate(c, "--index");
        return sel;
    }

    static int Run(CliArgs a)
    {
        int top = a.Int("--top", 20, 1);
        var outs = InterpCommands.ResolveOutputs(a);
        SweepJournal.Validate(a);
        using var model = Common.LoadModel(a);
        var c = model.Config;
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        if (a.Has("--cna-head"))
        {
            foreach (var o in new[] { "--hook", "--index", "--head", "--neuron", "--positions", "--sigma", "--sigma-rel", "--sweep", "--layers", "--wrong", "--samples", "--seed", "--metric", "--std-over" })
                if (a.Has(o)) throw new UsageException($"{o}: not used with --cna-head (comparative neuron analysis zeroes the head; no noise)");
            var head = OneHead(a, "--cna-head", c);
            using var s = InterpCommands.OpenSession(a, model, tokens.Length);
            var cna = ComparativeNeuronAnalysis.Run(s, tokens, head, target, top, InterpCommands.Progress(a, "cna"));
            return EmitCna(a, outs, model, s, cna, tokens, target == null, tok, text, top);
        }

        int samples = a.Int("--samples", 10, 1, 1_000_000);
        int seed = a.Int("--seed", 1);
        var metricKind = MetricSpec.Parse(a.Require("--metric"), "--metric");
        int? wrong = InterpCommands.TokenOption(a, model, "--wrong");
        if (metricKind == OutputMetric.LogitDiff && wrong == null) throw new UsageException("--wrong: the logit_diff metric needs --wrong");
        if (wrong != null && metricKind != OutputMetric.LogitDiff) throw new UsageException("--wrong: only with --metric logit_diff");
        if (a.Has("--sigma") && a.Has("--sigma-rel")) throw new UsageException("--sigma-rel: give either --sigma or --sigma-rel");
        double? sigma = a.Has("--sigma") ? a.Double("--sigma") : null;
        double? sigmaRel = sigma == null ? a.Double("--sigma-rel", 3) : null;
        if (sigma is < 0) throw new UsageException($"--sigma: {sigma} must not be negative");
        if (sigmaRel is < 0) throw new UsageException($"--sigma-rel: {sigmaRel} must not be negative");
        var stdOver = a.Choice("--std-over", "component", "tap") == "tap" ? StdScope.Tap : StdScope.Component;
        int[]? positions = a.Has("--positions") ? a.IntList("--positions") : null;
        if (positions != null)
            foreach (int p in positions)
                if (p < 0 || p >= tokens.Length) throw new UsageException($"--positions: position {p} is out of range [0, {tokens.Length})");
        NoiseSweep? sweep = a.Has("--sweep") ? a.Choice("--sweep", "heads", "layers", "neurons", "resid") switch
        {
            "heads" => NoiseSweep.Heads, "layers" => NoiseSweep.Layers, "neurons" => NoiseSweep.Neurons, _ => NoiseSweep.Resid,
        } : null;
        int[]? layers = a.Has("--layers") ? a.IntList("--layers") : null;
        if (layers != null && sweep == null) throw new UsageException("--layers: only with --sweep");
        if (layers != null)
            foreach (int l in layers)
                if (l < 0 || l >= c.NLayers) throw new UsageException($"--layers: layer {l} is out of range (the model has {c.NLayers} layers)");
        var selection = Selection(a, c, positions);
        if (sweep != null && selection != null) throw new UsageException("--sweep: the sweep chooses the components; drop --hook/--head/--neuron");
        selection ??= new TapSelection(HookKind.Embed, -1, null, positions);

        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        int tgt = target ?? Session.ArgMax(InterpMath.LastRow(session.Run(tokens), c.VocabSize));
        var metric = new MetricSpec(metricKind, tgt, wrong ?? -1);
        var options = new NoiseOptions
        {
            Sigma = sigma, SigmaRel = sigmaRel, StdOver = stdOver, Samples = samples, Seed = seed, Positions = positions,
            Progress = InterpCommands.Progress(a, "noise"),
        };
        using var journal = SweepJournal.Open(a, model);
        options = options with { Journal = journal };
        var r = sweep is NoiseSweep sw
            ? NoiseMaking.RunSweep(session, tokens, sw, metric, options, layers)
            : NoiseMaking.Run(session, tokens, [selection], metric, options);
        journal?.Complete(a, model);
        string sweepName = sweep?.ToString().ToLowerInvariant() ?? "none";
        bool perSample = sweep != NoiseSweep.Neurons;
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("noise", model, session.Kernels.Name);
            w.WriteString("variant", "gaussian noise N(0, sigma^2) added to the activation; System.Random(seed) Box-Muller draws, the same for every component");
            w.WriteString("sweep", sweepName);
            w.TokenArray("tokens", tokens, tok);
            w.WriteString("metric", metric.Name);
            w.WriteNumber("target_token", tgt);
            if (tok != null) w.WriteString("target_text", text(tgt));
            w.WriteString("target_source", target == null ? "clean top-1 token at the last position" : "--target");
            if (wrong != null) w.WriteNumber("wrong_token", wrong.Value);
            w.WriteString("sigma_mode", r.SigmaMode);
            if (sigma != null) w.WriteDouble("sigma", sigma.Value); else w.WriteDouble("sigma_rel", sigmaRel!.Value);
            w.WriteString("std_over", stdOver == StdScope.Tap ? "tap" : "component");
            w.WriteNumber("samples", samples);
            w.WriteNumber("seed", seed);
            if (positions != null) w.Ints("positions", positions); else w.WriteString("positions", "all");
            w.WriteDouble("clean_metric", r.Clean);
            if (r.DropGrid != null) { w.WriteGrid("drop", r.DropGrid); w.WriteStartArray("axes"); foreach (var x in r.GridAxes!) w.WriteStringValue(x); w.WriteEndArray(); }
            w.WriteStartArray("components");
            foreach (var s in r.Components) Stats(w, s, perSample);
            w.WriteEndArray();
            w.WriteStartArray("ranked");
            foreach (var s in r.Ranked.Take(top)) { w.WriteStartObject(); w.WriteString("label", s.Label); w.WriteDouble("drop", s.Drop); w.WriteDouble("mean", s.Mean); w.WriteDouble("spread", s.Spread); w.WriteEndObject(); }
            w.WriteEndArray();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"noise making: {metric.Name} of {RunCommand.Quote(text(tgt))} (id {tgt}) at position {tokens.Length - 1}; clean {r.Clean:G6}; sigma {r.SigmaMode}; {samples} samples, seed {seed}");
            if (r.DropGrid != null)
            {
                o.WriteLine("mean drop (clean - noised):");
                var g = r.DropGrid;
                Func<int, string> col = r.GridAxes![1] switch
                {
                    "head" => h => $"H{h}",
                    "position" => InterpCommands.PositionLabel(tokens, text),
                    _ => k => k == 0 ? "attn_out" : "mlp_out",
                };
                InterpCommands.Table(o, g, "layer", l => $"L{l}", col);
            }
            if (r.Components.Count == 1)
            {
                var s = r.Components[0];
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{s.Label}: sigma {s.Sigma:G6} (activation std {s.ActivationStd:G6})"));
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  mean {s.Mean:G6}  spread {s.Spread:G6}  min {s.Min:G6}  max {s.Max:G6}  drop {s.Drop:G6}"));
            }
            else
            {
                o.WriteLine($"components by drop (top {Math.Min(top, r.Ranked.Count)} of {r.Ranked.Count}):");
                foreach (var s in r.Ranked.Take(top))
                    o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {s.Label,-36} drop {s.Drop,11:G5}  mean {s.Mean,11:G5} ± {s.Spread:G4}"));
            }
        }, () => MethodFigures.Noise(r, text, top), () => Parts(r, text));
    }

    static void Stats(Utf8JsonWriter w, NoiseStats s, bool perSample)
    {
        w.WriteStartObject();
        w.WriteString("label", s.Label);
        w.WriteString("hook", s.Component.HookName);
        if (s.Component.Index is int i) { w.WriteString("index_axis", s.Component.IndexAxis); w.WriteNumber("index", i); }
        if (s.Component.Positions != null) w.Ints("positions", s.Component.Positions.Order());
        w.WriteDouble("activation_std", s.ActivationStd);
        w.WriteDouble("sigma", s.Sigma);
        w.WriteDouble("mean", s.Mean);
        w.WriteDouble("spread", s.Spread);
        w.WriteDouble("min", s.Min);
        w.WriteDouble("max", s.Max);
        w.WriteDouble("drop", s.Drop);
        w.WriteDouble("relative_drop", s.RelativeDrop);
        if (perSample) w.WriteDoubles("sample_metrics", s.Samples);
        w.WriteEndObject();
    }

    static InterpCommands.ReportParts Parts(NoiseResult r, Func<int, string> text)
    {
        var t = new CsvTable("noise", "label", "hook", "index", "sigma", "mean", "spread", "min", "max", "drop")
        { Caption = $"Metric {r.Metric.Name} under noise per component (clean {r.Clean.ToString("G6", CultureInfo.InvariantCulture)}); drop = clean - mean." };
        foreach (var s in r.Components) t.Add(s.Label, s.Component.HookName, s.Component.Index, s.Sigma, s.Mean, s.Spread, s.Min, s.Max, s.Drop);
        var best = r.Ranked.FirstOrDefault();
        return new InterpCommands.ReportParts
        {
            Tables = [t],
            Title = "Noise making",
            Summary = best == null ? [] : [string.Create(CultureInfo.InvariantCulture, $"clean {r.Metric.Name} {r.Clean:G6}; largest drop: {best.Label} ({best.Drop:G6})")],
        };
    }

    static int EmitCna(CliArgs a, InterpCommands.Outputs outs, Model model, Session session, CnaResult r, int[] tokens, bool defaultTarget,
        Engine.Loader.Tokenization.ModelTokenizer? tok, Func<int, string> text, int top)
    {
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("noise", model, session.Kernels.Name);
            w.WriteString("variant", "comparative neuron analysis (Yu & Ananiadou 2024): Imp(original) - Imp(head zeroed), final norm frozen to the original run's sigma_final");
            w.WriteString("sweep", "none");
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("target_token", r.Target);
            if (tok != null) w.WriteString("target_text", text(r.Target));
            w.WriteString("target_source", defaultTarget ? "top-1 token at the last position" : "--target");
            w.WriteStartObject("cna");
            w.WriteNumber("layer", r.Head.Layer);
            w.WriteNumber("head", r.Head.Head);
            w.WriteString("ablation", "z[t][h][:] = 0 at every position (SPEC zero-ablation)");
            w.WriteDouble("final_scale", r.FinalScale);
            w.WriteDouble("logprob", r.LogProb);
            w.WriteDouble("ablated_logprob", r.AblatedLogProb);
            w.WriteDouble("head_effect", r.LogProb - r.AblatedLogProb);
            w.WriteStartArray("top_neurons");
            foreach (var x in r.Top)
            {
                w.WriteStartObject();
                w.WriteString("label", x.Label);
                w.WriteNumber("layer", x.Layer);
                w.WriteNumber("neuron", x.Index);
                w.WriteDouble("cna", x.Score);
                w.WriteDouble("imp_original", r.ImpOriginal[x.Layer][x.Index]);
                w.WriteDouble("imp_ablated", r.ImpAblated[x.Layer][x.Index]);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"comparative neuron analysis: head L{r.Head.Layer}H{r.Head.Head}, target {RunCommand.Quote(text(r.Target))} (id {r.Target})");
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"log p {r.LogProb:G6} -> {r.AblatedLogProb:G6} with the head zeroed (head effect {r.LogProb - r.AblatedLogProb:G6})"));
            o.WriteLine($"FFN neurons by Imp(original) - Imp(head zeroed), top {r.Top.Count}:");
            foreach (var x in r.Top)
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {x.Label,-14} cna {x.Score,12:G6}  imp {r.ImpOriginal[x.Layer][x.Index],12:G6} -> {r.ImpAblated[x.Layer][x.Index],12:G6}"));
        }, () => MethodFigures.Cna(r, text), () =>
        {
            var t = new CsvTable("cna", "layer", "neuron", "imp_original", "imp_ablated", "cna") { Caption = "Every FFN neuron: Imp in the original run, with the head zeroed, and their difference." };
            for (int l = 0; l < r.Cna.Length; l++) for (int i = 0; i < r.Cna[l].Length; i++) t.Add(l, i, r.ImpOriginal[l][i], r.ImpAblated[l][i], r.Cna[l][i]);
            return new InterpCommands.ReportParts { Tables = [t], Title = $"Comparative neuron analysis, head L{r.Head.Layer}H{r.Head.Head}" };
        });
    }
}
