using System.Globalization;
using System.Text;
using System.Text.Json;
using Engine.Interp;
using Engine.Loader;
using Engine.Loader.Tokenization;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>The interpretability commands (lens, patch, ablate, trace, dla), registered here, and what they share.</summary>
public static partial class InterpCommands
{
    public static CommandSpec[] Specs =>
        [InterpLensCommand.Spec, InterpPatchCommand.Spec, InterpAblateCommand.Spec, InterpTraceCommand.Spec, InterpDlaCommand.Spec, InterpNoiseCommand.Spec, InterpAttributeCommand.Spec, InterpSteerCommand.Spec, InterpExplainCommand.Spec];

    /// <summary>
    /// Output options every interp command has (plus --json, --force, --backend). Scheme: --json prints the JSON
    /// document on stdout; --out DIR writes the whole report folder (result.json, CSV tables, PNG + SVG picture,
    /// report.html); --json-out / --svg / --png write single files. All refuse to overwrite without --force.
    /// </summary>
    internal static OptionSpec[] OutputOptions =>
    [
        new("--out", "write a report folder: result.json, CSV tables, the picture as PNG and SVG, report.html (the folder is created if missing)", ValueName: "DIR"),
        new("--json-out", "write the JSON document to this file (atomically)", ValueName: "FILE.json"),
        new("--svg", "write the picture as SVG to this file", ValueName: "FILE.svg"),
        new("--png", "write the picture as PNG to this file", ValueName: "FILE.png"),
        Common.ForceOption, Common.BackendOption, Common.JsonOption,
    ];

    /// <summary>Output files and folder resolved (and checked) before any computation.</summary>
    internal sealed record Outputs(string? Dir, string? Json, string? Svg, string? Png);

    internal static Outputs ResolveOutputs(CliArgs a)
    {
        string? dir = null;
        if (a.Has("--out"))
        {
            string given = a.Require("--out");
            dir = Path.GetFullPath(given);
            if (File.Exists(dir)) throw new UsageException($"--out: '{given}' is a file; --out takes a folder for the report (use --json-out FILE.json for the JSON alone)");
            if (!a.Flag("--force"))
                foreach (var n in new[] { Engine.Interp.Reports.ReportWriter.JsonFile, Engine.Interp.Reports.ReportWriter.HtmlFile })
                    if (File.Exists(Path.Combine(dir, n))) throw new UsageException($"--out: '{Path.Combine(given, n)}' exists; pass --force to overwrite the report");
        }
        string? json = a.Has("--json-out") ? Common.OutputPath(a, "--json-out") : null;
        string? svg = a.Has("--svg") ? Common.OutputPath(a, "--svg") : null;
        string? png = a.Has("--png") ? Common.OutputPath(a, "--png") : null;
        var files = new[] { ("--json-out", json), ("--svg", svg), ("--png", png) }.Where(f => f.Item2 != null).ToArray();
        for (int i = 0; i < files.Length; i++)
            for (int j = i + 1; j < files.Length; j++)
                if (files[i].Item2 == files[j].Item2) throw new UsageException($"{files[j].Item1}: same file as {files[i].Item1}");
        return new Outputs(dir, json, svg, png);
    }

    /// <summary>What a command adds to its report besides the JSON and the picture.</summary>
    internal sealed record ReportParts
    {
        public IReadOnlyList<Engine.Interp.Reports.CsvTable> Tables { get; init; } = [];
        /// <summary>More figures (name, figure) after the main one (e.g. one per feature).</summary>
        public IReadOnlyList<(string Name, Engine.Interp.Reports.Figure Figure)> MoreFigures { get; init; } = [];
        public IReadOnlyList<Engine.Interp.Reports.HtmlSection> Sections { get; init; } = [];
        public IReadOnlyList<string> Summary { get; init; } = [];
        /// <summary>Report title (default: the command's summary).</summary>
        public string? Title { get; init; }
    }

    /// <summary>
    /// Writes the results: JSON to stdout with --json (else the readable table), the report folder for --out, the
    /// single files for --json-out / --svg / --png. The picture and tables are built only when some output needs them.
    /// Returns 0.
    /// </summary>
    internal static int Emit(CliArgs a, Outputs outs, Action<Utf8JsonWriter> json, Action<TextWriter> table, Func<Engine.Interp.Reports.Figure?> figure, Func<ReportParts>? parts = null)
    {
        string? jsonText = null;
        string JsonText()
        {
            if (jsonText != null) return jsonText;
            var sw = new StringWriter();
            Common.WriteJson(sw, json);
            return jsonText = sw.ToString();
        }
        Engine.Interp.Reports.Figure? fig = null;
        bool figDone = false;
        Engine.Interp.Reports.Figure? Fig() { if (!figDone) { fig = figure(); figDone = true; } return fig; }
        var written = new List<string>();
        if (outs.Dir != null)
        {
            var p = parts?.Invoke() ?? new ReportParts();
            var figs = new List<(string, Engine.Interp.Reports.Figure)>();
            if (Fig() is { } f) figs.Add(("figure", f));
            figs.AddRange(p.MoreFigures);
            var content = new Engine.Interp.Reports.ReportContent
            {
                Command = a.Command.Name,
                Title = p.Title ?? $"engine {a.Command.Name}: {a.Command.Summary}",
                CommandLine = CommandLine(a),
                JsonText = JsonText(),
                Summary = p.Summary,
                Tables = p.Tables,
                Figures = figs,
                Sections = p.Sections,
            };
            Engine.Interp.Reports.ReportWriter.Write(outs.Dir, content, a.Flag("--force"));
            written.Add($"report written to {Path.Combine(outs.Dir, Engine.Interp.Reports.ReportWriter.HtmlFile)} ({string.Join(", ", Engine.Interp.Reports.ReportWriter.FileNames(content))})");
        }
        if (outs.Svg != null || outs.Png != null)
        {
            var f = Fig() ?? throw new UsageException($"{(outs.Svg != null ? "--svg" : "--png")}: this result has no picture");
            if (outs.Svg != null) { AtomicFile.WriteText(outs.Svg, f.ToSvg()); written.Add($"picture written to {outs.Svg}"); }
            if (outs.Png != null) { var png = f.ToPng(); AtomicFile.Write(outs.Png, s => s.Write(png)); written.Add($"picture written to {outs.Png}"); }
        }
        if (outs.Json != null) { AtomicFile.WriteText(outs.Json, JsonText()); written.Add($"JSON written to {outs.Json}"); }
        if (a.Flag("--json")) a.Out.Write(JsonText());
        else
        {
            table(a.Out);
            foreach (var line in written) a.Out.WriteLine(line);
        }
        return 0;
    }

    /// <summary>For pictures given as SVG text only (no PNG can be made from it: --png and the report's PNG are skipped).</summary>
    internal static int Emit(CliArgs a, Outputs outs, Action<Utf8JsonWriter> json, Action<TextWriter> table, Func<string> svg, Func<ReportParts>? parts = null)
    {
        if (outs.Png != null) throw new UsageException("--png: this command's picture is only available as SVG");
        var rawOuts = outs with { Svg = null };
        int rc = Emit(a, rawOuts, json, table, () => null, parts);
        if (outs.Svg != null) AtomicFile.WriteText(outs.Svg, svg());
        if (outs.Dir != null) AtomicFile.WriteText(Path.Combine(outs.Dir, "figure.svg"), svg());
        return rc;
    }

    /// <summary>The command line as given (options in the command's order; values quoted where needed).</summary>
    internal static string CommandLine(CliArgs a)
    {
        var sb = new StringBuilder("engine ").Append(a.Command.Name);
        foreach (var o in a.Command.Options)
        {
            if (!a.Has(o.Name)) continue;
            sb.Append(' ').Append(o.Name);
            if (!o.IsFlag) sb.Append(' ').Append(ShellQuote(a.Get(o.Name) ?? ""));
        }
        return sb.ToString();
    }

    static string ShellQuote(string s) =>
        s.Length > 0 && s.All(ch => char.IsLetterOrDigit(ch) || "-_./,:=+@%".Contains(ch)) ? s : "'" + s.Replace("'", "'\\''") + "'";

    internal static Session OpenSession(CliArgs a, Model model, int tokens) =>
        Common.OpenSession(a, model, capacity: tokens, allLogits: false);

    /// <summary>A token option: an integer id, or (with a tokenizer) the text of exactly one token. Null when absent.</summary>
    internal static int? TokenOption(CliArgs a, Model model, string name)
    {
        string? s = a.Get(name);
        if (s == null) return null;
        if (int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int id))
        {
            InterpMath.CheckToken(model.Config, id, name);
            return id;
        }
        var tok = Common.Tokenizer(model) ?? throw new UsageException($"{name}: '{s}' is not a token id, and the model has no tokenizer to read it as text");
        if (tok.TokenToId(s) is int exact) return exact;
        var ids = tok.Encode(s, addBos: false);
        if (ids.Length != 1) throw new UsageException($"{name}: '{s}' is {ids.Length} tokens ({string.Join(",", ids)}); give one token or its id");
        InterpMath.CheckToken(model.Config, ids[0], name);
        return ids[0];
    }

    /// <summary>Readable text of a token id ("&lt;id&gt;" without a tokenizer).</summary>
    internal static Func<int, string> TokenTexts(Model model)
    {
        var tok = Common.Tokenizer(model);
        return id => Common.TokenText(tok, id);
    }

    internal static void TokenArray(this Utf8JsonWriter w, string name, int[] tokens, ModelTokenizer? tok)
    {
        w.Ints(name, tokens);
        if (tok == null) return;
        w.WriteStartArray(name.Replace("tokens", "token_texts"));
        foreach (var t in tokens) w.WriteStringValue(Common.TokenText(tok, t));
        w.WriteEndArray();
    }

    /// <summary>A grid as nested arrays; NaN (not computed) as null.</summary>
    internal static void WriteGrid(this Utf8JsonWriter w, string name, Grid g)
    {
        w.WritePropertyName(name);
        int i = 0;
        WriteAxis(w, g, 0, ref i);
    }

    static void WriteAxis(Utf8JsonWriter w, Grid g, int axis, ref int i)
    {
        w.WriteStartArray();
        for (int k = 0; k < g.Shape[axis]; k++)
        {
            if (axis == g.Rank - 1)
            {
                double v = g.Data[i++];
                if (double.IsNaN(v)) w.WriteNullValue(); else w.Number(v);
            }
            else WriteAxis(w, g, axis + 1, ref i);
        }
        w.WriteEndArray();
    }

    internal static void WriteDoubles(this Utf8JsonWriter w, string name, IEnumerable<double> xs)
    {
        w.WriteStartArray(name);
        foreach (var x in xs) w.Number(x);
        w.WriteEndArray();
    }

    internal static void WriteDouble(this Utf8JsonWriter w, string name, double v)
    {
        w.WritePropertyName(name);
        w.Number(v);
    }

    /// <summary>A [rows, cols] table with row and column labels, numbers in a fixed format.</summary>
    internal static void Table(TextWriter o, Grid g, string corner, Func<int, string> rowLabel, Func<int, string> colLabel, string format = "F4")
    {
        int rows = g.Shape[0], cols = g.Shape[1];
        var cells = new string[rows, cols];
        int width = 8;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                double v = g[r, c];
                cells[r, c] = double.IsNaN(v) ? "-" : v.ToString(format, CultureInfo.InvariantCulture);
                width = Math.Max(width, cells[r, c].Length);
            }
        for (int c = 0; c < cols; c++) width = Math.Max(width, Math.Min(12, Engine.Interp.Reports.SvgHeatmap.Label(colLabel(c)).Length));
        var heads = Enumerable.Range(0, cols).Select(c => Fit(colLabel(c), width)).ToArray();
        int left = Math.Max(corner.Length, Enumerable.Range(0, rows).Select(r => rowLabel(r).Length).DefaultIfEmpty(0).Max());
        var sb = new StringBuilder();
        sb.Append(corner.PadRight(left));
        foreach (var h in heads) sb.Append(' ').Append(h.PadLeft(width));
        o.WriteLine(sb.ToString());
        for (int r = 0; r < rows; r++)
        {
            sb.Clear().Append(rowLabel(r).PadRight(left));
            for (int c = 0; c < cols; c++) sb.Append(' ').Append(cells[r, c].PadLeft(width));
            o.WriteLine(sb.ToString());
        }
    }

    static string Fit(string s, int width)
    {
        s = Engine.Interp.Reports.SvgHeatmap.Label(s);
        return s.Length <= width ? s : s[..(width - 1)] + "…";
    }

    /// <summary>Position label for tables: "3:'text'".</summary>
    internal static Func<int, string> PositionLabel(int[] tokens, Func<int, string> text) => t => $"{t}:{text(tokens[t])}";

    /// <summary>Progress of a sweep on stderr (see <see cref="ProgressLine"/>): a callback (done, total).</summary>
    internal static Action<int, int> Progress(CliArgs a, string what)
    {
        var line = new ProgressLine(a.Err, what, "runs");
        return (done, total) => line.Report(done, total);
    }

    /// <summary>Parses "L:H" pairs ("L.H" too; "L:*" = every head of layer L; "all").</summary>
    internal static List<HeadRef> ParseHeads(string s, ModelConfig c, string name)
    {
        if (s.Trim() == "all") return HeadAblation.AllHeads(c);
        var list = new List<HeadRef>();
        foreach (var part in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (l, rest) = SplitPair(part, name, "L:H");
            if (rest == "*") { for (int h = 0; h < c.NHeads; h++) list.Add(new HeadRef(l, h)); continue; }
            if (!int.TryParse(rest, NumberStyles.Integer, CultureInfo.InvariantCulture, out int head))
                throw new UsageException($"{name}: '{part}' is not LAYER:HEAD (e.g. 1:3, or 1:* for every head of layer 1, or all)");
            list.Add(new HeadRef(l, head));
        }
        if (list.Count == 0) throw new UsageException($"{name}: no heads given");
        return list;
    }

    /// <summary>Parses "L:I" pairs.</summary>
    internal static List<NeuronRef> ParseNeurons(string s, string name)
    {
        var list = new List<NeuronRef>();
        foreach (var part in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (l, rest) = SplitPair(part, name, "L:I");
            if (!int.TryParse(rest, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i))
                throw new UsageException($"{name}: '{part}' is not LAYER:NEURON (e.g. 0:17)");
            list.Add(new NeuronRef(l, i));
        }
        if (list.Count == 0) throw new UsageException($"{name}: no neurons given");
        return list;
    }

    static (int Layer, string Tail) SplitPair(string part, string name, string form)
    {
        int sep = part.IndexOfAny([':', '.']);
        if (sep <= 0 || !int.TryParse(part.AsSpan(0, sep), NumberStyles.Integer, CultureInfo.InvariantCulture, out int l))
            throw new UsageException($"{name}: '{part}' is not {form}");
        return (l, part[(sep + 1)..]);
    }
}

/// <summary>
/// A progress report on stderr (never stdout). On a terminal (stderr is the console and not redirected) one line is
/// rewritten in place (at most 10 times a second) and ends with a newline when the work is done; otherwise plain lines
/// are written at most every <c>ENGINE_PROGRESS_SECONDS</c> seconds (default 5), the first one only after that time,
/// so quick runs print nothing.
/// </summary>
public sealed class ProgressLine
{
    readonly TextWriter _err;
    readonly string _what, _unit;
    readonly bool _terminal;
    readonly double _interval;
    readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    double _last;
    bool _open, _printed;
    long _first = -1;

    /// <param name="err">where the progress goes (stderr)</param>
    /// <param name="what">the sweep's name, first on the line</param>
    /// <param name="unit">what is counted ("runs", "windows")</param>
    /// <param name="terminal">null: whether err is the console's stderr and not redirected.</param>
    /// <param name="interval">seconds between plain lines; null: ENGINE_PROGRESS_SECONDS or 5.</param>
    public ProgressLine(TextWriter err, string what, string unit, bool? terminal = null, double? interval = null)
    {
        _err = err; _what = what; _unit = unit;
        _terminal = terminal ?? (ReferenceEquals(err, Console.Error) && !Console.IsErrorRedirected);
        _interval = interval ?? (double.TryParse(Environment.GetEnvironmentVariable("ENGINE_PROGRESS_SECONDS"), NumberStyles.Float, CultureInfo.InvariantCulture, out var s) && s >= 0 ? s : 5);
        _last = 0;
    }

    /// <summary>done of total units finished; <paramref name="extra"/> is appended (e.g. a rate).</summary>
    public void Report(long done, long total, string? extra = null)
    {
        if (_first < 0) _first = done;
        double now = _clock.Elapsed.TotalSeconds;
        bool finished = done >= total;
        if (_terminal)
        {
            if (!finished && now - _last < 0.1) return;
            _last = now;
            _err.Write("\r" + Text(done, total, now, extra) + "\u001b[K");
            _open = true;
            if (finished) { _err.WriteLine(); _open = false; }
            _err.Flush();
        }
        else
        {
            if (now - _last < _interval && !(finished && _printed)) return;
            _last = now;
            _printed = true;
            _err.WriteLine(Text(done, total, now, extra));
        }
    }

    /// <summary>Ends an open terminal line (e.g. when the work stops early).</summary>
    public void Close()
    {
        if (_open) { _err.WriteLine(); _open = false; }
    }

    string Text(long done, long total, double seconds, string? extra)
    {
        string pct = total > 0 ? (100.0 * done / total).ToString("F0", CultureInfo.InvariantCulture) + "%" : "";
        string eta = "";
        if (done > _first && done < total && seconds > 0)
        {
            double left = (total - done) * seconds / (done - _first);
            eta = left >= 60 ? $", about {left / 60:F0} min left" : $", about {left:F0} s left";
        }
        return string.Create(CultureInfo.InvariantCulture, $"{_what}: {done}/{total} {_unit} {pct} ({seconds:F0} s{eta}){(extra != null ? " " + extra : "")}");
    }
}
