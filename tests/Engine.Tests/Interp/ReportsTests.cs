using System.Globalization;
using System.Text.Json;
using System.Xml.Linq;
using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Runtime;
using Engine.Tests.Support;
using SkiaSharp;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>Report folders (--out DIR): JSON, CSV, PNG, SVG and HTML, checked against the library's numbers.</summary>
public class ReportsTests
{
    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Engine.Cli.Program.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>A valid PNG of plausible size with some non-white pixels.</summary>
    internal static void AssertPng(string path)
    {
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 2000, $"{path}: {bytes.Length} bytes");
        Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
        Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
        int w = (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19];
        int h = (bytes[20] << 24) | (bytes[21] << 16) | (bytes[22] << 8) | bytes[23];
        Assert.InRange(w, 100, 20000);
        Assert.InRange(h, 60, 20000);
        using var bmp = SKBitmap.Decode(bytes);
        Assert.Equal(w, bmp.Width);
        int coloured = 0, dark = 0;
        for (int y = 0; y < bmp.Height; y += 3)
            for (int x = 0; x < bmp.Width; x += 3)
            {
                var c = bmp.GetPixel(x, y);
                if (Math.Abs(c.Red - c.Green) > 30 || Math.Abs(c.Green - c.Blue) > 30) coloured++;
                if (c.Red < 60 && c.Green < 60 && c.Blue < 60) dark++;
            }
        Assert.True(coloured > 50, $"{path}: no colour");   // heatmap cells
        Assert.True(dark > 20, $"{path}: no text");         // labels
    }

    /// <summary>A minimal RFC 4180 reader: header + rows of fields.</summary>
    public static List<Dictionary<string, string>> ReadCsv(string path)
    {
        var text = File.ReadAllText(path);
        var rows = new List<List<string>>();
        var row = new List<string>();
        var field = new System.Text.StringBuilder();
        bool quoted = false;
        for (int i = 0; i < text.Length; i++)
        {
            char ch = text[i];
            if (quoted)
            {
                if (ch == '"' && i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i++; }
                else if (ch == '"') quoted = false;
                else field.Append(ch);
            }
            else if (ch == '"') quoted = true;
            else if (ch == ',') { row.Add(field.ToString()); field.Clear(); }
            else if (ch == '\n') { row.Add(field.ToString()); field.Clear(); rows.Add(row); row = []; }
            else field.Append(ch);
        }
        var header = rows[0];
        return rows.Skip(1).Select(r =>
        {
            Assert.Equal(header.Count, r.Count);
            return header.Zip(r).ToDictionary(p => p.First, p => p.Second);
        }).ToList();
    }

    static double D(string s) => s.Length == 0 ? double.NaN : double.Parse(s, CultureInfo.InvariantCulture);
    static int I(string s) => int.Parse(s, CultureInfo.InvariantCulture);

    /// <summary>The HTML is self-contained: inline SVG, no external URL, the key numbers present.</summary>
    public static string AssertHtml(string dir, params string[] mustContain)
    {
        string html = File.ReadAllText(Path.Combine(dir, "report.html"));
        Assert.StartsWith("<!DOCTYPE html>", html);
        Assert.Contains("<svg", html);
        Assert.DoesNotContain("http://", html);
        Assert.DoesNotContain("https://", html);
        Assert.DoesNotContain("src=\"//", html);
        Assert.DoesNotContain("<script", html);
        Assert.Contains("href=\"result.json\"", html);
        foreach (var s in mustContain) Assert.Contains(s, html);
        return html;
    }

    static string Report(string dir, params string[] args)
    {
        var (code, o, e) = Cli([.. args, "--out", dir, "--json"]);
        Assert.True(code == 0, $"{string.Join(' ', args)}: {e}");
        // --json on stdout is the very document written as result.json
        Assert.Equal(o, File.ReadAllText(Path.Combine(dir, "result.json")));
        using var _ = JsonDocument.Parse(o);
        XDocument.Parse(File.ReadAllText(Path.Combine(dir, "figure.svg")));
        AssertPng(Path.Combine(dir, "figure.png"));
        return o;
    }

    [Fact]
    public void PatchReportHoldsTheLibrarysNumbers()
    {
        using var fx = new Fixture("gpt2");
        using var tmp = new TempDir();
        int[] clean = [1, 45, 46, 47, 9], corrupt = [1, 88, 89, 90, 9];
        string dir = tmp.File("patch");
        string json = Report(dir, "patch", "--model", fx.Folder, "--clean-tokens", "1,45,46,47,9", "--corrupt-tokens", "1,88,89,90,9", "--act", "resid_pre");
        // the same as --json alone
        var (_, plain, _) = Cli("patch", "--model", fx.Folder, "--clean-tokens", "1,45,46,47,9", "--corrupt-tokens", "1,88,89,90,9", "--act", "resid_pre", "--json");
        Assert.Equal(plain, json);

        using var model = Model.Load(fx.Folder);
        using var s = new Session(model, new SessionOptions { Capacity = 5, AllLogits = false });
        var r = ActivationPatching.Run(s, clean, corrupt, null, null, new PatchOptions());
        var rows = ReadCsv(Path.Combine(dir, "patched.csv"));
        Assert.Equal(r.Patched.Data.Length, rows.Count);
        foreach (var row in rows)
        {
            int l = I(row["layer"]), t = I(row["position"]);
            Assert.Equal(r.Patched[l, t], D(row["patched"]));          // round-trip precision: exact
            Assert.Equal(r.Normalized[l, t], D(row["normalized"]));
            Assert.Equal(corrupt[t], I(row["token"]));
        }
        AssertHtml(dir, "patched.csv", r.Patched[0, 1].ToString("G6", CultureInfo.InvariantCulture), "engine patch --model");

        // a second run refuses to overwrite the report, --force overwrites it
        var (code, _, e) = Cli("patch", "--model", fx.Folder, "--clean-tokens", "1,45,46,47,9", "--corrupt-tokens", "1,88,89,90,9", "--out", dir);
        Assert.Equal(2, code);
        Assert.Contains("--out", e);
        Assert.Contains("--force", e);
        (code, _, e) = Cli("patch", "--model", fx.Folder, "--clean-tokens", "1,45,46,47,9", "--corrupt-tokens", "1,88,89,90,9", "--out", dir, "--force");
        Assert.True(code == 0, e);
    }

    [Fact]
    public void LensTraceAblateDlaReportsHoldTheLibrarysNumbers()
    {
        using var fx = new Fixture("gpt2");
        using var tmp = new TempDir();
        using var model = Model.Load(fx.Folder);
        int[] tokens = [1, 45, 46, 47, 200, 301, 5, 77];
        string ids = string.Join(",", tokens);
        using var s = new Session(model, new SessionOptions { Capacity = tokens.Length, AllLogits = false });

        string lensDir = tmp.File("lens");
        Report(lensDir, "lens", "--model", fx.Folder, "--tokens", ids, "--top", "3", "--target", "491");
        var lens = LogitLens.Run(s, tokens, 3, 491);
        var lrows = ReadCsv(Path.Combine(lensDir, "lens.csv"));
        Assert.Equal(model.Config.NLayers * tokens.Length * 3, lrows.Count);
        foreach (var row in lrows)
        {
            int l = I(row["layer"]), t = I(row["position"]), k = I(row["rank"]);
            Assert.Equal(lens.TopIds[l][t][k], I(row["top_id"]));
            Assert.Equal(lens.TopProbs[l][t][k], D(row["prob"]));
        }
        var trows = ReadCsv(Path.Combine(lensDir, "target.csv"));
        Assert.All(trows, row => Assert.Equal(lens.TargetProb![I(row["layer"]), I(row["position"])], D(row["target_prob"])));
        AssertHtml(lensDir, "lens.csv", "target.csv");

        string traceDir = tmp.File("trace");
        Report(traceDir, "trace", "--model", fx.Folder, "--tokens", ids, "--subject-positions", "1,2,3", "--window", "3", "--samples", "2");
        var noise = TraceNoise.Generate(model, 3, [45, 46, 47], samples: 2);
        var tr = CausalTrace.Run(s, tokens, [1, 2, 3], noise, null, new TraceOptions { Window = 3 });
        var crow = ReadCsv(Path.Combine(traceDir, "trace.csv"));
        Assert.Equal(3 * model.Config.NLayers * tokens.Length, crow.Count);
        foreach (var row in crow)
        {
            var g = row["kind"] switch { "resid" => tr.Resid!, "mlp" => tr.Mlp!, _ => tr.Attn! };
            int l = I(row["layer"]), t = I(row["position"]);
            Assert.Equal(g[l, t], D(row["prob"]));
            Assert.Equal(g[l, t] - tr.CorruptProb, D(row["indirect_effect"]));
            Assert.Equal(t is >= 1 and <= 3, row["subject"] == "true");
        }
        AssertHtml(traceDir, "Restored MLP", tr.CleanProb.ToString("G6", CultureInfo.InvariantCulture));

        string ablDir = tmp.File("ablate");
        Report(ablDir, "ablate", "--model", fx.Folder, "--tokens", ids, "--heads", "all");
        var ab = HeadAblation.Run(s, tokens);
        var arows = ReadCsv(Path.Combine(ablDir, "ablation.csv"));
        Assert.Equal(model.Config.NLayers * model.Config.NHeads, arows.Count);
        foreach (var row in arows) Assert.Equal(ab.Delta![I(row["layer"]), I(row["head"])], D(row["delta"]));

        string dlaDir = tmp.File("dla");
        Report(dlaDir, "dla", "--model", fx.Folder, "--tokens", ids);
        var dla = DirectLogitAttribution.Run(s, tokens);
        var drows = ReadCsv(Path.Combine(dlaDir, "dla.csv"));
        Assert.Equal(dla.Logit, drows.Sum(r => D(r["logit"])), 1e-4);   // the parts sum to the logit
        foreach (var row in drows.Where(r => r["component"] == "head"))
            Assert.Equal(dla.Heads[I(row["layer"]), I(row["head"])], D(row["logit"]));
        AssertHtml(dlaDir, "dla.csv");
    }

    [Fact]
    public void CsvQuotingRoundTrips()
    {
        using var tmp = new TempDir();
        var t = new CsvTable("t", "a", "b", "c");
        t.Add("x,y", "say \"hi\"", 0.1 + 0.2);
        t.Add(" lead", "line\nbreak", double.NaN);
        t.Add(null, true, 1e-300);
        File.WriteAllText(tmp.File("t.csv"), t.ToCsv());
        var rows = ReadCsv(tmp.File("t.csv"));
        Assert.Equal("x,y", rows[0]["a"]);
        Assert.Equal("say \"hi\"", rows[0]["b"]);
        Assert.Equal(0.1 + 0.2, D(rows[0]["c"]));
        Assert.Equal(" lead", rows[1]["a"]);
        Assert.Equal("line\nbreak", rows[1]["b"]);
        Assert.Equal("", rows[1]["c"]);
        Assert.Equal("true", rows[2]["b"]);
        Assert.Equal(1e-300, D(rows[2]["c"]));
    }

    [Fact]
    public void PngAndSvgShareTheLayout()
    {
        var h = new Heatmap
        {
            Title = "t", Values = [[1, -1], [0.5, double.NaN]], RowLabels = ["a", "b"], ColLabels = ["c", "d"],
            CellText = [["x", "y"], ["z", null]],
        };
        var f = new Figure("figure", h, h);
        var svg = XDocument.Parse(f.ToSvg()).Root!;
        double w = double.Parse(svg.Attribute("width")!.Value, CultureInfo.InvariantCulture);
        double hh = double.Parse(svg.Attribute("height")!.Value, CultureInfo.InvariantCulture);
        using var bmp = SKBitmap.Decode(f.ToPng(2));
        Assert.Equal((int)Math.Ceiling(w * 2), bmp.Width);
        Assert.Equal((int)Math.Ceiling(hh * 2), bmp.Height);
        Assert.Equal(f.ToPng(2), f.ToPng(2));     // deterministic
        // red cell (value 1) where the SVG puts it
        var cell = svg.Descendants().First(e => e.Name.LocalName == "rect" && (string?)e.Attribute("fill") == "#b2182b");
        double cx = double.Parse(cell.Attribute("x")!.Value, CultureInfo.InvariantCulture) + 3, cy = double.Parse(cell.Attribute("y")!.Value, CultureInfo.InvariantCulture) + 3;
        var px = bmp.GetPixel((int)(cx * 2), (int)(cy * 2));
        Assert.Equal((byte)0xb2, px.Red);
        Assert.Equal((byte)0x18, px.Green);
    }

    [Fact]
    public void ProgressGoesToStderrOnly()
    {
        var err = new StringWriter();
        var plain = new Engine.Cli.Commands.ProgressLine(err, "sweep", "runs", terminal: false, interval: 0);
        for (int i = 1; i <= 3; i++) plain.Report(i, 3);
        var lines = err.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.StartsWith("sweep: 3/3 runs 100%", lines[2]);
        Assert.DoesNotContain("\r", err.ToString());

        var term = new StringWriter();
        var line = new Engine.Cli.Commands.ProgressLine(term, "sweep", "runs", terminal: true);
        line.Report(3, 3);
        Assert.StartsWith("\rsweep: 3/3 runs 100%", term.ToString());
        Assert.EndsWith("\n", term.ToString());

        var quiet = new StringWriter();
        var slow = new Engine.Cli.Commands.ProgressLine(quiet, "sweep", "runs", terminal: false, interval: 3600);
        slow.Report(1, 2); slow.Report(2, 2);
        Assert.Equal("", quiet.ToString());          // quick runs print nothing when not a terminal
    }
}
