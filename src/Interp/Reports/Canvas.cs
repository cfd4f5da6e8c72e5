using System.Globalization;
using System.Text;
using SkiaSharp;

namespace Engine.Interp.Reports;

public enum TextAnchor { Start, Middle, End }

/// <summary>
/// The few drawing primitives the figures use (filled/stroked rectangles, text with an anchor and an optional
/// rotation). One layout is drawn twice: as SVG text (<see cref="SvgCanvas"/>) and as pixels (<see cref="PngCanvas"/>),
/// so the PNG and the SVG of a figure show the same picture. Coordinates are in CSS pixels, y downwards, text y = baseline.
/// </summary>
public interface ICanvas
{
    void Rect(double x, double y, double w, double h, string? fill, string? stroke = null, double strokeWidth = 0, string? tooltip = null);

    /// <summary>Text at (x, baseline y). <paramref name="maxWidth"/>: squeeze the text to at most that width.</summary>
    void Text(double x, double y, string text, double size = 11, TextAnchor anchor = TextAnchor.Start, bool bold = false,
              bool italic = false, string color = "black", double rotate = 0, double? maxWidth = null);

    void BeginGroup();
    void EndGroup();
}

/// <summary>Writes the primitives as SVG elements. Deterministic: same calls, same bytes.</summary>
public sealed class SvgCanvas : ICanvas
{
    readonly StringBuilder _sb = new();

    public SvgCanvas(double width, double height)
    {
        _sb.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{F(width)}\" height=\"{F(height)}\" viewBox=\"0 0 {F(width)} {F(height)}\" font-family=\"DejaVu Sans, Verdana, Arial, sans-serif\" font-size=\"11\">\n");
        _sb.Append(CultureInfo.InvariantCulture, $"<rect width=\"{F(width)}\" height=\"{F(height)}\" fill=\"white\"/>\n");
    }

    public void Rect(double x, double y, double w, double h, string? fill, string? stroke = null, double strokeWidth = 0, string? tooltip = null)
    {
        _sb.Append(CultureInfo.InvariantCulture, $"<rect x=\"{F(x)}\" y=\"{F(y)}\" width=\"{F(w)}\" height=\"{F(h)}\" fill=\"{fill ?? "none"}\"");
        if (stroke != null) _sb.Append(CultureInfo.InvariantCulture, $" stroke=\"{stroke}\" stroke-width=\"{F(strokeWidth)}\"");
        if (tooltip != null) _sb.Append("><title>").Append(SvgHeatmap.Esc(tooltip)).Append("</title></rect>\n");
        else _sb.Append("/>\n");
    }

    public void Text(double x, double y, string text, double size = 11, TextAnchor anchor = TextAnchor.Start, bool bold = false,
                     bool italic = false, string color = "black", double rotate = 0, double? maxWidth = null)
    {
        _sb.Append(CultureInfo.InvariantCulture, $"<text x=\"{F(x)}\" y=\"{F(y)}\"");
        if (anchor != TextAnchor.Start) _sb.Append(anchor == TextAnchor.Middle ? " text-anchor=\"middle\"" : " text-anchor=\"end\"");
        if (size != 11) _sb.Append(CultureInfo.InvariantCulture, $" font-size=\"{F(size)}\"");
        if (bold) _sb.Append(" font-weight=\"bold\"");
        if (italic) _sb.Append(" font-style=\"italic\"");
        if (color != "black") _sb.Append(CultureInfo.InvariantCulture, $" fill=\"{color}\"");
        if (rotate != 0) _sb.Append(CultureInfo.InvariantCulture, $" transform=\"rotate({F(rotate)} {F(x)} {F(y)})\"");
        if (maxWidth is double mw && TextMetrics.Width(text, size, bold) > mw)
            _sb.Append(CultureInfo.InvariantCulture, $" textLength=\"{F(mw)}\" lengthAdjust=\"spacingAndGlyphs\"");
        _sb.Append(" xml:space=\"preserve\">").Append(SvgHeatmap.Esc(text)).Append("</text>\n");
    }

    public void BeginGroup() => _sb.Append("<g>\n");
    public void EndGroup() => _sb.Append("</g>\n");

    public string Finish() => _sb.Append("</svg>\n").ToString();

    static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
}

/// <summary>
/// Text widths measured with the embedded DejaVu Sans (the font the PNG is drawn with and the SVG asks for first), so
/// layouts are the same on every machine, fonts installed or not.
/// </summary>
public static class TextMetrics
{
    static readonly Lazy<SKTypeface> Regular = new(() => Load("DejaVuSans.ttf"));
    static readonly Lazy<SKTypeface> Bold = new(() => Load("DejaVuSans-Bold.ttf"));

    internal static SKTypeface Typeface(bool bold) => bold ? Bold.Value : Regular.Value;

    static SKTypeface Load(string file)
    {
        using var s = typeof(TextMetrics).Assembly.GetManifestResourceStream("Engine.Interp.Reports.Fonts." + file)
            ?? throw new InvalidOperationException($"embedded font {file} is missing from Engine.Interp");
        var ms = new MemoryStream();
        s.CopyTo(ms);
        using var data = SKData.CreateCopy(ms.ToArray());
        return SKTypeface.FromData(data) ?? throw new InvalidOperationException($"embedded font {file} could not be read");
    }

    static readonly object Gate = new();

    /// <summary>Advance width of the text in pixels at the given font size.</summary>
    public static double Width(string text, double size, bool bold = false)
    {
        if (text.Length == 0) return 0;
        lock (Gate)
        {
            using var font = new SKFont(Typeface(bold), (float)size);
            return font.MeasureText(text);
        }
    }
}

/// <summary>Draws the primitives with SkiaSharp into a bitmap (scaled by <c>scale</c> for sharp text) and encodes PNG.</summary>
public sealed class PngCanvas : ICanvas, IDisposable
{
    readonly SKBitmap _bitmap;
    readonly SKCanvas _canvas;

    public PngCanvas(double width, double height, double scale = 2)
    {
        int w = Math.Max(1, (int)Math.Ceiling(width * scale)), h = Math.Max(1, (int)Math.Ceiling(height * scale));
        _bitmap = new SKBitmap(new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Premul));
        _canvas = new SKCanvas(_bitmap);
        _canvas.Clear(SKColors.White);
        _canvas.Scale((float)scale);
    }

    static SKColor Parse(string color) => color switch
    {
        "black" => SKColors.Black,
        "white" => SKColors.White,
        "none" => SKColors.Transparent,
        _ => SKColor.TryParse(color, out var c) ? c : SKColors.Magenta,
    };

    public void Rect(double x, double y, double w, double h, string? fill, string? stroke = null, double strokeWidth = 0, string? tooltip = null)
    {
        var r = new SKRect((float)x, (float)y, (float)(x + w), (float)(y + h));
        if (fill != null && fill != "none")
        {
            using var p = new SKPaint { Color = Parse(fill), Style = SKPaintStyle.Fill, IsAntialias = false };
            _canvas.DrawRect(r, p);
        }
        if (stroke != null)
        {
            using var p = new SKPaint { Color = Parse(stroke), Style = SKPaintStyle.Stroke, StrokeWidth = (float)strokeWidth, IsAntialias = true };
            _canvas.DrawRect(r, p);
        }
    }

    public void Text(double x, double y, string text, double size = 11, TextAnchor anchor = TextAnchor.Start, bool bold = false,
                     bool italic = false, string color = "black", double rotate = 0, double? maxWidth = null)
    {
        if (text.Length == 0) return;
        using var font = new SKFont(TextMetrics.Typeface(bold), (float)size) { Edging = SKFontEdging.Antialias, Subpixel = true };
        if (italic) font.SkewX = -0.2f;
        double width = font.MeasureText(text);
        float sx = 1;
        if (maxWidth is double mw && width > mw && width > 0) { sx = (float)(mw / width); width = mw; }
        double dx = anchor switch { TextAnchor.Middle => -width / 2, TextAnchor.End => -width, _ => 0 };
        using var paint = new SKPaint { Color = Parse(color), IsAntialias = true };
        _canvas.Save();
        _canvas.Translate((float)x, (float)y);
        if (rotate != 0) _canvas.RotateDegrees((float)rotate);
        _canvas.Translate((float)dx, 0);
        if (sx != 1) _canvas.Scale(sx, 1);
        _canvas.DrawText(text, 0, 0, SKTextAlign.Left, font, paint);
        _canvas.Restore();
    }

    public void BeginGroup() { }
    public void EndGroup() { }

    public byte[] Finish()
    {
        _canvas.Flush();
        using var image = SKImage.FromBitmap(_bitmap);
        using var data = image.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }

    public void Dispose()
    {
        _canvas.Dispose();
        _bitmap.Dispose();
    }
}
