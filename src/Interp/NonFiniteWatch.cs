using System.Globalization;
using System.Numerics;
using System.Runtime.InteropServices;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// Where a NaN or an infinity first appeared: the hook (in forward order), its layer (-1 for global hooks), the position
/// (row), the index inside the row (for [T, A, B] taps also split as head and index), the kind ("NaN", "+Inf", "-Inf")
/// and the value. For attention taps ([H, T, Tk]) <see cref="Head"/> and <see cref="Key"/> are set; the -Inf that
/// causal masking writes into hook_attn_scores above the diagonal is not a finding.
/// </summary>
public sealed record NonFiniteFinding(string Hook, int Layer, string Kind, float Value, int Position, int Index, int? Head, int? Key, int Call)
{
    /// <summary>One line, e.g. "non-finite value (NaN) first at blocks.1.mlp.hook_post[pos 3, index 17]".</summary>
    public string Message
    {
        get
        {
            string where = Key is int k ? $"head {Head}, pos {Position}, key {k}"
                : Head is int h ? $"pos {Position}, head {h}, index {Index}"
                : $"pos {Position}, index {Index}";
            return $"non-finite value ({Kind}) first at {Hook}[{where}]" + (Call > 1 ? $" in forward call {Call}" : "");
        }
    }
}

/// <summary>
/// Watches every tap of a session for NaN and ±Inf (<c>--check-finite</c>): registers one read-only hook on every hook
/// point (<c>session.Hooks.AddWhere(_ =&gt; true, ...)</c>) and records the first non-finite value in forward order.
/// Dispose to remove the hooks. Watching costs a scan of every activation and turns on the attention taps (the
/// session then computes attention scores and patterns explicitly).
/// </summary>
public sealed class NonFiniteWatch : IDisposable
{
    readonly IDisposable _handle;
    int _calls;

    /// <summary>The first finding, or null while every value seen was finite.</summary>
    public NonFiniteFinding? First { get; private set; }

    /// <summary>Taps scanned so far.</summary>
    public long TapsScanned { get; private set; }

    /// <summary>Starts watching every hook point of <paramref name="session"/>.</summary>
    public NonFiniteWatch(Session session)
    {
        _handle = session.Hooks.AddWhere(_ => true, Check);
    }

    /// <summary>Throws a <see cref="NumericsException"/> with <see cref="NonFiniteFinding.Message"/> when a value was not finite.</summary>
    public void ThrowIfFound()
    {
        if (First is { } f) throw new NumericsException(f.Message);
    }

    void Check(Tap tap)
    {
        TapsScanned++;
        if (tap.Kind == HookKind.Embed) _calls++;   // hook_embed fires first in every forward call
        if (First != null) return;
        int i = FirstNonFinite(tap.Data, 0);
        bool scores = tap.Kind == HookKind.AttnScores;
        while (i >= 0)
        {
            var s = tap.Shape;
            if (tap.Kind is HookKind.AttnScores or HookKind.Pattern)
            {
                // [H, T, Tk]: query row t is position Pos0 + t; keys beyond it are masked (-Inf in the scores).
                int tk = s.D2, t = (i / tk) % s.D1, h = i / (tk * s.D1), key = i % tk;
                float v = tap.Data[i];
                if (scores && key > tap.Pos0 + t && float.IsNegativeInfinity(v)) { i = FirstNonFinite(tap.Data, i + 1); continue; }
                First = new NonFiniteFinding(tap.Name, tap.Layer, KindOf(v), v, tap.Pos0 + t, key, h, key, Math.Max(1, _calls));
            }
            else
            {
                int row = (int)(s.Elements / s.D0), t = i / row, within = i % row;
                float v = tap.Data[i];
                if (s.Rank == 3) First = new NonFiniteFinding(tap.Name, tap.Layer, KindOf(v), v, tap.Pos0 + t, within % s.D2, within / s.D2, null, Math.Max(1, _calls));
                else First = new NonFiniteFinding(tap.Name, tap.Layer, KindOf(v), v, tap.Pos0 + t, within, null, null, Math.Max(1, _calls));
            }
            return;
        }
    }

    static string KindOf(float v) => float.IsNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";

    /// <summary>Index of the first NaN or ±Inf in x at or after <paramref name="start"/>, or -1.</summary>
    public static int FirstNonFinite(ReadOnlySpan<float> x, int start = 0)
    {
        var bits = MemoryMarshal.Cast<float, uint>(x);
        int i = start;
        if (Vector.IsHardwareAccelerated)
        {
            var mask = new Vector<uint>(0x7F80_0000u);
            int n = Vector<uint>.Count;
            for (; i + n <= bits.Length; i += n)
            {
                var v = new Vector<uint>(bits.Slice(i, n)) & mask;
                if (Vector.EqualsAny(v, mask)) break;
            }
        }
        for (; i < bits.Length; i++)
            if ((bits[i] & 0x7F80_0000u) == 0x7F80_0000u) return i;
        return -1;
    }

    /// <summary>Stops watching.</summary>
    public void Dispose() => _handle.Dispose();

    /// <summary>The finding as text for tables: "all finite (N taps)" or the message.</summary>
    public override string ToString() => First?.Message ?? string.Create(CultureInfo.InvariantCulture, $"all finite ({TapsScanned} taps scanned)");
}
