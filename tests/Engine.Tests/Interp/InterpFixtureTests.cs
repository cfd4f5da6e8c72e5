using System.Text.Json;
using Engine.Interp;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Interp;

/// <summary>
/// The five specified methods (SPEC "Interpretability algorithms") against expected.json["interp"] of every fixture,
/// with SPEC's tolerances: lens ids exact and probs 1e-5; patched 1e-4, normalized 1e-3; ablation delta 1e-4;
/// causal trace 1e-5; DLA heads/mlp 1e-4 and sum_of_parts ≈ logit. Every fixture on backends cpu and cpu-ref.
/// </summary>
public class InterpFixtureTests
{
    /// <summary>Every fixture on both backends (cpu-ref is the scalar reference backend: slower, so these tests dominate the Interp time).</summary>
    public static IEnumerable<object[]> Cases() =>
        TestPaths.RandomFixtures.Select(f => new object[] { f, "cpu" })
            .Concat(TestPaths.RandomFixtures.Select(f => new object[] { f, "cpu-ref" }));

    internal static void Near(IEnumerable<double> got, JsonElement want, double tol, string what)
    {
        var g = got.ToArray();
        var w = Fixture.Doubles(want);
        Assert.True(g.Length == w.Length, $"{what}: {g.Length} values, expected {w.Length}");
        double max = 0; int worst = -1;
        for (int i = 0; i < g.Length; i++)
        {
            double d = Math.Abs(g[i] - w[i]);
            if (!(d <= max)) { max = d; worst = i; }
        }
        Assert.True(max <= tol, $"{what}: max |diff| {max:E3} > {tol:E1} at {worst} (got {g[Math.Max(worst, 0)]}, want {w[Math.Max(worst, 0)]})");
    }

    internal static void Near(double got, JsonElement want, double tol, string what) => Near([got], JsonDocument.Parse($"[{want.GetRawText()}]").RootElement, tol, what);

    static (Fixture, Model, Session) Open(string fixture, string backend)
    {
        var fx = new Fixture(fixture);
        var model = Model.Load(fx.Folder);
        var session = new Session(model, new SessionOptions { Backend = backend, Capacity = 64, AllLogits = false });
        return (fx, model, session);
    }

    internal static void CheckLens(Session session, JsonElement it, string name)
    {
        var ll = it.GetProperty("logit_lens");
        var r = LogitLens.Run(session, Fixture.Ints(ll.GetProperty("tokens")), ll.GetProperty("k").GetInt32());
        var wantIds = Fixture.Flatten(ll.GetProperty("top_ids")).Select(x => (int)x).ToArray();
        var gotIds = r.TopIds.SelectMany(a => a.SelectMany(b => b)).ToArray();
        Assert.Equal(wantIds, gotIds);
        Near(r.TopProbs.SelectMany(a => a.SelectMany(b => b)), ll.GetProperty("top_probs"), 1e-5, $"{name} lens top_probs");
    }

    internal static void CheckPatch(Session session, JsonElement it, string name)
    {
        var rp = it.GetProperty("resid_pre_patching");
        var r = ActivationPatching.Run(session, Fixture.Ints(it.GetProperty("clean_tokens")), Fixture.Ints(it.GetProperty("corrupt_tokens")),
            it.GetProperty("answer_token").GetInt32(), it.GetProperty("wrong_token").GetInt32());
        Near(r.Patched.Data, rp.GetProperty("patched"), 1e-4, $"{name} patched");
        Near(r.Normalized.Data, rp.GetProperty("normalized"), 1e-3, $"{name} normalized");
        Near(r.CleanMetric, rp.GetProperty("clean_metric"), 1e-4, $"{name} clean_metric");
        Near(r.CorruptMetric, rp.GetProperty("corrupt_metric"), 1e-4, $"{name} corrupt_metric");
    }

    internal static void CheckAblation(Session session, JsonElement it, string name)
    {
        var ha = it.GetProperty("head_zero_ablation");
        var r = HeadAblation.Run(session, Fixture.Ints(ha.GetProperty("tokens")), ha.GetProperty("target_token").GetInt32());
        Near(r.Delta!.Data, ha.GetProperty("delta"), 1e-4, $"{name} ablation delta");
        Near(r.Base, ha.GetProperty("base"), 1e-4, $"{name} ablation base");
    }

    internal static void CheckTrace(Session session, string folder, JsonElement it, string name)
    {
        var ct = it.GetProperty("causal_trace");
        var noise = TraceNoise.FromFile(Path.Combine(folder, ct.GetProperty("noise_file").GetString()!), session.Config.DModel);
        var r = CausalTrace.Run(session, Fixture.Ints(ct.GetProperty("tokens")), Fixture.Ints(ct.GetProperty("subject_positions")), noise,
            ct.GetProperty("target_token").GetInt32(), new TraceOptions { Window = ct.GetProperty("window").GetInt32() });
        Near(r.CleanProb, ct.GetProperty("clean_prob"), 1e-5, $"{name} clean_prob");
        Near(r.CorruptProb, ct.GetProperty("corrupt_prob"), 1e-5, $"{name} corrupt_prob");
        Near(r.Resid!.Data, ct.GetProperty("resid"), 1e-5, $"{name} trace resid");
        Near(r.Mlp!.Data, ct.GetProperty("mlp"), 1e-5, $"{name} trace mlp");
        Near(r.Attn!.Data, ct.GetProperty("attn"), 1e-5, $"{name} trace attn");
    }


    internal static void CheckDla(Session session, JsonElement it, string name)
    {
        var dl = it.GetProperty("direct_logit_attribution");
        var r = DirectLogitAttribution.Run(session, Fixture.Ints(dl.GetProperty("tokens")), dl.GetProperty("target_token").GetInt32());
        Near(r.Heads.Data, dl.GetProperty("heads"), 1e-4, $"{name} dla heads");
        Near(r.Mlp, dl.GetProperty("mlp"), 1e-4, $"{name} dla mlp");
        Near(r.AttnBias, dl.GetProperty("attn_bias"), 1e-4, $"{name} dla attn_bias");
        Near(r.Embed, dl.GetProperty("embed"), 1e-4, $"{name} dla embed");
        Near(r.LnFinalBiasTerm, dl.GetProperty("ln_final_bias_term"), 1e-4, $"{name} dla ln_final_bias_term");
        Near(r.Logit, dl.GetProperty("logit"), 1e-4, $"{name} dla logit");
        Assert.True(Math.Abs(r.SumOfParts - r.Logit) <= 1e-4 * Math.Max(1, Math.Abs(r.Logit)), $"{name}: sum_of_parts {r.SumOfParts} != logit {r.Logit}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void LogitLensMatches(string fixture, string backend)
    {
        var (fx, model, session) = Open(fixture, backend);
        using (fx) using (model) using (session) CheckLens(session, fx.Interp, $"{fixture}/{backend}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void ResidPrePatchingMatches(string fixture, string backend)
    {
        var (fx, model, session) = Open(fixture, backend);
        using (fx) using (model) using (session) CheckPatch(session, fx.Interp, $"{fixture}/{backend}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void HeadZeroAblationMatches(string fixture, string backend)
    {
        var (fx, model, session) = Open(fixture, backend);
        using (fx) using (model) using (session) CheckAblation(session, fx.Interp, $"{fixture}/{backend}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void CausalTraceMatches(string fixture, string backend)
    {
        var (fx, model, session) = Open(fixture, backend);
        using (fx) using (model) using (session)
            CheckTrace(session, fx.Folder, fx.Interp, $"{fixture}/{backend}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void DirectLogitAttributionMatches(string fixture, string backend)
    {
        var (fx, model, session) = Open(fixture, backend);
        using (fx) using (model) using (session) CheckDla(session, fx.Interp, $"{fixture}/{backend}");
    }

    [SharedTheory("fixtures", "stories260k")]
    [InlineData("cpu")]
    [InlineData("cpu-ref")]
    public void Stories260kAllMethodsMatch(string backend)
    {
        var (fx, model, session) = Open("stories260k", backend);
        using (fx) using (model) using (session)
        {
            string name = $"stories260k/{backend}";
            CheckLens(session, fx.Interp, name);
            CheckPatch(session, fx.Interp, name);
            CheckAblation(session, fx.Interp, name);
            CheckTrace(session, fx.Folder, fx.Interp, name);
            CheckDla(session, fx.Interp, name);
        }
    }
}
