using System.Globalization;

namespace Engine.Interp.Reports;

/// <summary>One curve of a <see cref="LineChart"/>: points sorted by x.</summary>
public sealed record Series(string Label, double[] X, double[] Y, string Color);

/// <summary>
/// A line chart (e.g. a training loss curve and held-out accuracy) drawn with the same primitives and embedded font as
/// the heatmaps (<see cref="ICanvas"/>: SVG text or a PNG through SkiaSharp). Curves are drawn one pixel column at a
/// time (a thin bar from the lowest to the highest y the curve passes through in that column), so a line needs no
/// primitive beyond rectangles and its size does not grow with the number of points.
/// </summary>
public sealed class LineChart
{
    public string Title { get; init; } = "";
    public string XLabel { get; init; } = "";
    public string YLabel { get; init; } = "";
    public required IReadOnlyList<Series> Series { get; init; }
    public double? YMin { get; init; }
    public double? YMax { get; init; }
    public double Width { get; init; } = 720;
    public double Height { get; init; } = 360;

    const double Left = 64, Right = 20, Top = 40, Bottom = 64;

    public string ToSvg()
    {
        var c = new SvgCanvas(Width, Height);
        Draw(c);
        return c.Finish();
    }

    public byte[] ToPng(double scale = 2)
    {
        using var c = new PngCanvas(Width, Height, scale);
        Draw(c);
        return c.Finish();
    }

    void Draw(ICanvas g)
    {
        var pts = Series.SelectMany(s => s.X.Zip(s.Y)).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second)).ToArray();
        double x0 = pts.Length > 0 ? pts.Min(p => p.First) : 0, x1 = pts.Length > 0 ? pts.Max(p => p.First) : 1;
        double y0 = YMin ?? (pts.Length > 0 ? pts.Min(p => p.Second) : 0), y1 = YMax ?? (pts.Length > 0 ? pts.Max(p => p.Second) : 1);
        if (x1 <= x0) x1 = x0 + 1;
        if (y1 <= y0) y1 = y0 + 1;
        double pw = Width - Left - Right, ph = Height - Top - Bottom;
        double X(double v) => Left + (v - x0) / (x1 - x0) * pw;
        double Y(double v) => Top + (1 - (Math.Clamp(v, y0, y1) - y0) / (y1 - y0)) * ph;
        g.BeginGroup();
        if (Title.Length > 0) g.Text(Width / 2, 22, Title, 14, TextAnchor.Middle, bold: true);
        // grid and ticks
        foreach (var t in Ticks(y0, y1))
        {
            g.Rect(Left, Y(t), pw, 0.6, "#dddddd");
            g.Text(Left - 6, Y(t) + 4, Num(t), 10, TextAnchor.End);
        }
        foreach (var t in Ticks(x0, x1))
        {
            g.Rect(X(t), Top, 0.6, ph, "#eeeeee");
            g.Text(X(t), Top + ph + 16, Num(t), 10, TextAnchor.Middle);
        }
        g.Rect(Left, Top, pw, ph, null, "#444", 0.8);
        // curves: per pixel column, a bar over the y range the polyline covers there
        foreach (var s in Series)
        {
            int n = Math.Min(s.X.Length, s.Y.Length);
            var cols = new Dictionary<int, (double Lo, double Hi)>();
            void Cover(int col, double ya, double yb)
            {
                double lo = Math.Min(ya, yb), hi = Math.Max(ya, yb);
                cols[col] = cols.TryGetValue(col, out var r) ? (Math.Min(r.Lo, lo), Math.Max(r.Hi, hi)) : (lo, hi);
            }
            double? px = null, py = null;
            for (int i = 0; i < n; i++)
            {
                if (!double.IsFinite(s.X[i]) || !double.IsFinite(s.Y[i])) { px = py = null; continue; }
                double x = X(s.X[i]), y = Y(s.Y[i]);
                if (px is double ax && py is double ay)
                {
                    int c0 = (int)Math.Floor(ax), c1 = (int)Math.Floor(x);
                    for (int col = c0; col <= c1; col++)
                    {
                        double fa = c1 == c0 ? 0 : (double)(col - c0) / (c1 - c0), fb = c1 == c0 ? 1 : (double)(col + 1 - c0) / (c1 - c0);
                        Cover(col, ay + (y - ay) * Math.Clamp(fa, 0, 1), ay + (y - ay) * Math.Clamp(fb, 0, 1));
                    }
                }
                else Cover((int)Math.Floor(x), y, y);
                px = x; py = y;
            }
            foreach (var (col, (lo, hi)) in cols.OrderBy(kv => kv.Key))
                g.Rect(col, lo - 0.9, 1.2, hi - lo + 1.8, s.Color);
        }
        // legend
        double lx = Left + 10, ly = Top + 14;
        foreach (var s in Series)
        {
            g.Rect(lx, ly - 6, 14, 3, s.Color);
            g.Text(lx + 19, ly, s.Label, 10);
            ly += 15;
        }
        if (XLabel.Length > 0) g.Text(Left + pw / 2, Height - 12, XLabel, 11, TextAnchor.Middle, italic: true);
        if (YLabel.Length > 0) g.Text(16, Top + ph / 2, YLabel, 11, TextAnchor.Middle, italic: true, rotate: -90);
        g.EndGroup();
    }

    static IEnumerable<double> Ticks(double lo, double hi)
    {
        double span = hi - lo, raw = span / 5, mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 2.5, 5, 10 }.Select(m => m * mag).First(s => s >= raw);
        for (double t = Math.Ceiling(lo / step) * step; t <= hi + step * 1e-9; t += step) yield return Math.Abs(t) < step * 1e-9 ? 0 : t;
    }

    static string Num(double v) => Math.Abs(v) >= 1e4 || (Math.Abs(v) < 1e-3 && v != 0) ? v.ToString("G3", CultureInfo.InvariantCulture) : v.ToString("0.###", CultureInfo.InvariantCulture);
}
