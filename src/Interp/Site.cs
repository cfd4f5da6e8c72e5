using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// A slice of one hook point, the unit that patching, ablation and restoration act on.
/// <list type="bullet">
/// <item>[T, X] taps (resid_pre, attn_out, mlp_out, mlp.hook_post, ...): <see cref="Position"/> selects the row (null: every row),
/// <see cref="Index"/> the column (null: the whole row; e.g. one MLP neuron of hook_post).</item>
/// <item>[T, heads, d] taps (q, k, v, z, rot_q, rot_k): <see cref="Position"/> and <see cref="Head"/> (k/v: the KV head), null = all.</item>
/// <item>[H, Tq, Tk] taps (pattern, attn_scores): <see cref="Head"/> and <see cref="Position"/> = destination (query) row.</item>
/// </list>
/// </summary>
public readonly record struct Site(HookKind Kind, int Layer, int? Position = null, int? Head = null, int? Index = null)
{
    public string HookName => HookPoints.Name(Kind, Layer);

    public override string ToString()
    {
        var parts = new List<string> { HookName };
        if (Position is int p) parts.Add($"pos {p}");
        if (Head is int h) parts.Add($"head {h}");
        if (Index is int i) parts.Add($"index {i}");
        return string.Join(", ", parts);
    }

    /// <summary>Contiguous pieces (offset, length) of a tap of this shape that the site covers, with the head (or -1) of each piece.</summary>
    public List<(int Offset, int Length, int Head)> Segments(TapShape shape)
    {
        var list = new List<(int, int, int)>();
        if (shape.Rank == 2)
        {
            int rows = shape.D0, width = shape.D1;
            Check(Position, rows, "position");
            Check(Index, width, "index");
            if (Head != null) throw new UsageException($"{HookName} has no head axis");
            for (int t = 0; t < rows; t++)
            {
                if (Position is int p && p != t) continue;
                if (Index is int i) list.Add((t * width + i, 1, -1));
                else list.Add((t * width, width, -1));
            }
            return list;
        }
        bool headFirst = Kind is HookKind.Pattern or HookKind.AttnScores;
        int n0 = shape.D0, n1 = shape.D1, inner = shape.D2;
        int nPos = headFirst ? n1 : n0, nHead = headFirst ? n0 : n1;
        Check(Position, nPos, "position");
        Check(Head, nHead, "head");
        if (Index != null) throw new UsageException($"{HookName}: select a head and/or position, not an index");
        for (int a = 0; a < n0; a++)
            for (int b = 0; b < n1; b++)
            {
                int pos = headFirst ? b : a, head = headFirst ? a : b;
                if (Position is int p && p != pos) continue;
                if (Head is int h && h != head) continue;
                list.Add(((a * n1 + b) * inner, inner, head));
            }
        return list;
    }

    void Check(int? v, int n, string what)
    {
        if (v is int x && (x < 0 || x >= n)) throw new UsageException($"{HookName}: {what} {x} is out of range [0, {n})");
    }

    /// <summary>Copies the site's elements of <paramref name="source"/> (a full tensor of the same shape) into the tap.</summary>
    public void CopyInto(Tap tap, ReadOnlySpan<float> source)
    {
        if (source.Length != tap.Data.Length)
            throw new InvalidOperationException($"{tap.Name}: source has {source.Length} values, the tap {tap.Data.Length} (different prompt lengths?)");
        foreach (var (o, n, _) in Segments(tap.Shape)) source.Slice(o, n).CopyTo(tap.Data.Slice(o, n));
    }

    /// <summary>Sets the site's elements of the tap to a constant.</summary>
    public void Fill(Tap tap, float value)
    {
        foreach (var (o, n, _) in Segments(tap.Shape)) tap.Data.Slice(o, n).Fill(value);
    }
}
