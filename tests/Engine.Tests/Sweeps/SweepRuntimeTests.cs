using Engine.Runtime;
using Engine.Tests.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Sweeps;

/// <summary>
/// The runtime's sweep calls against full forward passes: <see cref="Session.CaptureBase"/> is an ordinary run,
/// <see cref="Session.RunFrom"/> (restart at layer L, row p from a base) gives the last-position logits of the full run with
/// the same hooks, and <see cref="Session.RunLanes(ReadOnlySpan{SweepLane})"/> (many such runs stacked into one pass) gives each lane's
/// <see cref="Session.RunFrom"/> result, in the order given, whatever the mix of bases, layers and rows.
/// </summary>
public class SweepRuntimeTests
{
    public static IEnumerable<object[]> FamilyBackends() => RuntimeInvariantTests.FamilyBackends();

    static readonly int[] Tokens = RuntimeInvariantTests.TokensA;     // 8 tokens
    static readonly int[] Other = RuntimeInvariantTests.TokensB;

    /// <summary>A hook that overwrites position p of a [T, X] tap with a fixed pattern, wherever the tap's rows start.</summary>
    static HookFn SetRow(int p, float scale) => tap =>
    {
        int r = p - tap.Pos0;
        if (r < 0 || r >= tap.Shape.D0) return;
        var row = tap.Row(r);
        for (int i = 0; i < row.Length; i++) row[i] = scale * MathF.Sin(i * 0.37f + p);
    };

    static void Close(ReadOnlySpan<float> got, ReadOnlySpan<float> want, string what) => Compare.Close(got, want, 1e-5, what);

    static float[] Last(ReadOnlySpan<float> logits, int V) => logits[^V..].ToArray();

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void CaptureBaseIsAnOrdinaryRun(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var full = s.Run(Tokens).ToArray();
            using var b = s.CaptureBase(Tokens);
            Assert.True(RuntimeInvariantTests.BitIdentical(full, s.LastLogits), "CaptureBase changed the logits of the run");
            Assert.True(RuntimeInvariantTests.BitIdentical(Last(full, model.Config.VocabSize), b.LastLogits));
            Assert.Equal(Tokens.Length, s.Length);
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void RunFromEqualsTheFullRunWithTheSameHook(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int V = c.VocabSize, T = Tokens.Length;
            using var b = s.CaptureBase(Tokens);
            // No hook at all: any start gives the base run's logits.
            for (int l = 0; l <= c.NLayers; l++)
                foreach (int p in new[] { 0, 3, T - 1 })
                    Close(s.RunFrom(b, l, p), b.LastLogits, $"{fixture}/{backend}: RunFrom({l}, {p}) without hooks");
            // A patch at (kind, L, p): the run restarted at (L, p) equals the full run.
            var kinds = new[] { HookKind.ResidPre, HookKind.AttnOut, HookKind.MlpOut, HookKind.ResidPost };
            foreach (var kind in kinds)
                for (int l = 0; l < c.NLayers; l++)
                    foreach (int p in new[] { 0, 2, T - 1 })
                    {
                        float[] want;
                        using (s.Hooks.Add(kind, l, SetRow(p, 0.5f))) want = Last(s.Run(Tokens), V);
                        float[] got;
                        using (s.Hooks.Add(kind, l, SetRow(p, 0.5f))) got = s.RunFrom(b, l, p).ToArray();
                        Close(got, want, $"{fixture}/{backend}: {kind} L{l} p{p}");
                    }
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void RunFromLeavesAKvCacheThatGenerationContinues(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            int V = model.Config.VocabSize, l = 1, p = 4;
            using var b = s.CaptureBase(Tokens);
            float[] want;
            using (s.Hooks.Add(HookKind.ResidPre, l, SetRow(p, 1f)))
            {
                s.Run(Tokens);
                want = s.Forward([42]).ToArray();
            }
            float[] got;
            using (s.Hooks.Add(HookKind.ResidPre, l, SetRow(p, 1f)))
            {
                s.RunFrom(b, l, p);
                Assert.Equal(Tokens.Length, s.Length);
                got = s.Forward([42]).ToArray();
            }
            Close(got, want, $"{fixture}/{backend}: the token after RunFrom");
            Assert.Equal(V, got.Length);
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void HooksFireFromTheFirstLayerOnTheRecomputedRows(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            using var b = s.CaptureBase(Tokens);
            var seen = new List<(string Name, int Pos0, int Rows, int Keys)>();
            using (s.Hooks.AddWhere(_ => true, tap => seen.Add((tap.Name, tap.Pos0, tap.Kind is HookKind.Pattern or HookKind.AttnScores ? tap.Shape.D1 : tap.Shape.D0,
                tap.Kind is HookKind.Pattern or HookKind.AttnScores ? tap.Shape.D2 : -1))))
                s.RunFrom(b, 1, 5);
            Assert.DoesNotContain(seen, x => x.Name == "hook_embed" || x.Name.StartsWith("blocks.0.", StringComparison.Ordinal));
            Assert.All(seen, x => Assert.Equal((5, Tokens.Length - 5), (x.Pos0, x.Rows)));
            Assert.All(seen.Where(x => x.Keys >= 0), x => Assert.Equal(Tokens.Length, x.Keys));
            int perLayer = HookPoints.All(c).Count(n => n.StartsWith("blocks.1.", StringComparison.Ordinal));
            Assert.Equal((c.NLayers - 1) * perLayer + 2, seen.Count);
        }
    }

    /// <summary>Lanes with different bases, first layers and rows (and per-lane hooks) in one pass = each lane's RunFrom.</summary>
    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void RunLanesEqualsRunFromPerLane(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int V = c.VocabSize, N = c.NLayers;
            using var b1 = s.CaptureBase(Tokens);
            using var b2 = s.CaptureBase(Other[..6]);
            var lanes = new List<SweepLane>();
            var want = new List<float[]>();
            var rng = new Random(3);
            for (int i = 0; i < 9; i++)
            {
                var b = i % 3 == 2 ? b2 : b1;
                int first = rng.Next(N + 1), from = rng.Next(b.Length);
                var kind = (i % 4) switch { 0 => HookKind.ResidPre, 1 => HookKind.MlpOut, 2 => HookKind.AttnOut, _ => HookKind.Z };
                int layer = Math.Min(first, N - 1);
                bool hooked = first < N && i % 5 != 4;
                var fn = kind == HookKind.Z
                    ? new HookFn(tap => { for (int r = 0; r < tap.Shape.D0; r++) tap.Row(r)[..c.HeadDim].Clear(); })
                    : SetRow(Math.Min(b.Length - 1, from + i % 2), 0.25f * (i + 1));
                IReadOnlyList<LaneHook>? hooks = hooked ? [new LaneHook(kind, layer, fn)] : null;
                lanes.Add(new SweepLane(b, first, from, hooks));
                if (hooked)
                    using (s.Hooks.Add(kind, layer, fn)) want.Add(s.RunFrom(b, first, from).ToArray());
                else want.Add(s.RunFrom(b, first, from).ToArray());
            }
            var got = s.RunLanes(lanes.ToArray()).ToArray();
            Assert.Equal(lanes.Count * V, got.Length);
            for (int i = 0; i < lanes.Count; i++)
                Close(got.AsSpan(i * V, V), want[i], $"{fixture}/{backend}: lane {i} (first layer {lanes[i].FirstLayer}, row {lanes[i].FromRow})");
            // Lanes that keep only their last row in the last layer (every other lane, so both kinds share the pass).
            var trimmed = lanes.Select((x, i) => i % 2 == 0 ? x with { LastRowOnly = true } : x).ToArray();
            var gotTrimmed = s.RunLanes(trimmed).ToArray();
            for (int i = 0; i < lanes.Count; i++)
                Close(gotTrimmed.AsSpan(i * V, V), want[i], $"{fixture}/{backend}: lane {i}, last row only = {trimmed[i].LastRowOnly}");
            // The session's own run is untouched by RunLanes.
            var again = s.RunLanes(lanes.ToArray()).ToArray();
            Assert.True(RuntimeInvariantTests.BitIdentical(got, again), "RunLanes is not deterministic");
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void LanesStartingAtZEqualTheWholeLayer(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int V = c.VocabSize, N = c.NLayers, d = c.HeadDim;
            using var b1 = s.CaptureBase(Tokens);
            using var b2 = s.CaptureBase(Other[..6]);
            var lanes = new List<SweepLane>();
            var want = new List<float[]>();
            var rng = new Random(5);
            for (int i = 0; i < 12; i++)
            {
                var b = i % 3 == 2 ? b2 : b1;
                int first = rng.Next(N), from = rng.Next(b.Length), head = i % c.NHeads;
                var kind = (i % 3) switch { 0 => HookKind.Z, 1 => HookKind.AttnOut, _ => HookKind.MlpOut };
                var fn = kind == HookKind.Z
                    ? new HookFn(tap => { for (int r = 0; r < tap.Shape.D0; r++) tap.Row(r).Slice(head * d, d).Clear(); })
                    : SetRow(Math.Min(b.Length - 1, from + i % 2), 0.25f * (i + 1));
                // Half start at z, half run the whole first layer: both kinds share the passes and layers.
                lanes.Add(new SweepLane(b, first, from, [new LaneHook(kind, first, fn)], LastRowOnly: i % 4 == 1, FromZ: i % 2 == 0));
                using (s.Hooks.Add(kind, first, fn)) want.Add(s.RunFrom(b, first, from).ToArray());
            }
            var got = s.RunLanes(lanes.ToArray()).ToArray();
            for (int i = 0; i < lanes.Count; i++)
                Close(got.AsSpan(i * V, V), want[i], $"{fixture}/{backend}: lane {i} (first layer {lanes[i].FirstLayer}, row {lanes[i].FromRow}, from z {lanes[i].FromZ})");
            // Every lane from z at one layer (no lane runs that layer's attention), and a single lane from z.
            var allZ = lanes.Select(x => x with { FirstLayer = N - 1, FromZ = true, Hooks = [new LaneHook(x.Hooks![0].Kind, N - 1, x.Hooks[0].Fn)] }).ToArray();
            var gotZ = s.RunLanes(allZ).ToArray();
            for (int i = 0; i < allZ.Length; i++)
            {
                float[] w;
                using (s.Hooks.Add(allZ[i].Hooks![0].Kind, N - 1, allZ[i].Hooks![0].Fn)) w = s.RunFrom(allZ[i].Base, N - 1, allZ[i].FromRow).ToArray();
                Close(gotZ.AsSpan(i * V, V), w, $"{fixture}/{backend}: all from z, lane {i}");
                if (i == 0) Close(s.RunLanes([allZ[0]]), w, $"{fixture}/{backend}: one lane from z");
            }
            // A session hook before z at the lane's first layer must fire on it: the lane then runs the whole layer.
            HookFn scaleQ = tap => { foreach (ref var x in tap.Data) x *= 0.5f; };
            using (s.Hooks.Add(HookKind.Q, 0, scaleQ))
            {
                var lane = lanes[0] with { FirstLayer = 0, Hooks = [new LaneHook(lanes[0].Hooks![0].Kind, 0, lanes[0].Hooks![0].Fn)] };
                float[] w;
                using (s.Hooks.Add(lane.Hooks![0].Kind, 0, lane.Hooks[0].Fn)) w = s.RunFrom(lane.Base, 0, lane.FromRow).ToArray();
                Close(s.RunLanes([lane, lanes[1]])[..V], w, $"{fixture}/{backend}: from z with a session hook on q");
            }
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void SelectedLogitColumnsEqualTheFullUnembedding(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int V = c.VocabSize;
            using var b = s.CaptureBase(Tokens);
            HookFn zeroHead = tap => { for (int r = 0; r < tap.Shape.D0; r++) tap.Row(r)[..c.HeadDim].Clear(); };
            var lanes = Enumerable.Range(0, 5).Select(i => new SweepLane(b, i % c.NLayers, i % 3, [new LaneHook(HookKind.Z, i % c.NLayers, zeroHead)], LastRowOnly: i % 2 == 0)).ToArray();
            var full = s.RunLanes(lanes).ToArray();
            int[] columns = [3, V - 1, 0, 3];
            var selected = s.RunLanes(lanes, columns).ToArray();
            Assert.Equal(lanes.Length * columns.Length, selected.Length);
            for (int i = 0; i < lanes.Length; i++)
                for (int j = 0; j < columns.Length; j++)
                    Assert.True(BitConverter.SingleToInt32Bits(selected[i * columns.Length + j]) == BitConverter.SingleToInt32Bits(full[i * V + columns[j]]),
                        $"{fixture}/{backend}: lane {i}, column {columns[j]}: {selected[i * columns.Length + j]} vs {full[i * V + columns[j]]}");
            // Another set of columns, then the first again (the selection is rebuilt each time it changes).
            var other = s.RunLanes(lanes, [V / 2]).ToArray();
            for (int i = 0; i < lanes.Length; i++) Assert.Equal(full[i * V + V / 2], other[i]);
            Assert.Equal(selected, s.RunLanes(lanes, columns).ToArray());
            Assert.Throws<ArgumentOutOfRangeException>(() => s.RunLanes(lanes, [V]));
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void LaneHooksOnThePatternMaterialiseOnlyTheirLane(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            int V = model.Config.VocabSize;
            using var b = s.CaptureBase(Tokens);
            int calls = 0;
            HookFn flatten = tap =>
            {
                calls++;
                // pattern [H, rows, Tk]: head 0's rows at positions >= 3 become uniform over their visible keys.
                int rows = tap.Shape.D1, keys = tap.Shape.D2;
                for (int r = Math.Max(0, 3 - tap.Pos0); r < rows; r++)
                {
                    int visible = tap.Pos0 + r + 1;
                    var row = tap.Data.Slice(r * keys, keys);
                    row.Clear();
                    row[..visible].Fill(1f / visible);
                }
            };
            float[] want;
            using (s.Hooks.Add(HookKind.Pattern, 1, flatten)) want = Last(s.Run(Tokens), V);
            float[] plainFrom = s.RunFrom(b, 0, 3).ToArray();
            calls = 0;
            var got = s.RunLanes([new SweepLane(b, 1, 3, [new LaneHook(HookKind.Pattern, 1, flatten)]), new SweepLane(b, 0, 3)]).ToArray();
            Assert.Equal(1, calls);
            Close(got.AsSpan(0, V), want, $"{fixture}/{backend}: the lane with a pattern hook");
            Close(got.AsSpan(V, V), plainFrom, $"{fixture}/{backend}: the lane without");
        }
    }

    /// <summary>A last-row-only lane: taps of the last layer from attn_scores on (and ln_final) see the last row alone; earlier taps every row.</summary>
    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void LastRowOnlyLanesShowTheLastLayerAsOneRow(string fixture, string backend)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int N = c.NLayers, T = Tokens.Length, V = c.VocabSize;
            using var b = s.CaptureBase(Tokens);
            var seen = new Dictionary<string, (int Pos0, int Rows)>();
            HookFn record = tap => seen[tap.Name] = (tap.Pos0, tap.Kind is HookKind.Pattern or HookKind.AttnScores ? tap.Shape.D1 : tap.Shape.D0);
            var hooks = HookPoints.All(c).Where(n => n.StartsWith($"blocks.{N - 1}.", StringComparison.Ordinal))
                .Select(n => { HookPoints.TryParse(n, out var k, out int l); return new LaneHook(k, l, record); }).ToList();
            var got = s.RunLanes([new SweepLane(b, N - 1, 2, hooks, LastRowOnly: true), new SweepLane(b, N - 2, 1, null, LastRowOnly: true)]).ToArray();
            foreach (var (name, (pos0, rows)) in seen)
            {
                HookPoints.TryParse(name, out var kind, out _);
                if (kind >= HookKind.AttnScores) Assert.True((pos0, rows) == (T - 1, 1), $"{name}: rows {pos0}+{rows}");
                else Assert.True((pos0, rows) == (2, T - 2), $"{name}: rows {pos0}+{rows}");
            }
            Assert.Equal(hooks.Count, seen.Count);
            Close(got.AsSpan(0, V), b.LastLogits, $"{fixture}/{backend}: recorded lane");
            Close(got.AsSpan(V, V), b.LastLogits, $"{fixture}/{backend}: second lane");
        }
    }

    [Fact]
    public void BadLanesAreRefused()
    {
        var (model, s) = RuntimeInvariantTests.Open("gpt2", "cpu");
        var (model2, s2) = RuntimeInvariantTests.Open("gpt2", "cpu");
        using (model) using (s) using (model2) using (s2)
        {
            using var b = s.CaptureBase(Tokens);
            Assert.Throws<ArgumentOutOfRangeException>(() => s.RunFrom(b, model.Config.NLayers + 1, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => s.RunFrom(b, 0, Tokens.Length));
            Assert.Throws<ArgumentException>(() => s2.RunFrom(b, 0, 0));
            Assert.Throws<ArgumentException>(() => s.RunLanes([new SweepLane(b, 0, 0, [new LaneHook(HookKind.Embed, -1, _ => { })])]));
            Assert.Throws<ArgumentException>(() => s.RunLanes(ReadOnlySpan<SweepLane>.Empty));
            // A lane starting at z cannot carry a hook on a tap its first layer no longer computes.
            Assert.Throws<ArgumentException>(() => s.RunLanes([new SweepLane(b, 1, 0, [new LaneHook(HookKind.Q, 1, _ => { })], FromZ: true)]));
        }
    }
}
