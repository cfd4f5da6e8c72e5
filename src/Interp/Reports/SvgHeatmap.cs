using System.Globalization;
using System.Text;

namespace Engine.Interp.Reports;

/// <summary>
/// Colour maps. Diverging: blue (negative) – white (0) – red (positive), symmetric around 0. The sequential ones go
/// from white (low) to a saturated hue (high), as matplotlib's Purples/Greens/Reds used by ROME's figures; Viridis
/// for general probabilities.
/// </summary>
public enum ColorMap { Diverging, Viridis, Purples, Greens, Reds, Blues }

/// <summary>One heatmap panel: values [rows][cols], labels, colour map, optional per-cell text and marked rows/columns.</summary>
public sealed class Heatmap
{
    public required string Title { get; init; }
    /// <summary>[rows][cols]; NaN cells are drawn grey and left out of the colour range.</summary>
    public required double[][] Values { get; init; }
    public required string[] RowLabels { get; init; }
    public required string[] ColLabels { get; init; }
    public string RowAxis { get; init; } = "";
    public string ColAxis { get; init; } = "";
    public ColorMap Map { get; init; } = ColorMap.Diverging;
    /// <summary>Colour range; null = from the data (diverging: ±max|v|; sequential: [min, max]).</summary>
    public double? Min { get; init; }
    public double? Max { get; init; }
    /// <summary>Text drawn in each cell (e.g. the logit lens's top token), or null.</summary>
    public string?[][]? CellText { get; init; }
    /// <summary>Rows/columns to mark (bold label with a '*'): e.g. the subject tokens of a causal trace.</summary>
    public IReadOnlySet<int>? MarkedRows { get; init; }
    public IReadOnlySet<int>? MarkedCols { get; init; }
    public string ColorBarLabel { get; init; } = "";
    /// <summary>Diverging map: the value drawn white (default 0), e.g. the unpatched run's metric.</summary>
    public double Center { get; init; }
    /// <summary>Fill of NaN cells (not computed / no token there).</summary>
    public string NanColor { get; init; } = "#cccccc";
    /// <summary>Cell width bounds in pixels (the width follows the longest cell text within them).</summary>
    public double MinCellWidth { get; init; } = 24;
    public double MaxCellWidth { get; init; } = 70;
}

/// <summary>
/// Heatmap figures (several panels side by side, each with title, axis labels, tick labels, a colour bar and optional
/// cell text), laid out once and drawn on an <see cref="ICanvas"/>: SVG text (<see cref="Render(Heatmap[])"/>) or PNG
/// (<see cref="RenderPng(string?, double, Heatmap[])"/>). Text is measured with the embedded DejaVu Sans. Deterministic
/// output: same input, same bytes.
/// </summary>
public static class SvgHeatmap
{
    const int Pad = 16;
    const double Cos45 = 0.7071067811865476;

    public static string Render(params Heatmap[] panels) => Render(null, panels);

    /// <summary>Renders panels left to right under an optional figure title, as SVG text.</summary>
    public static string Render(string? figureTitle, params Heatmap[] panels)
    {
        var (w, h, draw) = Plan(figureTitle, panels);
        var c = new SvgCanvas(w, h);
        draw(c);
        return c.Finish();
    }

    /// <summary>The same picture as PNG bytes, drawn at <paramref name="scale"/> pixels per SVG unit.</summary>
    public static byte[] RenderPng(string? figureTitle, double scale, params Heatmap[] panels)
    {
        var (w, h, draw) = Plan(figureTitle, panels);
        // keep very large figures (e.g. per-position head patching of a big model) below ~60 megapixels
        double maxScale = Math.Sqrt(60e6 / Math.Max(1, w * h));
        using var c = new PngCanvas(w, h, Math.Max(0.25, Math.Min(scale, maxScale)));
        draw(c);
        return c.Finish();
    }

    /// <summary>Figure size and the drawing of it.</summary>
    internal static (double Width, double Height, Action<ICanvas> Draw) Plan(string? figureTitle, Heatmap[] panels)
    {
        if (panels.Length == 0) throw new ArgumentException("no panels");
        var layouts = panels.Select(Layout).ToArray();
        double panelsWidth = Pad + layouts.Sum(l => l.Width + Pad);
        double width = Math.Ceiling(Math.Max(panelsWidth, figureTitle == null ? 0 : TextMetrics.Width(figureTitle, 14, true) + 2 * Pad));
        double top = figureTitle != null ? 30 : 0;
        double height = Math.Ceiling(top + layouts.Max(l => l.Height) + Pad);
        return (width, height, canvas =>
        {
            if (figureTitle != null) canvas.Text(width / 2, 20, figureTitle, 14, TextAnchor.Middle, bold: true);
            double x = Pad + (width - panelsWidth) / 2;
            for (int i = 0; i < panels.Length; i++)
            {
                Draw(canvas, panels[i], layouts[i], x, top);
                x += layouts[i].Width + Pad;
            }
        });
    }

    sealed record PanelLayout(double CellW, double CellH, double Left, double Top, double GridW, double GridH, double Width, double Height, double Lo, double Hi);

    static string RowLabel(Heatmap h, int r) => Label(h.RowLabels[r]) + (h.MarkedRows?.Contains(r) == true ? "*" : "");
    static string ColLabel(Heatmap h, int c) => Label(h.ColLabels[c]) + (h.MarkedCols?.Contains(c) == true ? "*" : "");

    static PanelLayout Layout(Heatmap h)
    {
        int rows = h.Values.Length, cols = rows == 0 ? 0 : h.Values[0].Length;
        if (h.RowLabels.Length != rows || h.ColLabels.Length != cols)
            throw new ArgumentException($"heatmap '{h.Title}': {rows}x{cols} values but {h.RowLabels.Length} row and {h.ColLabels.Length} column labels");
        foreach (var row in h.Values)
            if (row.Length != cols) throw new ArgumentException($"heatmap '{h.Title}': rows of different lengths");
        double maxCell = h.CellText?.SelectMany(r => r).Max(s => s == null ? 0 : TextMetrics.Width(Label(s), 10)) ?? 0;
        double cellW = Math.Max(h.MinCellWidth, Math.Min(h.MaxCellWidth, Math.Ceiling(maxCell) + 8));
        double cellH = 22;
        double rowLabelW = Enumerable.Range(0, rows).Select(r => TextMetrics.Width(RowLabel(h, r), 11, h.MarkedRows?.Contains(r) == true)).DefaultIfEmpty(0).Max() + 8;
        var colW = Enumerable.Range(0, cols).Select(c => TextMetrics.Width(ColLabel(h, c), 11, h.MarkedCols?.Contains(c) == true)).ToArray();
        double colLabelH = colW.DefaultIfEmpty(0).Max() * Cos45 + 18;
        double left = (h.RowAxis.Length > 0 ? 18 : 0) + rowLabelW;
        // rotated column labels run down to the left: keep the first ones inside the panel
        for (int c = 0; c < cols; c++) left = Math.Max(left, colW[c] * Cos45 - c * cellW - cellW / 2 + 4);
        double top = 34;
        double gridW = cols * cellW, gridH = rows * cellH;
        var (lo, hi) = Range(h);
        double tickW = new[] { lo, hi, (lo + hi) / 2 }.Max(v => TextMetrics.Width(Num(v), 9));
        double colorBar = 16 + Math.Max(15 + tickW + 4, TextMetrics.Width(h.ColorBarLabel, 9) + 4);
        double width = Math.Ceiling(Math.Max(left + gridW + colorBar, Math.Max(TextMetrics.Width(h.Title, 13, true) + 10, left + TextMetrics.Width(h.ColAxis, 11))));
        double height = top + Math.Max(gridH + colLabelH + (h.ColAxis.Length > 0 ? 18 : 0), Math.Max(gridH, 60) + 12);
        return new PanelLayout(cellW, cellH, left, top, gridW, gridH, width, height, lo, hi);
    }

    static (double Lo, double Hi) Range(Heatmap h)
    {
        var finite = h.Values.SelectMany(r => r).Where(double.IsFinite).ToArray();
        if (h.Map == ColorMap.Diverging)
        {
            double m = finite.Length == 0 ? 1 : finite.Max(v => Math.Abs(v - h.Center));
            if (m == 0) m = h.Center == 0 ? 1 : Math.Abs(h.Center) * 1e-6 + 1e-12;
            return (h.Min ?? h.Center - m, h.Max ?? h.Center + m);
        }
        double lo = h.Min ?? (finite.Length == 0 ? 0 : finite.Min());
        double hi = h.Max ?? (finite.Length == 0 ? 1 : finite.Max());
        if (hi <= lo) hi = lo + 1e-12;
        return (lo, hi);
    }

    static void Draw(ICanvas g, Heatmap h, PanelLayout p, double x0, double y0)
    {
        int rows = h.Values.Length, cols = rows == 0 ? 0 : h.Values[0].Length;
        double gx = x0 + p.Left, gy = y0 + p.Top;
        g.BeginGroup();
        double titleW = TextMetrics.Width(h.Title, 13, true);
        double titleX = Math.Min(Math.Max(gx + p.GridW / 2, x0 + titleW / 2 + 2), x0 + p.Width - titleW / 2 - 2);
        g.Text(titleX, y0 + 18, h.Title, 13, TextAnchor.Middle, bold: true);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                double v = h.Values[r][c];
                string fill = double.IsFinite(v) ? Color(h.Map, v, p.Lo, p.Hi) : h.NanColor;
                double cx = gx + c * p.CellW, cy = gy + r * p.CellH;
                g.Rect(cx, cy, p.CellW, p.CellH, fill, tooltip: $"{h.RowLabels[r]} / {h.ColLabels[c]}: {Num(v)}");
                string? text = h.CellText?[r][c];
                if (!string.IsNullOrEmpty(text))
                    g.Text(cx + p.CellW / 2, cy + p.CellH / 2 + 4, Label(text), 10, TextAnchor.Middle, color: TextColor(fill), maxWidth: p.CellW - 3);
            }
        g.Rect(gx, gy, p.GridW, p.GridH, null, "#444", 0.8);
        // row tick labels
        for (int r = 0; r < rows; r++)
        {
            bool mark = h.MarkedRows?.Contains(r) == true;
            g.Text(gx - 4, gy + r * p.CellH + p.CellH / 2 + 4, RowLabel(h, r), anchor: TextAnchor.End, bold: mark);
        }
        // column tick labels, rotated
        double ly = gy + p.GridH + 8;
        for (int c = 0; c < cols; c++)
        {
            bool mark = h.MarkedCols?.Contains(c) == true;
            double lx = gx + c * p.CellW + p.CellW / 2 + 3;
            g.Text(lx, ly, ColLabel(h, c), anchor: TextAnchor.End, bold: mark, rotate: -45);
        }
        // axis titles
        if (h.RowAxis.Length > 0)
            g.Text(x0 + 10, gy + p.GridH / 2, h.RowAxis, anchor: TextAnchor.Middle, italic: true, rotate: -90);
        if (h.ColAxis.Length > 0)
            g.Text(gx + p.GridW / 2, y0 + p.Height - 4, h.ColAxis, anchor: TextAnchor.Middle, italic: true);
        // colour bar
        double bx = gx + p.GridW + 16, bh = Math.Max(p.GridH, 60);
        const int steps = 32;
        for (int i = 0; i < steps; i++)
        {
            double v = p.Hi - (p.Hi - p.Lo) * (i + 0.5) / steps;
            g.Rect(bx, gy + bh * i / steps, 12, bh / steps + 0.5, Color(h.Map, v, p.Lo, p.Hi));
        }
        g.Rect(bx, gy, 12, bh, null, "#444", 0.6);
        var ticks = h.Map == ColorMap.Diverging ? new[] { p.Hi, (p.Hi + p.Lo) / 2, p.Lo } : [p.Hi, (p.Hi + p.Lo) / 2, p.Lo];
        foreach (double t in ticks)
        {
            double ty = gy + bh * (p.Hi - t) / (p.Hi - p.Lo);
            g.Text(bx + 15, ty + 4, Num(t), 9);
        }
        if (h.ColorBarLabel.Length > 0) g.Text(bx, gy - 5, h.ColorBarLabel, 9);
        g.EndGroup();
    }

    /// <summary>Hex colour of v on the map over [lo, hi]; NaN → grey.</summary>
    public static string Color(ColorMap map, double v, double lo, double hi)
    {
        if (!double.IsFinite(v)) return "#cccccc";
        if (map == ColorMap.Diverging)
        {
            // symmetric around the middle of [lo, hi] (0 for the usual ±m range)
            double mid = (lo + hi) / 2, m = (hi - lo) / 2;
            double x = m <= 0 ? 0 : Math.Clamp((v - mid) / m, -1, 1);
            // white → red (#b2182b) for positive, white → blue (#2166ac) for negative
            return x >= 0 ? Mix((255, 255, 255), (178, 24, 43), x) : Mix((255, 255, 255), (33, 102, 172), -x);
        }
        double t = Math.Clamp((v - lo) / (hi - lo), 0, 1);
        return map switch
        {
            ColorMap.Viridis => Ramp(t, (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)),
            ColorMap.Purples => Ramp(t, (252, 251, 253), (188, 189, 220), (117, 107, 177), (63, 0, 125)),
            ColorMap.Greens => Ramp(t, (247, 252, 245), (161, 217, 155), (49, 163, 84), (0, 68, 27)),
            ColorMap.Reds => Ramp(t, (255, 245, 240), (252, 146, 114), (222, 45, 38), (103, 0, 13)),
            ColorMap.Blues => Ramp(t, (247, 251, 255), (158, 202, 225), (49, 130, 189), (8, 48, 107)),
            _ => throw new ArgumentOutOfRangeException(nameof(map)),
        };
    }

    static string Ramp(double t, params (int R, int G, int B)[] stops)
    {
        double s = t * (stops.Length - 1);
        int i = Math.Min((int)s, stops.Length - 2);
        return Mix(stops[i], stops[i + 1], s - i);
    }

    static string Mix((int R, int G, int B) a, (int R, int G, int B) b, double t)
    {
        int r = (int)Math.Round(a.R + (b.R - a.R) * t), g = (int)Math.Round(a.G + (b.G - a.G) * t), bl = (int)Math.Round(a.B + (b.B - a.B) * t);
        return $"#{r:x2}{g:x2}{bl:x2}";
    }

    /// <summary>Black or white, whichever reads better on the fill colour.</summary>
    public static string TextColor(string fill)
    {
        if (fill.Length != 7) return "black";
        int r = Convert.ToInt32(fill[1..3], 16), g = Convert.ToInt32(fill[3..5], 16), b = Convert.ToInt32(fill[5..7], 16);
        return 0.299 * r + 0.587 * g + 0.114 * b < 128 ? "white" : "black";
    }

    /// <summary>A label made printable: control characters as escapes, long labels cut to 14 characters.</summary>
    public static string Label(string s)
    {
        var sb = new StringBuilder();
        foreach (char ch in s)
        {
            if (ch == '\n') sb.Append("\\n");
            else if (ch == '\r') sb.Append("\\r");
            else if (ch == '\t') sb.Append("\\t");
            else if (char.IsControl(ch)) sb.Append(CultureInfo.InvariantCulture, $"\\x{(int)ch:x2}");
            else sb.Append(ch);
        }
        var r = sb.ToString();
        if (r.Length <= 14) return r;
        int cut = char.IsHighSurrogate(r[12]) ? 12 : 13;
        return r[..cut] + "…";
    }

    /// <summary>XML text escaping; characters XML 1.0 forbids are dropped.</summary>
    public static string Esc(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (char ch in s)
        {
            switch (ch)
            {
                case '&': sb.Append("&amp;"); break;
                case '<': sb.Append("&lt;"); break;
                case '>': sb.Append("&gt;"); break;
                case '"': sb.Append("&quot;"); break;
                case '\'': sb.Append("&apos;"); break;
                default:
                    if (ch >= 0x20 || ch is '\t' or '\n' or '\r') { if (ch != '\uFFFE' && ch != '\uFFFF') sb.Append(ch); }
                    break;
            }
        }
        return sb.ToString();
    }

    internal static string Num(double v) => double.IsFinite(v) ? v.ToString("G4", CultureInfo.InvariantCulture) : "n/a";
}
