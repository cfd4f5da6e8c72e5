using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Sweeps;

/// <summary>
/// The sweep fast path (cached states, restarts at the patched layer and position, batched lanes) against the naive
/// mode (one full forward pass per cell, the definition) on every fixture: the same cells in the same order and shape,
/// every value within 1e-5 (relative above 1). Causal tracing (resid, mlp, attn), activation patching of every
/// activation (by layer and position; per head over all positions and per position; both directions), head and neuron
/// ablation (zero, mean, resample, together). Each fast sweep also runs with one lane per pass and under a tiny
/// workspace bound (so batching cannot matter), and every scheduled cell starts exactly at its first patched layer and
/// position, never after one of them.
/// </summary>
public class SweepEquivalenceTests
{
    public static IEnumerable<object[]> Fixtures() => TestPaths.RandomFixtures.Select(f => new object[] { f });

    const double Tol = 1e-5;

    static (Fixture Fx, Model Model, Session Session) Open(string fixture, string backend = "cpu")
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        return (fx, model, new Session(model, new SessionOptions { Backend = backend, Capacity = 64, AllLogits = false }));
    }

    /// <summary>
    /// Fast variants of a sweep: default batching, one lane per pass, a workspace bound that forces tiny passes, and the
    /// whole last layer computed (no last-row-only shortcut).
    /// </summary>
    static IEnumerable<(string Name, SweepOptions Options)> FastVariants(List<SweepCell> scheduled) =>
    [
        ("batched", new SweepOptions { OnCell = scheduled.Add }),
        ("one lane per pass", new SweepOptions { MaxRows = 1, OnCell = scheduled.Add }),
        ("streaming (64 KiB workspace)", new SweepOptions { MaxWorkspaceBytes = 64 << 10, OnCell = scheduled.Add }),
        ("whole last layer", new SweepOptions { LastRowOnly = false, OnCell = scheduled.Add }),
    ];

    internal static void SameGrid(Grid? want, Grid? got, string what, double tol = Tol)
    {
        Assert.True((want == null) == (got == null), $"{what}: one of the grids is missing");
        if (want == null) return;
        Assert.Equal(want.Shape, got!.Shape);
        for (int i = 0; i < want.Data.Length; i++)
        {
            double w = want.Data[i], g = got.Data[i];
            if (double.IsNaN(w)) { Assert.True(double.IsNaN(g), $"{what}[{i}]: {g} where the naive run has NaN"); continue; }
            Assert.True(Math.Abs(w - g) <= tol * Math.Max(1, Math.Abs(w)), $"{what}[{i}]: fast {g:R} vs naive {w:R} (|diff| {Math.Abs(w - g):E2})");
        }
    }

    static void Same(double want, double got, string what) =>
        Assert.True(Math.Abs(want - got) <= Tol * Math.Max(1, Math.Abs(want)), $"{what}: fast {got:R} vs naive {want:R}");

    /// <summary>Every scheduled cell starts at the lowest layer and position it writes (resid_post lifted to the next resid_pre).</summary>
    static void StartsExactlyAtItsSites(Model model, List<SweepCell> scheduled, int expectedCells, string what)
    {
        Assert.Equal(expectedCells, scheduled.Count);
        var c = model.Config;
        foreach (var cell in scheduled)
        {
            Assert.True(cell.StartsBeforeItsSites(c), $"{what}: a cell starts after one of its sites");
            var lifted = cell.Sites.Select(s => SweepCell.Lift(c, s)).ToArray();
            Assert.Equal(lifted.Min(s => s.Layer), cell.FirstLayer);
            Assert.Equal(lifted.Min(s => s.Position ?? 0), cell.FromRow);
        }
        scheduled.Clear();
    }

    [Theory, MemberData(nameof(Fixtures))]
    public void CausalTraceFastEqualsNaive(string fixture) => CausalTrace_(fixture, "cpu");

    [SharedFact("fixtures", "stories260k")]
    public void Stories260kFastEqualsNaive() => Stories260k_("cpu");

    /// <summary>The reference backend (scalar, double accumulation): the same on stories260k (~30 s).</summary>
    [SharedFact("fixtures", "stories260k"), Trait("Category", "Slow")]
    public void Stories260kFastEqualsNaiveOnTheReferenceBackend() => Stories260k_("cpu-ref");

    static void Stories260k_(string backend)
    {
        CausalTrace_("stories260k", backend);
        Patching_("stories260k", backend, all: false);
        Ablation_("stories260k", backend);
    }

    [Theory, Trait("Category", "Slow")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gpt_neox")]
    public void CausalTraceFastEqualsNaiveOnTheReferenceBackend(string fixture) => CausalTrace_(fixture, "cpu-ref");

    /// <summary>cpu: the fixture's window and W = 10, every fast variant; cpu-ref (slow): the fixture's window, default batching.</summary>
    static void CausalTrace_(string fixture, string backend)
    {
        bool full = backend == "cpu";
        var (fx, model, s) = Open(fixture, backend);
        using (fx) using (model) using (s)
        {
            var ct = fx.Interp.GetProperty("causal_trace");
            var noise = TraceNoise.FromFile(Path.Combine(fx.Folder, ct.GetProperty("noise_file").GetString()!), model.Config.DModel);
            var tokens = Fixture.Ints(ct.GetProperty("tokens"));
            var subject = Fixture.Ints(ct.GetProperty("subject_positions"));
            int L = model.Config.NLayers, T = tokens.Length;
            foreach (int window in full ? new[] { ct.GetProperty("window").GetInt32(), 10 } : [ct.GetProperty("window").GetInt32()])
            {
                var naive = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Window = window, Sweep = SweepOptions.NaiveMode });
                var scheduled = new List<SweepCell>();
                foreach (var (name, opts) in full ? FastVariants(scheduled) : FastVariants(scheduled).Take(1))
                {
                    int calls = 0, last = 0;
                    var fast = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Window = window, Sweep = opts, Progress = (d, n) => { calls++; last = d; Assert.Equal(noise.Samples * (1 + 3 * L * T), n); } });
                    string what = $"{fixture}/{backend} trace W={window} ({name})";
                    Assert.Equal(noise.Samples * (1 + 3 * L * T), calls);
                    Assert.Equal(calls, last);
                    Assert.Equal(naive.Target, fast.Target);
                    Assert.Equal(naive.CleanProb, fast.CleanProb);            // the same full run
                    Same(naive.CorruptProb, fast.CorruptProb, $"{what} corrupt_prob");
                    SameGrid(naive.Resid, fast.Resid, $"{what} resid");
                    SameGrid(naive.Mlp, fast.Mlp, $"{what} mlp");
                    SameGrid(naive.Attn, fast.Attn, $"{what} attn");
                    StartsExactlyAtItsSites(model, scheduled, noise.Samples * 3 * L * T, what);
                }
            }
            if (!full) return;
            // one kind alone
            var n1 = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Resid = false, Attn = false, Sweep = SweepOptions.NaiveMode });
            var f1 = CausalTrace.Run(s, tokens, subject, noise, null, new TraceOptions { Resid = false, Attn = false });
            Assert.Null(f1.Resid);
            Assert.Null(f1.Attn);
            SameGrid(n1.Mlp, f1.Mlp, $"{fixture}/{backend} trace mlp only");
        }
    }

    [Theory, MemberData(nameof(Fixtures))]
    public void PatchingFastEqualsNaive(string fixture) => Patching_(fixture, "cpu", all: true);

    static void Patching_(string fixture, string backend, bool all)
    {
        var (fx, model, s) = Open(fixture, backend);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            var clean = Fixture.Ints(fx.Interp.GetProperty("clean_tokens"));
            var corrupt = Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"));
            var cases = new List<PatchOptions>
            {
                new() { Activation = PatchActivation.ResidPre },
                new() { Activation = PatchActivation.AttnOut },
                new() { Activation = PatchActivation.MlpOut },
                new() { Activation = PatchActivation.Z },
                new() { Activation = PatchActivation.Z, PerPosition = true },
            };
            if (all)
            {
                cases.AddRange(
                [
                    new() { Activation = PatchActivation.ResidPre, Direction = PatchDirection.Noise, Metric = PatchMetric.Prob },
                    new() { Activation = PatchActivation.ResidPost, Metric = PatchMetric.LogProb },
                    new() { Activation = PatchActivation.Q },
                    new() { Activation = PatchActivation.K, PerPosition = true },
                    new() { Activation = PatchActivation.V },
                    new() { Activation = PatchActivation.Pattern },
                    new() { Activation = PatchActivation.Pattern, PerPosition = true, Direction = PatchDirection.Noise },
                    new() { Activation = PatchActivation.Z, PerPosition = true, Direction = PatchDirection.Noise, Metric = PatchMetric.Normalized },
                ]);
                if (!c.ParallelResidual) cases.Add(new() { Activation = PatchActivation.ResidMid });
            }
            foreach (var o in cases)
            {
                string label = $"{fixture}/{backend} patch {ActivationPatching.Name(o.Activation)}{(o.PerPosition ? " per position" : "")} {o.Direction} {o.Metric}";
                var naive = ActivationPatching.Run(s, clean, corrupt, null, null, o with { Sweep = SweepOptions.NaiveMode });
                var scheduled = new List<SweepCell>();
                foreach (var (name, opts) in all ? FastVariants(scheduled) : FastVariants(scheduled).Take(1))
                {
                    var fast = ActivationPatching.Run(s, clean, corrupt, null, null, o with { Sweep = opts });
                    string what = $"{label} ({name})";
                    Assert.Equal(naive.Axes, fast.Axes);
                    Assert.Equal((naive.AnswerToken, naive.WrongToken), (fast.AnswerToken, fast.WrongToken));
                    Assert.Equal(naive.CleanMetric, fast.CleanMetric);
                    Assert.Equal(naive.CorruptMetric, fast.CorruptMetric);
                    SameGrid(naive.Patched, fast.Patched, $"{what} patched");
                    // normalized = (patched − corrupt) / (clean − corrupt): the patched tolerance divided by |clean − corrupt|
                    if (o.Metric == PatchMetric.Normalized) SameGrid(naive.Values, fast.Values, $"{what} values", Tol / Math.Abs(naive.CleanMetric - naive.CorruptMetric));
                    else SameGrid(naive.Values, fast.Values, $"{what} values");
                    StartsExactlyAtItsSites(model, scheduled, naive.Patched.Data.Length, what);
                }
            }
        }
    }

    [Theory, MemberData(nameof(Fixtures))]
    public void AblationFastEqualsNaive(string fixture) => Ablation_(fixture, "cpu");

    static void Ablation_(string fixture, string backend)
    {
        var (fx, model, s) = Open(fixture, backend);
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            var tokens = Fixture.Ints(fx.Interp.GetProperty("head_zero_ablation").GetProperty("tokens"));
            var corrupt = Fixture.Ints(fx.Interp.GetProperty("corrupt_tokens"));
            var neurons = new List<NeuronRef> { new(0, 1), new(c.NLayers - 1, c.DMlp - 1), new(c.NLayers / 2, 3) };
            var cases = new List<(string Name, AblationOptions Options)>
            {
                ("zero heads (SPEC)", new AblationOptions()),
                ("mean heads", new AblationOptions { Mode = AblationMode.Mean, MeanPrompts = [tokens, corrupt] }),
                ("resample heads, two sources", new AblationOptions { Mode = AblationMode.Resample, ResamplePrompts = [corrupt, tokens], Metric = OutputMetric.Prob }),
                ("zero neurons", new AblationOptions { Neurons = neurons, Metric = OutputMetric.LogProb }),
                ("mean neurons", new AblationOptions { Neurons = neurons, Mode = AblationMode.Mean }),
                ("resample neurons", new AblationOptions { Neurons = neurons, Mode = AblationMode.Resample, ResamplePrompts = [corrupt] }),
                ("heads + neurons together", new AblationOptions { Heads = [new HeadRef(c.NLayers - 1, 0), new HeadRef(1, 1)], Neurons = neurons, Together = true }),
            };
            foreach (var (label, o) in cases)
            {
                var naive = HeadAblation.Run(s, tokens, null, o with { Sweep = SweepOptions.NaiveMode });
                var scheduled = new List<SweepCell>();
                foreach (var (name, opts) in FastVariants(scheduled))
                {
                    var fast = HeadAblation.Run(s, tokens, null, o with { Sweep = opts });
                    string what = $"{fixture}/{backend} ablate {label} ({name})";
                    Assert.Equal(naive.Target, fast.Target);
                    Assert.Equal(naive.Base, fast.Base);
                    SameGrid(naive.Delta, fast.Delta, $"{what} delta");
                    Assert.Equal(naive.Entries.Select(e => e.Label), fast.Entries.Select(e => e.Label));
                    for (int i = 0; i < naive.Entries.Count; i++) Same(naive.Entries[i].Logit, fast.Entries[i].Logit, $"{what} {naive.Entries[i].Label}");
                    StartsExactlyAtItsSites(model, scheduled, naive.Entries.Count * (o.Mode == AblationMode.Resample ? o.ResamplePrompts!.Count : 1), what);
                }
            }
        }
    }

    /// <summary>A cell scheduled after what it patches is refused by the runner, and a hook asked to patch before its tap's rows throws.</summary>
    [Fact]
    public void CellsThatStartAfterTheirSitesAreRefused()
    {
        var (fx, model, s) = Open("gpt2");
        using (fx) using (model) using (s)
        {
            var c = model.Config;
            var tokens = Fixture.Ints(fx.Interp.GetProperty("clean_tokens"));
            int T = tokens.Length;
            using var b = s.CaptureBase(tokens);
            var (_, cache) = s.RunWithCache(tokens, n => n == "blocks.1.hook_resid_pre");
            var patch = new SitePatch(new Site(HookKind.ResidPre, 1, Position: 2), HookPoints.Shape(c, HookKind.ResidPre, T, T));
            var hook = patch.CopyHook(HookKind.ResidPre, 1, cache["blocks.1.hook_resid_pre"].Data);
            PatchSite[] sites = [new(HookKind.ResidPre, 1, 2)];
            SweepPatch[] patches = [new(sites[0], hook)];
            Assert.Equal((1, 2), SweepCell.Plan(c, sites));
            Assert.Equal((2, 2), SweepCell.Plan(c, [new PatchSite(HookKind.ResidPost, 1, 2)]));
            Assert.Equal((c.NLayers - 1, 0), SweepCell.Plan(c, [new PatchSite(HookKind.ResidPost, c.NLayers - 1, null)]));
            foreach (var (first, from) in new[] { (2, 2), (1, 3) })
            {
                var late = new SweepCell(b, first, from, patches);
                Assert.False(late.StartsBeforeItsSites(c));
                Assert.Throws<SweepScheduleException>(() => SweepRunner.Run(s, [late], SweepOptions.Default, (_, _) => { }));
            }
            // the runtime alone: the hook sees rows 3.. and refuses to patch row 2
            Assert.Throws<SweepScheduleException>(() => s.RunLanes([new SweepLane(b, 1, 3, [hook])]));
            // scheduled right, the cell equals the full run with the patch
            var ok = SweepCell.Create(c, b, patches);
            float[] got = [];
            SweepRunner.Run(s, [ok], SweepOptions.Default, (_, last) => got = last.ToArray());
            float[] want = [];
            SweepRunner.RunNaive(s, [ok], (_, last) => want = last.ToArray());
            Compare.Close(got, want, Tol, "a patched cell");
        }
    }
}
