using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Sweeps;

/// <summary>
/// The device form of the sweeps' lane hooks (<see cref="LaneHook.Device"/>) against their host form
/// (<see cref="LaneHook.Fn"/>, the definition): on random taps of the shapes a lane sees (rows from several Pos0 to
/// T − 1, last-row-only taps of one row at T − 1, shorter taps), the blocks applied with
/// <see cref="DeviceIntervention.ApplyHost"/> give the host hook's result bit for bit, and a position before the tap's
/// first row is refused by both (<see cref="SweepScheduleException"/>). The hooks are the very ones the methods build:
/// collected through <see cref="SweepOptions.OnCell"/> from activation patching (every activation, per position and
/// not), zero / mean / resample ablation of heads and neurons, and causal tracing's restorations.
/// </summary>
public class LaneHookDeviceFormTests
{
    /// <summary>Sweep options that collect the cells and skip every pass (all cells "recorded").</summary>
    static SweepOptions Collect(List<SweepCell> into) => new() { OnCell = into.Add, Recorded = _ => true };

    sealed record Case(string Method, SweepCell Cell);

    static List<Case> MethodCells(string fixture, out ModelConfig config, out int T)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var s = new Session(model, new SessionOptions { Backend = "cpu", Capacity = 24 });
        var c = model.Config;
        config = c;
        var clean = Fixture.Ints(fx.Interp.GetProperty("clean_tokens"));
        var corrupt = Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"));
        T = clean.Length;
        var cases = new List<Case>();
        void Add(string method, List<SweepCell> cells)
        {
            Assert.NotEmpty(cells);
            cases.AddRange(cells.Select(x => new Case(method, x)));
        }
        foreach (var act in Enum.GetValues<PatchActivation>())
            foreach (bool perPos in ActivationPatching.IsPerHead(act) ? new[] { false, true } : [false])
                foreach (var dir in new[] { PatchDirection.Denoise, PatchDirection.Noise })
                {
                    if (act == PatchActivation.ResidMid && c.ParallelResidual) continue;
                    if (dir == PatchDirection.Noise && act != PatchActivation.ResidPost) continue;
                    var cells = new List<SweepCell>();
                    ActivationPatching.Run(s, clean, corrupt, null, null, new PatchOptions { Activation = act, PerPosition = perPos, Direction = dir, Sweep = Collect(cells) });
                    Add($"patch {act}{(perPos ? " per position" : "")} {dir}", cells);
                }
        HeadRef[] heads = [new(0, 1), new(c.NLayers - 1, c.NHeads - 1)];
        NeuronRef[] neurons = [new(0, 3), new(c.NLayers - 1, c.DMlp - 1)];
        foreach (var mode in Enum.GetValues<AblationMode>())
            foreach (bool together in new[] { false, true })
            {
                var cells = new List<SweepCell>();
                HeadAblation.Run(s, clean, null, new AblationOptions
                {
                    Mode = mode, Heads = heads, Neurons = neurons, Together = together, Sweep = Collect(cells),
                    MeanPrompts = [corrupt, clean[..5]], ResamplePrompts = [corrupt, clean.Reverse().ToArray()],
                });
                Add($"ablate {mode}{(together ? " together" : "")}", cells);
            }
        {
            var cells = new List<SweepCell>();
            HeadAblation.Run(s, clean, null, new AblationOptions { Sweep = Collect(cells) });   // every head, zero
            Add("ablate every head", cells);
        }
        {
            var cells = new List<SweepCell>();
            var noise = TraceNoise.Generate(model, 2, null, samples: 1, seed: 4);
            CausalTrace.Run(s, clean, [1, 2], noise, null, new TraceOptions { Window = 2, Sweep = Collect(cells) });
            Add("causal trace", cells);
        }
        return cases;
    }

    /// <summary>The (Pos0, rows) of the taps a hook is tried on: lanes from several rows to T − 1, a last-row-only tap, shorter row-first taps.</summary>
    static IEnumerable<(int Pos0, int Rows)> Calls(SweepCell cell, HookKind kind, int T)
    {
        var starts = new SortedSet<int> { 0, cell.FromRow, Math.Min(T - 1, cell.FromRow + 1), T / 2, T - 1 };
        foreach (int p in starts) yield return (p, T - p);
        if (kind is not (HookKind.Pattern or HookKind.AttnScores))
        {
            yield return (cell.FromRow, 1);                          // one row (a decode step)
            if (T - cell.FromRow > 2) yield return (cell.FromRow, T - cell.FromRow - 1);
        }
    }

    /// <summary>Runs the host hook and the device form's blocks on copies of one random tap; false when both refused the call.</summary>
    static bool Same(LaneHook hook, ModelConfig c, int pos0, int rows, Random rng, string what, out bool changed)
    {
        var shape = HookPoints.Shape(c, hook.Kind, rows, pos0 + rows);
        var data = new float[shape.Elements];
        for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.NextDouble() * 4 - 2);
        if (data.Length > 3) { data[1] = float.NaN; data[3] = -0f; }
        var host = (float[])data.Clone();
        var dev = (float[])data.Clone();
        var name = HookPoints.Name(hook.Kind, hook.Layer);
        bool hostRefused = false, devRefused = false;
        try { hook.Fn(new Tap(host, hook.Kind, hook.Layer, name, shape, pos0)); }
        catch (SweepScheduleException) { hostRefused = true; }
        try
        {
            var call = new TapCall(hook.Kind, hook.Layer, shape, pos0);
            var blocks = hook.Device!(call).ToList();
            var (r, cols) = HookRegistry.InterventionView(hook.Kind, shape);
            Assert.Equal((call.Rows, call.Cols), (r, cols));
            foreach (var b in blocks) b.ApplyHost(dev, r, cols);
        }
        catch (SweepScheduleException) { devRefused = true; }
        Assert.True(hostRefused == devRefused, $"{what}: host refused {hostRefused}, device form refused {devRefused}");
        changed = false;
        if (hostRefused) return false;
        for (int i = 0; i < data.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(host[i]) == BitConverter.SingleToInt32Bits(dev[i]), $"{what}: [{i}] host {host[i]:R} device form {dev[i]:R}");
            changed |= BitConverter.SingleToInt32Bits(host[i]) != BitConverter.SingleToInt32Bits(data[i]);
        }
        return true;
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void EverySweepHookHasADeviceFormEqualToItsHostHook(string fixture)
    {
        var cases = MethodCells(fixture, out var c, out int T);
        var rng = new Random(11);
        var applied = new Dictionary<string, int>();
        int refused = 0, changed = 0, calls = 0;
        foreach (var (method, cell) in cases)
            foreach (var (site, hook) in cell.Patches)
            {
                Assert.True(hook.Device != null, $"{method}: the hook on {hook.Kind} L{hook.Layer} has no device form");
                foreach (var (pos0, rows) in Calls(cell, hook.Kind, T))
                {
                    string what = $"{fixture} {method}: {site} at Pos0 {pos0}, {rows} rows";
                    calls++;
                    if (!Same(hook, c, pos0, rows, rng, what, out bool ch)) { refused++; continue; }
                    if (ch) changed++;
                    applied[method] = applied.GetValueOrDefault(method) + 1;
                }
            }
        // every method's hooks were compared on taps they write, some calls were refused (site before the tap)
        Assert.All(cases.Select(x => x.Method).Distinct(), m => Assert.True(applied.GetValueOrDefault(m) > 0, $"{m}: no call compared"));
        Assert.True(refused > 0, "no call before a site");
        Assert.True(changed > calls / 3, $"only {changed} of {calls} calls changed the tap");
    }

    /// <summary>
    /// The SitePatch hooks the methods do not all use on every kind of site: a fill with a constant (0, −0, 0.5) of a
    /// row, a head of z and a pattern row; a fill from a table entry of a many-cell site (falls back to a fill array);
    /// per-head values; copies into the last-row-only tap of the last layer's pattern.
    /// </summary>
    [Fact]
    public void SitePatchHooksOfEveryFormMatchTheHostHook()
    {
        using var fx = new Fixture("llama");
        using var model = Model.Load(fx.Folder);
        var c = model.Config;
        const int T = 7;
        var rng = new Random(5);
        var full = (HookKind k) => { var x = new float[HookPoints.Shape(c, k, T, T).Elements]; for (int i = 0; i < x.Length; i++) x[i] = (float)rng.NextDouble() - 0.5f; return x; };
        var table = Enumerable.Range(0, c.QDim + c.DMlp + c.DModel).Select(i => MathF.Sin(i * 0.3f)).ToArray();
        Site[] sites =
        [
            new(HookKind.ResidPre, 1, Position: 3), new(HookKind.ResidPost, 0), new(HookKind.Z, 1, Head: 2), new(HookKind.Z, 0, Position: 4, Head: 1),
            new(HookKind.Pattern, 1, Position: T - 1, Head: 0), new(HookKind.Pattern, 0, Head: 3), new(HookKind.AttnScores, 1, Position: 2),
            new(HookKind.MlpPost, 1, Index: 5), new(HookKind.MlpPost, 0, Position: 6, Index: 2), new(HookKind.K, 1, Head: c.NKvHeads - 1),
        ];
        int compared = 0;
        foreach (var site in sites)
        {
            var fullShape = HookPoints.Shape(c, site.Kind, T, T);
            var patch = new SitePatch(site, fullShape);
            var hooks = new List<(string, LaneHook)>
            {
                ("copy", patch.CopyHook(site.Kind, site.Layer, full(site.Kind))),
                ("fill 0", patch.FillHook(site.Kind, site.Layer, 0f)),
                ("fill -0", patch.FillHook(site.Kind, site.Layer, -0f)),
                ("fill 0.5", patch.FillHook(site.Kind, site.Layer, 0.5f)),
                ("fill table[7]", patch.FillHook(site.Kind, site.Layer, table, 7)),
            };
            if (site.Head != null && site.Kind is HookKind.Z or HookKind.K) hooks.Add(("per head", patch.SetPerHeadHook(site.Kind, site.Layer, table)));
            foreach (var (form, hook) in hooks)
                foreach (int pos0 in new[] { 0, 2, T - 1 })
                    if (Same(hook, c, pos0, T - pos0, rng, $"{site} {form} at Pos0 {pos0}", out bool changed))
                    {
                        Assert.True(changed, $"{site} {form} at Pos0 {pos0}: nothing written");
                        compared++;
                    }
        }
        Assert.True(compared > 80, $"{compared} calls compared");
        // a zero fill is a Zero block, a fill of −0 is not (Zero writes +0)
        var z = new SitePatch(new Site(HookKind.Z, 0, Head: 1), HookPoints.Shape(c, HookKind.Z, T, T));
        var call = new TapCall(HookKind.Z, 0, HookPoints.Shape(c, HookKind.Z, T, T), 0);
        Assert.Equal(InterventionOp.Zero, Assert.Single(z.FillHook(HookKind.Z, 0, 0f).Device!(call)).Op);
        Assert.Equal(InterventionOp.Set, Assert.Single(z.FillHook(HookKind.Z, 0, -0f).Device!(call)).Op);
        // a head over every position is one block; a copy reads the source in place
        var src = full(HookKind.Z);
        var copy = Assert.Single(z.CopyHook(HookKind.Z, 0, src).Device!(call));
        Assert.Same(src, copy.Values);
        Assert.Equal((T, c.HeadDim, (int?)c.QDim, c.HeadDim), (copy.RowCount, copy.ColStart, copy.ValueStride, copy.ValueOffset));
    }
}
