namespace Engine.Interp.Reports;

/// <summary>
/// A figure: heatmap panels side by side under an optional title. The same layout renders as SVG (<see cref="ToSvg"/>)
/// and PNG (<see cref="ToPng"/>).
/// </summary>
public sealed class Figure(string? title, params Heatmap[] panels)
{
    public string? Title { get; } = title;
    public IReadOnlyList<Heatmap> Panels { get; } = panels;

    public string ToSvg() => SvgHeatmap.Render(Title, [.. Panels]);

    /// <summary>PNG bytes at <paramref name="scale"/> pixels per SVG unit (2 = sharp on high-density screens).</summary>
    public byte[] ToPng(double scale = 2) => SvgHeatmap.RenderPng(Title, scale, [.. Panels]);

    /// <summary>The SVG text (so code that took a figure's SVG string keeps working).</summary>
    public static implicit operator string(Figure f) => f.ToSvg();

    public override string ToString() => ToSvg();
}
