using System.Xml.Linq;
using Engine.Interp.Reports;
using Xunit;

namespace Engine.Tests.Interp;

public class SvgHeatmapTests
{
    static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    [Fact]
    public void RendersWellFormedDeterministicSvgWithEscapedLabelsMarksAndCellText()
    {
        var h = new Heatmap
        {
            Title = "a <title> & more", Values = [[0.5, -1, double.NaN], [0, 2, 1]],
            RowLabels = ["L0", "L1"], ColLabels = ["<s>", " Paris\n", "\u0001x"], MarkedCols = new HashSet<int> { 1 },
            CellText = [["a", null, "c"], ["d", "e", "f"]], ColorBarLabel = "Δ",
        };
        string svg = SvgHeatmap.Render("figure", h, h);
        Assert.Equal(svg, SvgHeatmap.Render("figure", h, h));
        var doc = XDocument.Parse(svg);
        Assert.Equal(Svg + "svg", doc.Root!.Name);
        var texts = doc.Descendants(Svg + "text").Select(t => t.Value).ToList();
        Assert.Contains("a <title> & more", texts);
        Assert.Contains("<s>", texts);
        Assert.Contains(" Paris\\n*", texts);      // control characters escaped, the marked column starred
        Assert.Contains("\\x01x", texts);
        Assert.Contains("e", texts);
        // 6 cells per panel + frame + colour bar pieces; the NaN cell is grey
        Assert.Contains(doc.Descendants(Svg + "rect"), r => (string?)r.Attribute("fill") == "#cccccc");
    }

    [Fact]
    public void ColourMaps()
    {
        Assert.Equal("#ffffff", SvgHeatmap.Color(ColorMap.Diverging, 0, -2, 2));
        Assert.Equal("#b2182b", SvgHeatmap.Color(ColorMap.Diverging, 2, -2, 2));
        Assert.Equal("#2166ac", SvgHeatmap.Color(ColorMap.Diverging, -5, -2, 2));
        Assert.Equal("#440154", SvgHeatmap.Color(ColorMap.Viridis, 0, 0, 1));
        Assert.Equal("#fde725", SvgHeatmap.Color(ColorMap.Viridis, 1, 0, 1));
        Assert.Equal("#cccccc", SvgHeatmap.Color(ColorMap.Purples, double.NaN, 0, 1));
    }

    [Fact]
    public void MismatchedLabelsAreRefused()
    {
        var h = new Heatmap { Title = "t", Values = [[1, 2]], RowLabels = ["r"], ColLabels = ["only one"] };
        Assert.Throws<ArgumentException>(() => SvgHeatmap.Render(h));
    }
}
