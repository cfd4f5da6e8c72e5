using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Runtime;

/// <summary>
/// Every random-weight fixture (tests/fixtures; stories260k is in Stories260kTests), on every CPU backend: logits of every prompt, every tap of prompt 0, and the greedy continuation
/// through the KV cache, against the float64 PyTorch reference (tolerances from SPEC.md: ~1e-4 for logits/activations).
/// </summary>
public class FixtureParityTests
{
    public static IEnumerable<object[]> Cases() =>
        from f in TestPaths.RandomFixtures
        from b in new[] { "cpu", "cpu-ref" }
        select new object[] { f, b };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LogitsOfEveryPromptMatch(string fixture, string backend)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var session = new Session(model, new SessionOptions { Backend = backend });
        int V = model.Config.VocabSize;
        int i = 0;
        foreach (var p in fx.Prompts)
        {
            var tokens = Fixture.Ints(p.GetProperty("tokens"));
            var logits = session.Run(tokens).ToArray();
            Assert.Equal(tokens.Length * V, logits.Length);
            if (fx.HasActivation($"prompt{i}.logits"))
            {
                var (all, _) = fx.Activation($"prompt{i}.logits");
                Compare.Close(logits, all, 1e-4, $"{fixture} prompt {i} logits [T, V]");
            }
            var last = logits.AsSpan((tokens.Length - 1) * V, V);
            if (p.TryGetProperty("logits_last", out var ll))
                Compare.Close(last, Fixture.Doubles(ll), 1e-4, $"{fixture} prompt {i} logits_last");
            var top = p.GetProperty("top20_last");
            var ids = Fixture.Ints(top.GetProperty("ids"));
            var topLogits = Fixture.Doubles(top.GetProperty("logits"));
            for (int r = 0; r < ids.Length; r++)
                Assert.True(Math.Abs(last[ids[r]] - topLogits[r]) <= 1e-4 * Math.Max(1, Math.Abs(topLogits[r]) / 10), $"{fixture} prompt {i} top20 logit of {ids[r]}");
            var argmax = Fixture.Ints(p.GetProperty("argmax_per_position"));
            var lse = Fixture.Doubles(p.GetProperty("logsumexp_per_position"));
            for (int t = 0; t < tokens.Length; t++)
            {
                var row = logits.AsSpan(t * V, V);
                Assert.Equal(argmax[t], Session.ArgMax(row));
                double max = double.NegativeInfinity, sum = 0;
                foreach (var x in row) max = Math.Max(max, x);
                foreach (var x in row) sum += Math.Exp(x - max);
                Assert.True(Math.Abs(max + Math.Log(sum) - lse[t]) <= 1e-4 * Math.Max(1, Math.Abs(lse[t]) / 10), $"{fixture} prompt {i} logsumexp at {t}");
            }
            i++;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryTapOfPrompt0Matches(string fixture, string backend)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var session = new Session(model, new SessionOptions { Backend = backend });
        var tokens = Fixture.Ints(fx.Prompts.First().GetProperty("tokens"));
        var (_, cache) = session.RunWithCache(tokens);
        var keys = fx.ActivationKeys.Where(k => k.StartsWith("prompt0.") && !k.EndsWith(".logits")).ToList();
        Assert.NotEmpty(keys);
        foreach (var key in keys)
        {
            string hook = key["prompt0.".Length..];
            Assert.True(cache.Contains(hook), $"{fixture}: tap {hook} missing");
            var (want, shape) = fx.Activation(key);
            var got = cache[hook];
            Assert.Equal(shape.Select(x => (int)x).ToArray(), got.Shape);
            Compare.Close(got.Data, want, 1e-4, $"{fixture} {hook}");
        }
        // The taps we produce are exactly those of the reference (no more, no fewer).
        var expectedNames = keys.Select(k => k["prompt0.".Length..]).Order().ToArray();
        Assert.Equal(expectedNames, cache.Names.Order().ToArray());
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GreedyContinuationMatchesThroughKvCache(string fixture, string backend)
    {
        using var fx = new Fixture(fixture);
        using var model = Model.Load(fx.Folder);
        using var session = new Session(model, new SessionOptions { Backend = backend, AllLogits = false });
        var p0 = fx.Prompts.First();
        var tokens = Fixture.Ints(p0.GetProperty("tokens"));
        var want = Fixture.Ints(p0.GetProperty("greedy_continuation"));
        var got = session.Generate(tokens, want.Length, new SamplingOptions { StopAtEos = false });
        Assert.Equal(want, got);
    }
}
