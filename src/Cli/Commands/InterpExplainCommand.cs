using System.Globalization;
using System.Text;
using Engine.Interp;
using Engine.Interp.Explain;
using Engine.Interp.Reports;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>engine explain: feature explanation (issue 3, method 8): top-activating corpus contexts, output logits, ablation effect.</summary>
public static class InterpExplainCommand
{
    public static CommandSpec Spec { get; } = new("explain",
        "explain neurons or directions: top-activating corpus contexts, promoted/suppressed tokens, effect of ablating them",
        "engine explain --model M (--neuron L:I[,L:I...] | --direction FILE.safetensors --hook NAME) [--corpus FILE|DIR]\n" +
        "               [--context N] [--top N] [--state FILE [--resume] [--checkpoint-every K] [--stop-after K]]\n" +
        "               [--effect-windows W | --effect-tokens IDS | --effect-prompt TEXT] [--logit-top K] [--json] [--out DIR]\n\n" +
        "Input-based: the corpus (default: the built-in sample corpus, the repository's corpus/*.txt) is cut into windows of\n" +
        "N tokens (BOS first when the tokenizer adds one; it is never reported), one forward pass each. The activation of a\n" +
        "neuron L:I is blocks.L.mlp.hook_post[t, I]; of a direction d (tensor 'direction' in FILE) in tap NAME it is\n" +
        "<NAME[t], d> (the row flattened). The top N windows by their maximum activation are kept (ties: the earlier\n" +
        "window, then the earlier position), each with all its tokens and activations. --state checkpoints the pass\n" +
        "atomically every K windows; --resume continues it (same result as an uninterrupted run). Without a tokenizer, .txt\n" +
        "is read as UTF-8 bytes (ids 0-255) and .ids files hold token ids.\n" +
        "Output-based: weight logits W_U (w_ln * v) of the output vector v (neuron: W_out[:, I]; direction in the residual\n" +
        "stream: d; in mlp.hook_post: W_out d; in attn.hook_z: W_O d), v centred first for LayerNorm models, top/bottom K;\n" +
        "and the measured effect of ablating the feature (neuron set to 0 / direction projected out, every position) over\n" +
        "the first W windows or a prompt: mean and max KL(clean || ablated) per position and the tokens whose probability\n" +
        "changes most on average.",
        [Common.ModelOption,
         new("--neuron", "neurons to explain: LAYER:INDEX, comma-separated (blocks.L.mlp.hook_post[:, I])", ValueName: "L:I,..."),
         new("--direction", "a direction to explain: safetensors file with tensor 'direction' (needs --hook)", ValueName: "FILE"),
         new("--hook", "the tap the direction lives in, e.g. blocks.2.hook_resid_post", ValueName: "NAME"),
         new("--corpus", "text corpus: a .txt/.ids file or a folder of them (default: the built-in sample corpus)", ValueName: "FILE|DIR"),
         new("--context", "tokens per window (BOS included)", ValueName: "N", Default: "32"),
         new("--top", "top-activating contexts kept per feature", ValueName: "N", Default: "20"),
         new("--bos", "prepend BOS to every window", IsFlag: true),
         new("--no-bos", "do not prepend BOS", IsFlag: true),
         new("--state", "checkpoint file of the corpus pass (JSON, written atomically)", ValueName: "FILE"),
         new("--resume", "continue the pass saved in --state", IsFlag: true),
         new("--checkpoint-every", "write the checkpoint every K windows", ValueName: "K", Default: "50"),
         new("--stop-after", "process at most K windows in this call, save the state and stop (for batch jobs)", ValueName: "K"),
         new("--effect-windows", "measure the ablation effect over the first W corpus windows (0 = not at all)", ValueName: "W", Default: "16"),
         new("--effect-tokens", "measure the ablation effect on this prompt (token ids) instead", ValueName: "IDS"),
         new("--effect-prompt", "measure the ablation effect on this prompt (text) instead", ValueName: "TEXT"),
         new("--logit-top", "promoted/suppressed and most changed tokens to report", ValueName: "K", Default: "10"),
         .. InterpCommands.OutputOptions], Run);

    const int Before = 12, After = 4;

    static int Run(CliArgs a)
    {
        int context = a.Int("--context", 32, 1, 1_000_000);
        int top = a.Int("--top", 20, 1, 100_000);
        int every = a.Int("--checkpoint-every", 50, 1, int.MaxValue);
        int? stopAfter = a.OptionalInt("--stop-after", 0);
        int effectWindows = a.Int("--effect-windows", 16, 0, int.MaxValue);
        int logitTop = a.Int("--logit-top", 10, 1, 100_000);
        if (a.Flag("--bos") && a.Flag("--no-bos")) throw new UsageException("--bos: give either --bos or --no-bos");
        if (a.Has("--direction") != a.Has("--hook")) throw new UsageException(a.Has("--direction") ? "--hook: --direction needs --hook NAME (the tap it lives in)" : "--direction: --hook needs --direction FILE");
        if (!a.Has("--neuron") && !a.Has("--direction")) throw new UsageException("--neuron: give the neurons to explain (--neuron L:I) or --direction FILE --hook NAME");
        if (a.Has("--effect-tokens") && a.Has("--effect-prompt")) throw new UsageException("--effect-tokens: give either --effect-tokens or --effect-prompt");
        if (a.Flag("--resume") && !a.Has("--state")) throw new UsageException("--resume: needs --state FILE");
        if (a.Has("--state") && !a.Flag("--resume") && File.Exists(a.Require("--state")) && !a.Flag("--force"))
            throw new UsageException($"--state: '{a.Require("--state")}' exists; pass --resume to continue it or --force to start over");
        if (a.Has("--state"))
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(a.Require("--state")));
            if (dir != null && !Directory.Exists(dir)) throw new UsageException($"--state: folder '{dir}' does not exist");
        }
        var outs = InterpCommands.ResolveOutputs(a);

        using var model = Common.LoadModel(a);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        var features = new List<Feature>();
        if (a.Has("--neuron"))
            features.AddRange(InterpCommands.ParseNeurons(a.Require("--neuron"), "--neuron").Select(n => new NeuronFeature(n.Layer, n.Index)));
        if (a.Has("--direction")) features.Add(DirectionFeature.FromFile(a.Require("--direction"), a.Require("--hook")));
        foreach (var f in features) f.Validate(model.Config);
        bool? bos = a.Flag("--bos") ? true : a.Flag("--no-bos") ? false : null;
        var corpus = Corpus.Load(a.Get("--corpus"), model, tok, context, bos);
        int[]? effectTokens = null;
        if (a.Has("--effect-tokens") || a.Has("--effect-prompt")) effectTokens = Common.InputTokens(a, model, "--effect-prompt", "--effect-tokens");

        int capacity = Math.Max(context, effectTokens?.Length ?? 0);
        using var session = Common.OpenSession(a, model, capacity, allLogits: false);
        var progress = new ProgressLine(a.Err, "explain", "windows");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        long tokensDone = 0;
        ExplainResult r;
        try
        {
            r = FeatureExplainer.Run(session, corpus, features, new ExplainOptions
            {
                Top = top, LogitTop = logitTop, StatePath = a.Get("--state") is string st ? Path.GetFullPath(st) : null, Resume = a.Flag("--resume"),
                CheckpointEvery = every, StopAfter = stopAfter, EffectWindows = effectWindows, EffectTokens = effectTokens,
                Progress = (done, total) =>
                {
                    tokensDone += corpus.Windows[done - 1].Tokens.Length;
                    progress.Report(done, total, string.Create(CultureInfo.InvariantCulture, $"{tokensDone / Math.Max(sw.Elapsed.TotalSeconds, 1e-9):F0} tokens/s"));
                },
            });
        }
        finally { progress.Close(); }

        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("explain", model, session.Kernels.Name);
            w.WriteString("variant", "top contexts by the window's maximum activation (ties: earlier window, earlier position); weight logits W_U (w_ln * v)");
            w.WriteStartObject("corpus");
            w.WriteString("origin", corpus.Origin);
            w.WriteString("tokenization", corpus.Tokenization);
            w.WriteNumber("documents", corpus.Documents.Count);
            w.WriteNumber("windows", corpus.Windows.Count);
            w.WriteNumber("tokens", corpus.Windows.Sum(x => (long)x.Tokens.Length));
            w.WriteNumber("context", corpus.Context);
            w.WriteBoolean("bos", corpus.Windows[0].HasBos);
            w.WriteEndObject();
            w.WriteNumber("windows_done", r.WindowsDone);
            w.WriteBoolean("complete", r.Complete);
            w.WriteNumber("resumed_from", r.ResumedFrom);
            w.WriteNumber("top", top);
            w.WriteStartArray("features");
            foreach (var fe in r.Features) WriteFeature(w, fe, text, tok != null);
            w.WriteEndArray();
            w.WriteEndObject();
        }, o => Table(o, r, text), () => r.Features.Count > 0 ? Picture(r.Features[0], text) : null, () => Parts(r, text));
    }

    static void WriteFeature(System.Text.Json.Utf8JsonWriter w, FeatureExplanation fe, Func<int, string> text, bool texts)
    {
        var f = fe.Feature;
        w.WriteStartObject();
        w.WriteString("label", f.Label);
        w.WriteString("kind", f is NeuronFeature ? "neuron" : "direction");
        w.WriteString("hook", f.Hook);
        if (f.Layer >= 0) w.WriteNumber("layer", f.Layer);
        if (f is NeuronFeature n) w.WriteNumber("neuron", n.Index);
        var s = fe.Stats;
        w.WriteStartObject("stats");
        w.WriteNumber("positions", s.Positions);
        w.WriteDouble("mean", s.Mean);
        w.WriteDouble("density", s.Density);
        w.WritePropertyName("max");
        w.Number(s.Max);
        w.WritePropertyName("min");
        w.Number(s.Min);
        w.WriteEndObject();
        w.WriteStartArray("top_contexts");
        int rank = 0;
        foreach (var c in fe.Top)
        {
            w.WriteStartObject();
            w.WriteNumber("rank", rank++);
            w.WritePropertyName("value");
            w.Number(c.Value);
            w.WriteNumber("window", c.Window);
            w.WriteString("source", c.Source);
            w.WriteNumber("start", c.Start);
            w.WriteNumber("max_position", c.MaxPosition);
            w.WriteString("max_token_text", text(c.Tokens[c.MaxPosition]));
            w.Ints("tokens", c.Tokens);
            w.WriteStartArray("token_texts");
            foreach (var t in c.Tokens) w.WriteStringValue(text(t));
            w.WriteEndArray();
            w.WriteStartArray("activations");
            foreach (var v in c.Activations) { if (float.IsNaN(v)) w.WriteNullValue(); else w.Number(v); }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        if (fe.Logits is { } lg)
        {
            w.WriteStartObject("output_logits");
            w.WriteString("vector", lg.Vector);
            w.WriteString("formula", lg.Formula);
            Scores(w, "promoted", lg.Promoted, "logit", text);
            Scores(w, "suppressed", lg.Suppressed, "logit", text);
            w.WriteEndObject();
        }
        else w.WriteNull("output_logits");
        if (fe.LogitsNote != null) w.WriteString("output_logits_note", fe.LogitsNote);
        if (fe.Effect is { } ef)
        {
            w.WriteStartObject("ablation");
            w.WriteString("ablation", f is NeuronFeature ? "neuron set to 0 at every position" : "direction projected out at every position");
            w.WriteString("over", ef.Over);
            w.WriteNumber("prompts", ef.Prompts);
            w.WriteNumber("positions", ef.Positions);
            w.WriteDouble("mean_kl", ef.MeanKl);
            w.WriteDouble("max_kl", ef.MaxKl);
            Scores(w, "increased", ef.Increased, "mean_delta_prob", text);
            Scores(w, "decreased", ef.Decreased, "mean_delta_prob", text);
            w.WriteEndObject();
        }
        else w.WriteNull("ablation");
        w.WriteEndObject();
    }

    static void Scores(System.Text.Json.Utf8JsonWriter w, string name, TokenScore[] xs, string valueName, Func<int, string> text)
    {
        w.WriteStartArray(name);
        foreach (var x in xs)
        {
            w.WriteStartObject();
            w.WriteNumber("id", x.Id);
            w.WriteString("text", text(x.Id));
            w.WriteDouble(valueName, x.Value);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>A context as one line: tokens around the maximum, the maximum in [[ ]].</summary>
    internal static string Excerpt(ActivatingContext c, Func<int, string> text)
    {
        var sb = new StringBuilder();
        int from = Math.Max(c.Tokens.Length > 0 && float.IsNaN(c.Activations[0]) ? 1 : 0, c.MaxPosition - Before);
        int to = Math.Min(c.Tokens.Length, c.MaxPosition + After + 1);
        if (from > 0) sb.Append('…');
        for (int t = from; t < to; t++)
        {
            string s = Visible(text(c.Tokens[t]));
            sb.Append(t == c.MaxPosition ? "[[" + s + "]]" : s);
        }
        if (to < c.Tokens.Length) sb.Append('…');
        return sb.ToString();
    }

    static string Visible(string s) => s.Replace("\n", "⏎").Replace("\r", "").Replace("\t", "→");

    static void Table(TextWriter o, ExplainResult r, Func<int, string> text)
    {
        var inv = CultureInfo.InvariantCulture;
        o.WriteLine($"corpus: {r.Corpus.Origin}; {r.Corpus.Windows.Count} windows of up to {r.Corpus.Context} tokens ({r.Corpus.Tokenization})");
        if (!r.Complete) o.WriteLine($"stopped after {r.WindowsDone} of {r.Corpus.Windows.Count} windows (state saved; continue with --resume); the results below are partial");
        else if (r.ResumedFrom > 0) o.WriteLine($"resumed from window {r.ResumedFrom}");
        foreach (var fe in r.Features)
        {
            o.WriteLine();
            o.WriteLine(string.Create(inv, $"{fe.Feature.Label} ({fe.Feature.Hook}): mean {fe.Stats.Mean:G4}, max {fe.Stats.Max:G4}, active (> 0) at {fe.Stats.Density:P1} of {fe.Stats.Positions} positions"));
            o.WriteLine("top contexts (the maximum in [[ ]]):");
            int rank = 1;
            foreach (var c in fe.Top)
                o.WriteLine(string.Create(inv, $"  {rank++,3}  {c.Value,9:F4}  {Excerpt(c, text)}"));
            if (fe.Logits is { } lg)
            {
                o.WriteLine($"promotes ({lg.Formula}):");
                o.WriteLine("  " + string.Join("  ", lg.Promoted.Select(x => string.Create(inv, $"{RunCommand.Quote(text(x.Id))} {x.Value:F3}"))));
                o.WriteLine("suppresses:");
                o.WriteLine("  " + string.Join("  ", lg.Suppressed.Select(x => string.Create(inv, $"{RunCommand.Quote(text(x.Id))} {x.Value:F3}"))));
            }
            else if (fe.LogitsNote != null) o.WriteLine("output logits: " + fe.LogitsNote);
            if (fe.Effect is { } ef)
            {
                o.WriteLine(string.Create(inv, $"ablated over {ef.Over} ({ef.Positions} positions): mean KL {ef.MeanKl:G4}, max KL {ef.MaxKl:G4}"));
                o.WriteLine("  more likely: " + string.Join("  ", ef.Increased.Select(x => string.Create(inv, $"{RunCommand.Quote(text(x.Id))} {x.Value:+0.####E+0;-0.####E+0}"))));
                o.WriteLine("  less likely: " + string.Join("  ", ef.Decreased.Select(x => string.Create(inv, $"{RunCommand.Quote(text(x.Id))} {x.Value:+0.####E+0;-0.####E+0}"))));
            }
        }
    }

    /// <summary>
    /// The picture of one feature: its top contexts as rows (tokens around the maximum, the maximum in the middle
    /// column, colour = activation) and, when known, the promoted/suppressed tokens (colour = weight logit).
    /// </summary>
    internal static Figure Picture(FeatureExplanation fe, Func<int, string> text)
    {
        int cols = Before + 1 + After;
        int n = fe.Top.Count;
        var values = new double[Math.Max(n, 1)][];
        var cells = new string?[Math.Max(n, 1)][];
        var rows = new string[Math.Max(n, 1)];
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = Enumerable.Repeat(double.NaN, cols).ToArray();
            cells[i] = new string?[cols];
            rows[i] = "";
        }
        for (int i = 0; i < n; i++)
        {
            var c = fe.Top[i];
            rows[i] = string.Create(CultureInfo.InvariantCulture, $"#{i + 1} {c.Value:G3}");
            for (int j = 0; j < cols; j++)
            {
                int t = c.MaxPosition - Before + j;
                if (t < 0 || t >= c.Tokens.Length || float.IsNaN(c.Activations[t])) continue;
                values[i][j] = c.Activations[t];
                cells[i][j] = Visible(text(c.Tokens[t]));
            }
        }
        var panels = new List<Heatmap>
        {
            new()
            {
                Title = "Top-activating contexts", Values = values, CellText = cells, RowLabels = rows,
                ColLabels = Enumerable.Range(-Before, cols).Select(d => d == 0 ? "max" : d.ToString("+0;-0", CultureInfo.InvariantCulture)).ToArray(),
                RowAxis = "context (rank, max activation)", ColAxis = "position relative to the maximum", Map = ColorMap.Diverging,
                ColorBarLabel = "activation", NanColor = "#f4f4f4", MarkedCols = new HashSet<int> { Before }, MaxCellWidth = 64, MinCellWidth = 30,
            },
        };
        if (fe.Logits is { } lg)
        {
            int k = lg.Promoted.Length;
            panels.Add(new Heatmap
            {
                Title = "Output logits (weights)", RowLabels = Enumerable.Range(1, k).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray(),
                ColLabels = ["promoted", "suppressed"],
                Values = Enumerable.Range(0, k).Select(i => new[] { lg.Promoted[i].Value, lg.Suppressed[i].Value }).ToArray(),
                CellText = Enumerable.Range(0, k).Select(i => new string?[] { Visible(text(lg.Promoted[i].Id)), Visible(text(lg.Suppressed[i].Id)) }).ToArray(),
                RowAxis = "rank", Map = ColorMap.Diverging, ColorBarLabel = "logit", MinCellWidth = 60, MaxCellWidth = 90,
            });
        }
        string title = string.Create(CultureInfo.InvariantCulture,
            $"{fe.Feature.Label} ({fe.Feature.Hook}): max {fe.Stats.Max:G4}, mean {fe.Stats.Mean:G3}, active at {fe.Stats.Density:P0} of positions");
        return new Figure(title, [.. panels]);
    }

    static string FileSafe(string s) => new(s.Select(ch => char.IsLetterOrDigit(ch) || ch is '-' or '_' or '.' ? ch : '_').ToArray());

    static InterpCommands.ReportParts Parts(ExplainResult r, Func<int, string> text)
    {
        var inv = CultureInfo.InvariantCulture;
        var contexts = new CsvTable("top_contexts", "feature", "rank", "value", "window", "source", "start", "max_position", "max_token", "max_token_text", "excerpt")
        { Caption = "The top-activating windows per feature (excerpt: tokens around the maximum, which is in [[ ]])." };
        var tokens = new CsvTable("context_tokens", "feature", "rank", "position", "token", "token_text", "activation", "is_max")
        { Caption = "Every token of every top context with the feature's activation (empty at an added BOS)." };
        var logits = new CsvTable("output_logits", "feature", "side", "rank", "token", "token_text", "logit")
        { Caption = "Weight-based output logits of each feature's output vector." };
        var abl = new CsvTable("ablation", "feature", "side", "rank", "token", "token_text", "mean_delta_prob")
        { Caption = "Tokens whose probability changes most (mean over positions) when the feature is ablated." };
        var sections = new List<HtmlSection>();
        var summary = new List<string>
        {
            $"corpus: {r.Corpus.Origin}, {r.Corpus.Windows.Count} windows of up to {r.Corpus.Context} tokens ({r.Corpus.Tokenization})",
        };
        if (!r.Complete) summary.Add($"incomplete: {r.WindowsDone} of {r.Corpus.Windows.Count} windows done (continue with --resume)");
        foreach (var fe in r.Features)
        {
            string label = fe.Feature.Label;
            int rank = 0;
            foreach (var c in fe.Top)
            {
                contexts.Add(label, rank, c.Value, c.Window, c.Source, c.Start, c.MaxPosition, c.Tokens[c.MaxPosition], text(c.Tokens[c.MaxPosition]), Excerpt(c, text));
                for (int t = 0; t < c.Tokens.Length; t++)
                    tokens.Add(label, rank, t, c.Tokens[t], text(c.Tokens[t]), float.IsNaN(c.Activations[t]) ? null : c.Activations[t], t == c.MaxPosition);
                rank++;
            }
            if (fe.Logits is { } lg)
            {
                for (int i = 0; i < lg.Promoted.Length; i++) logits.Add(label, "promoted", i, lg.Promoted[i].Id, text(lg.Promoted[i].Id), lg.Promoted[i].Value);
                for (int i = 0; i < lg.Suppressed.Length; i++) logits.Add(label, "suppressed", i, lg.Suppressed[i].Id, text(lg.Suppressed[i].Id), lg.Suppressed[i].Value);
            }
            if (fe.Effect is { } ef)
            {
                for (int i = 0; i < ef.Increased.Length; i++) abl.Add(label, "increased", i, ef.Increased[i].Id, text(ef.Increased[i].Id), ef.Increased[i].Value);
                for (int i = 0; i < ef.Decreased.Length; i++) abl.Add(label, "decreased", i, ef.Decreased[i].Id, text(ef.Decreased[i].Id), ef.Decreased[i].Value);
                summary.Add(string.Create(inv, $"{label}: ablating it over {ef.Over} gives mean KL {ef.MeanKl:G4} (max {ef.MaxKl:G4}) per position"));
            }
            sections.Add(new HtmlSection($"{label}: top-activating contexts", ContextsHtml(fe, text)));
        }
        var tables = new List<CsvTable> { contexts, tokens };
        if (logits.Rows.Count > 0) tables.Add(logits);
        if (abl.Rows.Count > 0) tables.Add(abl);
        return new InterpCommands.ReportParts
        {
            Title = "Feature explanation: " + string.Join(", ", r.Features.Select(f => f.Feature.Label)),
            Summary = summary,
            Tables = tables,
            Sections = sections,
            MoreFigures = r.Features.Skip(1).Select(fe => ("figure-" + FileSafe(fe.Feature.Label), Picture(fe, text))).ToList(),
        };
    }

    /// <summary>Each context as a line of coloured spans (background = activation; the maximum outlined; hover = value).</summary>
    static string ContextsHtml(FeatureExplanation fe, Func<int, string> text)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        double maxAbs = fe.Top.SelectMany(c => c.Activations).Where(float.IsFinite).Select(v => Math.Abs((double)v)).DefaultIfEmpty(0).Max();
        sb.Append(inv, $"<p class=\"note\">{Html.Esc(fe.Feature.Hook)}; colour: white = 0, red = positive, blue = negative (full scale ±{maxAbs:G4}); the maximum is outlined. Hover a token for its activation.</p>\n");
        int rank = 1;
        foreach (var c in fe.Top)
        {
            sb.Append(inv, $"<div class=\"ctx\"><b>#{rank++}</b> <code>{c.Value:G4}</code> <span class=\"note\">{Html.Esc(c.Source)}, window {c.Window}</span><br>");
            for (int t = 0; t < c.Tokens.Length; t++)
            {
                float v = c.Activations[t];
                string tt = Visible(text(c.Tokens[t]));
                string bg = float.IsNaN(v) ? "#eeeeee" : Html.ActivationColor(v, maxAbs);
                string fg = SvgHeatmap.TextColor(bg);
                string title = float.IsNaN(v) ? "BOS (not scored)" : $"{tt}: {v.ToString("G5", inv)}";
                sb.Append(inv, $"<span class=\"t{(t == c.MaxPosition ? " max" : "")}\" style=\"background:{bg};color:{fg}\" title=\"{Html.Esc(title)}\">{Html.Esc(tt)}</span>");
            }
            sb.Append("</div>\n");
        }
        if (fe.Logits is { } lg)
        {
            sb.Append("<p><b>Promotes</b> (").Append(Html.Esc(lg.Formula)).Append("): ")
              .Append(string.Join(", ", lg.Promoted.Select(x => $"<code>{Html.Esc(RunCommand.Quote(text(x.Id)))}</code> {x.Value.ToString("F3", inv)}"))).Append("</p>\n");
            sb.Append("<p><b>Suppresses</b>: ")
              .Append(string.Join(", ", lg.Suppressed.Select(x => $"<code>{Html.Esc(RunCommand.Quote(text(x.Id)))}</code> {x.Value.ToString("F3", inv)}"))).Append("</p>\n");
        }
        else if (fe.LogitsNote != null) sb.Append("<p>").Append(Html.Esc(fe.LogitsNote)).Append("</p>\n");
        if (fe.Effect is { } ef)
            sb.Append(inv, $"<p><b>Ablation</b> over {Html.Esc(ef.Over)} ({ef.Positions} positions): mean KL {ef.MeanKl:G4}, max KL {ef.MaxKl:G4}; more likely: ")
              .Append(string.Join(", ", ef.Increased.Take(5).Select(x => $"<code>{Html.Esc(RunCommand.Quote(text(x.Id)))}</code>")))
              .Append("; less likely: ").Append(string.Join(", ", ef.Decreased.Take(5).Select(x => $"<code>{Html.Esc(RunCommand.Quote(text(x.Id)))}</code>"))).Append("</p>\n");
        return sb.ToString();
    }
}
