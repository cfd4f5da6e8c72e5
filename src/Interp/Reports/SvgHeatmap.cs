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
}

/// <summary>
/// A dependency-free SVG writer for heatmaps (several panels side by side, each with title, axis labels, tick labels,
/// a colour bar and optional cell text). Deterministic output: same input, same bytes.
/// </summary>
public static class SvgHeatmap
{
    const double CharW = 6.6;     // approximate width of one 11px sans-serif character
    const int Pad = 16;

    public static string Render(params Heatmap[] panels) => Render(null, panels);

    /// <summary>Renders panels left to right under an optional figure title.</summary>
    public static string Render(string? figureTitle, params Heatmap[] panels)
    {
        if (panels.Length == 0) throw new ArgumentException("no panels");
        var layouts = panels.Select(Layout).ToArray();
        double panelsWidth = Pad + layouts.Sum(l => l.Width + Pad);
        double width = Math.Max(panelsWidth, figureTitle == null ? 0 : figureTitle.Length * 8.2 + 2 * Pad);
        double top = figureTitle != null ? 30 : 0;
        double height = top + layouts.Max(l => l.Height) + Pad;
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{F(width)}\" height=\"{F(height)}\" viewBox=\"0 0 {F(width)} {F(height)}\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"11\">\n");
        sb.Append(CultureInfo.InvariantCulture, $"<rect width=\"{F(width)}\" height=\"{F(height)}\" fill=\"white\"/>\n");
        if (figureTitle != null)
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(width / 2)}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{Esc(figureTitle)}</text>\n");
        double x = Pad + (width - panelsWidth) / 2;
        for (int i = 0; i < panels.Length; i++)
        {
            Draw(sb, panels[i], layouts[i], x, top);
            x += layouts[i].Width + Pad;
        }
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    sealed record PanelLayout(double CellW, double CellH, double Left, double Top, double GridW, double GridH, double Width, double Height, double Lo, double Hi);

    static PanelLayout Layout(Heatmap h)
    {
        int rows = h.Values.Length, cols = rows == 0 ? 0 : h.Values[0].Length;
        if (h.RowLabels.Length != rows || h.ColLabels.Length != cols)
            throw new ArgumentException($"heatmap '{h.Title}': {rows}x{cols} values but {h.RowLabels.Length} row and {h.ColLabels.Length} column labels");
        int maxCell = h.CellText?.SelectMany(r => r).Max(s => s?.Length ?? 0) ?? 0;
        double cellW = Math.Max(24, Math.Min(70, maxCell * CharW + 8));
        double cellH = 22;
        double rowLabelW = h.RowLabels.Select(Label).DefaultIfEmpty("").Max(s => s.Length) * CharW + 8;
        double colLabelH = h.ColLabels.Select(Label).DefaultIfEmpty("").Max(s => s.Length) * CharW * 0.75 + 14;
        double left = (h.RowAxis.Length > 0 ? 18 : 0) + rowLabelW;
        double top = 34;
        double gridW = cols * cellW, gridH = rows * cellH;
        double colorBar = 16 + Math.Max(12 + 60, h.ColorBarLabel.Length * 5.5);
        double width = Math.Max(left + gridW + colorBar, h.Title.Length * 7.5 + 10);
        double height = top + gridH + colLabelH + (h.ColAxis.Length > 0 ? 18 : 0);
        var (lo, hi) = Range(h);
        return new PanelLayout(cellW, cellH, left, top, gridW, gridH, width, height, lo, hi);
    }

    static (double Lo, double Hi) Range(Heatmap h)
    {
        var finite = h.Values.SelectMany(r => r).Where(double.IsFinite).ToArray();
        if (h.Map == ColorMap.Diverging)
        {
            double m = finite.Length == 0 ? 1 : finite.Max(Math.Abs);
            if (m == 0) m = 1;
            return (h.Min ?? -m, h.Max ?? m);
        }
        double lo = h.Min ?? (finite.Length == 0 ? 0 : finite.Min());
        double hi = h.Max ?? (finite.Length == 0 ? 1 : finite.Max());
        if (hi <= lo) hi = lo + 1e-12;
        return (lo, hi);
    }

    static void Draw(StringBuilder sb, Heatmap h, PanelLayout p, double x0, double y0)
    {
        int rows = h.Values.Length, cols = rows == 0 ? 0 : h.Values[0].Length;
        double gx = x0 + p.Left, gy = y0 + p.Top;
        sb.Append(CultureInfo.InvariantCulture, $"<g>\n<text x=\"{F(gx + p.GridW / 2)}\" y=\"{F(y0 + 18)}\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{Esc(h.Title)}</text>\n");
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                double v = h.Values[r][c];
                string fill = Color(h.Map, v, p.Lo, p.Hi);
                double cx = gx + c * p.CellW, cy = gy + r * p.CellH;
                sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(cx)}\" y=\"{F(cy)}\" width=\"{F(p.CellW)}\" height=\"{F(p.CellH)}\" fill=\"{fill}\"><title>{Esc($"{h.RowLabels[r]} / {h.ColLabels[c]}: {Num(v)}")}</title></rect>\n");
                string? text = h.CellText?[r][c];
                if (!string.IsNullOrEmpty(text))
                    sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(cx + p.CellW / 2)}\" y=\"{F(cy + p.CellH / 2 + 4)}\" text-anchor=\"middle\" font-size=\"10\" fill=\"{TextColor(fill)}\">{Esc(Label(text))}</text>\n");
            }
        sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(gx)}\" y=\"{F(gy)}\" width=\"{F(p.GridW)}\" height=\"{F(p.GridH)}\" fill=\"none\" stroke=\"#444\" stroke-width=\"0.8\"/>\n");
        // row tick labels
        for (int r = 0; r < rows; r++)
        {
            bool mark = h.MarkedRows?.Contains(r) == true;
            string label = Label(h.RowLabels[r]) + (mark ? "*" : "");
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(gx - 4)}\" y=\"{F(gy + r * p.CellH + p.CellH / 2 + 4)}\" text-anchor=\"end\"{(mark ? " font-weight=\"bold\"" : "")} xml:space=\"preserve\">{Esc(label)}</text>\n");
        }
        // column tick labels, rotated
        double ly = gy + p.GridH + 6;
        for (int c = 0; c < cols; c++)
        {
            bool mark = h.MarkedCols?.Contains(c) == true;
            string label = Label(h.ColLabels[c]) + (mark ? "*" : "");
            double lx = gx + c * p.CellW + p.CellW / 2 + 3;
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(lx)}\" y=\"{F(ly)}\" text-anchor=\"end\" transform=\"rotate(-45 {F(lx)} {F(ly)})\"{(mark ? " font-weight=\"bold\"" : "")} xml:space=\"preserve\">{Esc(label)}</text>\n");
        }
        // axis titles
        if (h.RowAxis.Length > 0)
        {
            double ax = x0 + 10, ay = gy + p.GridH / 2;
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(ax)}\" y=\"{F(ay)}\" text-anchor=\"middle\" transform=\"rotate(-90 {F(ax)} {F(ay)})\" font-style=\"italic\">{Esc(h.RowAxis)}</text>\n");
        }
        if (h.ColAxis.Length > 0)
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(gx + p.GridW / 2)}\" y=\"{F(y0 + p.Height - 4)}\" text-anchor=\"middle\" font-style=\"italic\">{Esc(h.ColAxis)}</text>\n");
        // colour bar
        double bx = gx + p.GridW + 16, bh = Math.Max(p.GridH, 60);
        const int steps = 32;
        for (int i = 0; i < steps; i++)
        {
            double v = p.Hi - (p.Hi - p.Lo) * (i + 0.5) / steps;
            sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(bx)}\" y=\"{F(gy + bh * i / steps)}\" width=\"12\" height=\"{F(bh / steps + 0.5)}\" fill=\"{Color(h.Map, v, p.Lo, p.Hi)}\"/>\n");
        }
        sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(bx)}\" y=\"{F(gy)}\" width=\"12\" height=\"{F(bh)}\" fill=\"none\" stroke=\"#444\" stroke-width=\"0.6\"/>\n");
        var ticks = h.Map == ColorMap.Diverging ? new[] { p.Hi, 0.0, p.Lo } : [p.Hi, (p.Hi + p.Lo) / 2, p.Lo];
        for (int i = 0; i < ticks.Length; i++)
        {
            double ty = gy + bh * (p.Hi - ticks[i]) / (p.Hi - p.Lo);
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(bx + 15)}\" y=\"{F(ty + 4)}\" font-size=\"9\">{Esc(Num(ticks[i]))}</text>\n");
        }
        if (h.ColorBarLabel.Length > 0)
        {
            sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(bx)}\" y=\"{F(gy - 5)}\" font-size=\"9\">{Esc(h.ColorBarLabel)}</text>\n");
        }
        sb.Append("</g>\n");
    }

    /// <summary>Hex colour of v on the map over [lo, hi]; NaN → grey.</summary>
    public static string Color(ColorMap map, double v, double lo, double hi)
    {
        if (!double.IsFinite(v)) return "#cccccc";
        if (map == ColorMap.Diverging)
        {
            double m = Math.Max(Math.Abs(lo), Math.Abs(hi));
            double x = m == 0 ? 0 : Math.Clamp(v / m, -1, 1);
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

    static string TextColor(string fill)
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

    static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

    static string Num(double v) => double.IsFinite(v) ? v.ToString("G4", CultureInfo.InvariantCulture) : "n/a";
}
