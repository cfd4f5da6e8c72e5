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
        [InterpLensCommand.Spec, InterpPatchCommand.Spec, InterpAblateCommand.Spec, InterpTraceCommand.Spec, InterpDlaCommand.Spec];

    /// <summary>Output options every interp command has (plus --json, --force, --backend).</summary>
    internal static OptionSpec[] OutputOptions =>
    [
        new("--out", "also write the JSON document to this file (atomically; refuses to overwrite without --force)", ValueName: "FILE.json"),
        new("--out-svg", "write the method's picture (SVG heatmap) to this file", ValueName: "FILE.svg"),
        new("--plot", "same as --out-svg", ValueName: "FILE.svg"),
        Common.ForceOption, Common.BackendOption, Common.JsonOption,
    ];

    /// <summary>Output files resolved (and checked) before any computation.</summary>
    internal sealed record Outputs(string? Json, string? Svg);

    internal static Outputs ResolveOutputs(CliArgs a)
    {
        if (a.Has("--out-svg") && a.Has("--plot")) throw new UsageException("--plot: give either --out-svg or --plot, not both");
        string? json = a.Has("--out") ? Common.OutputPath(a, "--out") : null;
        string? svg = a.Has("--out-svg") ? Common.OutputPath(a, "--out-svg") : a.Has("--plot") ? Common.OutputPath(a, "--plot") : null;
        if (json != null && svg != null && json == svg) throw new UsageException("--out-svg: same file as --out");
        return new Outputs(json, svg);
    }

    /// <summary>
    /// Writes the results: JSON to stdout with --json (else the readable table), the JSON file for --out, the SVG for
    /// --out-svg/--plot. Returns 0.
    /// </summary>
    internal static int Emit(CliArgs a, Outputs outs, Action<Utf8JsonWriter> json, Action<TextWriter> table, Func<string> svg)
    {
        if (outs.Svg != null) AtomicFile.WriteText(outs.Svg, svg());
        if (outs.Json != null)
        {
            var sw = new StringWriter();
            Common.WriteJson(sw, json);
            AtomicFile.WriteText(outs.Json, sw.ToString());
        }
        if (a.Flag("--json")) Common.WriteJson(a.Out, json);
        else
        {
            table(a.Out);
            if (outs.Json != null) a.Out.WriteLine($"JSON written to {outs.Json}");
            if (outs.Svg != null) a.Out.WriteLine($"picture written to {outs.Svg}");
        }
        return 0;
    }

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

    /// <summary>Prints progress on stderr at most every 2 s (nothing for quick runs).</summary>
    internal static Action<int, int> Progress(CliArgs a, string what)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        long last = 0;
        return (done, total) =>
        {
            if (sw.ElapsedMilliseconds - last < 2000 && done != total) return;
            if (sw.ElapsedMilliseconds < 2000) return;
            last = sw.ElapsedMilliseconds;
            a.Err.WriteLine($"{what}: {done}/{total} runs ({sw.Elapsed.TotalSeconds:F0} s)");
        };
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
