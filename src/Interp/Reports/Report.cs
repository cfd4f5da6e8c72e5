using System.Globalization;
using System.Text;
using System.Text.Json;
using Engine.Loader;

namespace Engine.Interp.Reports;

/// <summary>
/// A table in long format (one row per cell, named columns), written as <c>NAME.csv</c> (RFC 4180: comma-separated,
/// quoted where needed, numbers in invariant culture with round-trip precision, NaN/null as an empty field) and shown
/// in the HTML report.
/// </summary>
public sealed class CsvTable(string name, params string[] columns)
{
    /// <summary>File stem: the table is written to NAME.csv.</summary>
    public string Name { get; } = name;
    public IReadOnlyList<string> Columns { get; } = columns;
    public List<object?[]> Rows { get; } = [];
    /// <summary>One line shown above the table in the HTML report.</summary>
    public string Caption { get; init; } = "";

    public CsvTable Add(params object?[] row)
    {
        if (row.Length != Columns.Count) throw new ArgumentException($"table {Name}: {row.Length} values for {Columns.Count} columns");
        Rows.Add(row);
        return this;
    }

    /// <summary>A value as CSV text: doubles/floats round-trip ("R"), NaN and null empty, booleans true/false.</summary>
    public static string Format(object? v) => v switch
    {
        null => "",
        double d => double.IsNaN(d) ? "" : d.ToString("R", CultureInfo.InvariantCulture),
        float f => float.IsNaN(f) ? "" : f.ToString("R", CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        IFormattable x => x.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

    /// <summary>A value for reading: doubles with 6 significant digits.</summary>
    public static string Display(object? v) => v switch
    {
        double d => double.IsNaN(d) ? "" : d.ToString("G6", CultureInfo.InvariantCulture),
        float f => float.IsNaN(f) ? "" : ((double)f).ToString("G6", CultureInfo.InvariantCulture),
        _ => Format(v),
    };

    static string Quote(string s) =>
        s.IndexOfAny([',', '"', '\n', '\r']) >= 0 || (s.Length > 0 && (char.IsWhiteSpace(s[0]) || char.IsWhiteSpace(s[^1])))
            ? "\"" + s.Replace("\"", "\"\"") + "\"" : s;

    public string ToCsv()
    {
        var sb = new StringBuilder();
        sb.Append(string.Join(",", Columns.Select(Quote))).Append('\n');
        foreach (var row in Rows) sb.Append(string.Join(",", row.Select(v => Quote(Format(v))))).Append('\n');
        return sb.ToString();
    }
}

/// <summary>A section of the HTML report: a heading and trusted HTML (build it with <see cref="Html.Esc"/>).</summary>
public sealed record HtmlSection(string Heading, string Body);

/// <summary>Everything one analysis writes: its JSON document, tables, figures and extra HTML.</summary>
public sealed class ReportContent
{
    /// <summary>The command ("lens", "trace", ...).</summary>
    public required string Command { get; init; }
    public required string Title { get; init; }
    /// <summary>The command line that produced it, shown in the report.</summary>
    public string? CommandLine { get; init; }
    /// <summary>The JSON document (written as result.json; model, model_type and backend are read from it).</summary>
    public required string JsonText { get; init; }
    /// <summary>Plain-text lines shown under the title (the headline numbers).</summary>
    public IReadOnlyList<string> Summary { get; init; } = [];
    public IReadOnlyList<CsvTable> Tables { get; init; } = [];
    /// <summary>Figures: each is written as NAME.png and NAME.svg and inlined in the HTML.</summary>
    public IReadOnlyList<(string Name, Figure Figure)> Figures { get; init; } = [];
    /// <summary>Extra sections placed after the figures (e.g. highlighted contexts).</summary>
    public IReadOnlyList<HtmlSection> Sections { get; init; } = [];
    /// <summary>How many rows of each table the HTML shows (the CSV has all of them).</summary>
    public int HtmlRowLimit { get; init; } = 200;
}

/// <summary>
/// Writes a report folder: <c>result.json</c>, one CSV per table, each figure as PNG and SVG, and a self-contained
/// <c>report.html</c> (inline CSS and SVG, relative links to the other files only: nothing is fetched to view it).
/// Each file is written atomically; existing files are refused unless <c>force</c>.
/// </summary>
public static class ReportWriter
{
    public const string JsonFile = "result.json";
    public const string HtmlFile = "report.html";

    /// <summary>The names of the files <see cref="Write"/> creates, in order.</summary>
    public static IReadOnlyList<string> FileNames(ReportContent r)
    {
        var names = new List<string> { JsonFile };
        names.AddRange(r.Tables.Select(t => t.Name + ".csv"));
        foreach (var (n, _) in r.Figures) { names.Add(n + ".png"); names.Add(n + ".svg"); }
        names.Add(HtmlFile);
        var dup = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"report: two outputs named {dup.Key}");
        return names;
    }

    /// <summary>Creates the folder if needed and writes every file; returns their full paths.</summary>
    public static IReadOnlyList<string> Write(string dir, ReportContent r, bool force)
    {
        var names = FileNames(r);
        Directory.CreateDirectory(dir);
        if (!force)
            foreach (var n in names)
                if (File.Exists(Path.Combine(dir, n)))
                    throw new UsageException($"--out: '{Path.Combine(dir, n)}' exists; pass --force to overwrite it");
        var written = new List<string>();
        void Text(string name, string text) { var p = Path.Combine(dir, name); AtomicFile.WriteText(p, text); written.Add(p); }
        void Bytes(string name, byte[] data) { var p = Path.Combine(dir, name); AtomicFile.Write(p, s => s.Write(data)); written.Add(p); }
        Text(JsonFile, r.JsonText);
        foreach (var t in r.Tables) Text(t.Name + ".csv", t.ToCsv());
        var svgs = new List<(string Name, string Svg)>();
        foreach (var (n, f) in r.Figures)
        {
            Bytes(n + ".png", f.ToPng());
            string svg = f.ToSvg();
            svgs.Add((n, svg));
            Text(n + ".svg", svg);
        }
        Text(HtmlFile, Html.Render(r, svgs));
        return written;
    }
}

/// <summary>The self-contained HTML report.</summary>
public static class Html
{
    /// <summary>HTML text/attribute escaping.</summary>
    public static string Esc(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char ch in s)
            switch (ch)
            {
                case '&': sb.Append("&amp;"); break;
                case '<': sb.Append("&lt;"); break;
                case '>': sb.Append("&gt;"); break;
                case '"': sb.Append("&quot;"); break;
                case '\'': sb.Append("&#39;"); break;
                default: sb.Append(ch); break;
            }
        return sb.ToString();
    }

    const string Css = """
        body { font-family: "DejaVu Sans", Verdana, Arial, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
        h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
        pre.cmd { background: #f4f4f4; padding: 8px; white-space: pre-wrap; word-break: break-all; }
        table { border-collapse: collapse; font-size: 12px; } td, th { border: 1px solid #ddd; padding: 2px 6px; }
        th { background: #f0f0f0; position: sticky; top: 0; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
        table.meta td:first-child { font-weight: bold; } .figure { overflow-x: auto; margin: 8px 0; }
        .figure svg { max-width: 100%; height: auto; } .note { color: #666; font-size: 12px; }
        .ctx { font-family: "DejaVu Sans Mono", monospace; font-size: 13px; line-height: 1.9; margin: 4px 0; }
        .ctx span.t { white-space: pre; border-radius: 2px; padding: 1px 0; } .ctx span.max { outline: 2px solid #000; }
        """;

    /// <summary>The report page; <paramref name="svgs"/> are the figures' SVG texts, inlined.</summary>
    public static string Render(ReportContent r, IReadOnlyList<(string Name, string Svg)> svgs)
    {
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        sb.Append("<title>").Append(Esc(r.Title)).Append("</title>\n<style>\n").Append(Css).Append("\n</style>\n</head>\n<body>\n");
        sb.Append("<h1>").Append(Esc(r.Title)).Append("</h1>\n");
        if (r.CommandLine != null) sb.Append("<pre class=\"cmd\">").Append(Esc(r.CommandLine)).Append("</pre>\n");
        sb.Append("<table class=\"meta\">\n");
        foreach (var (k, v) in Meta(r.JsonText)) sb.Append("<tr><td>").Append(Esc(k)).Append("</td><td>").Append(Esc(v)).Append("</td></tr>\n");
        sb.Append("</table>\n");
        if (r.Summary.Count > 0)
        {
            sb.Append("<ul>\n");
            foreach (var line in r.Summary) sb.Append("<li>").Append(Esc(line)).Append("</li>\n");
            sb.Append("</ul>\n");
        }
        foreach (var (name, svg) in svgs)
        {
            sb.Append("<div class=\"figure\">\n").Append(InlineSvg(svg)).Append("</div>\n");
            sb.Append(CultureInfo.InvariantCulture, $"<p class=\"note\">Picture: <a href=\"{Esc(name)}.png\">{Esc(name)}.png</a>, <a href=\"{Esc(name)}.svg\">{Esc(name)}.svg</a> (hover a cell for its value).</p>\n");
        }
        foreach (var s in r.Sections)
            sb.Append("<h2>").Append(Esc(s.Heading)).Append("</h2>\n").Append(s.Body).Append('\n');
        foreach (var t in r.Tables)
        {
            sb.Append("<h2>").Append(Esc(t.Name)).Append("</h2>\n");
            if (t.Caption.Length > 0) sb.Append("<p>").Append(Esc(t.Caption)).Append("</p>\n");
            sb.Append(CultureInfo.InvariantCulture, $"<p class=\"note\">{t.Rows.Count} rows; all of them in <a href=\"{Esc(t.Name)}.csv\">{Esc(t.Name)}.csv</a>");
            if (t.Rows.Count > r.HtmlRowLimit) sb.Append(CultureInfo.InvariantCulture, $" (the first {r.HtmlRowLimit} are shown here)");
            sb.Append(".</p>\n<table>\n<tr>");
            foreach (var c in t.Columns) sb.Append("<th>").Append(Esc(c)).Append("</th>");
            sb.Append("</tr>\n");
            foreach (var row in t.Rows.Take(r.HtmlRowLimit))
            {
                sb.Append("<tr>");
                foreach (var v in row)
                    sb.Append(v is double or float or int or long ? "<td class=\"n\">" : "<td>").Append(Esc(CsvTable.Display(v))).Append("</td>");
                sb.Append("</tr>\n");
            }
            sb.Append("</table>\n");
        }
        sb.Append(CultureInfo.InvariantCulture, $"<h2>Data</h2>\n<p>The full result: <a href=\"{ReportWriter.JsonFile}\">{ReportWriter.JsonFile}</a> (the document <code>--json</code> prints).</p>\n");
        sb.Append("</body>\n</html>\n");
        return sb.ToString();
    }

    /// <summary>SVG for inlining in HTML5 (the namespace declaration is implied there).</summary>
    static string InlineSvg(string svg) => svg.Replace(" xmlns=\"http://www.w3.org/2000/svg\"", "");

    static IEnumerable<(string, string)> Meta(string json)
    {
        var list = new List<(string, string)>();
        try
        {
            using var doc = JsonDocument.Parse(json);
            foreach (var (key, label) in new[] { ("command", "command"), ("model", "model"), ("model_type", "model type"), ("backend", "backend") })
                if (doc.RootElement.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String) list.Add((label, v.GetString()!));
        }
        catch (JsonException) { }
        list.Add(("written", DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'", CultureInfo.InvariantCulture)));
        return list;
    }

    /// <summary>Background colour of an activation on a white → red (positive) / white → blue (negative) scale.</summary>
    public static string ActivationColor(double v, double maxAbs) =>
        !double.IsFinite(v) || maxAbs <= 0 ? "#ffffff" : SvgHeatmap.Color(ColorMap.Diverging, v, -maxAbs, maxAbs);
}
