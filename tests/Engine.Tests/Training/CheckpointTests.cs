using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Training;
using Xunit;

namespace Engine.Tests.Training;

/// <summary>
/// The training engine's forward pass against the inference engine: every fixture family loaded into the training
/// layout gives the runtime's logits and activations; trained checkpoints written as HF folders load back with the same
/// logits (within 1e-4).
/// </summary>
public class CheckpointTests
{
    public static IEnumerable<object[]> Cases() =>
        from f in TestPaths.RandomFixtures
        from p in new[] { "f32", "f64" }
        select new object[] { f, p };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LoadedFixtureMatchesTheRuntime(string fixture, string precision)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        using var session = new Session(model, new SessionOptions { Backend = "cpu-ref" });
        var tokens = Enumerable.Range(0, 11).Select(i => (i * 37 + 5) % model.Config.VocabSize).ToArray();
        var names = new[] { HookKind.ResidPre, HookKind.AttnOut, HookKind.Z, HookKind.Pattern, HookKind.MlpPost, HookKind.ResidPost, HookKind.Q, HookKind.V };
        var (logits, cache) = session.RunWithCache(tokens, n => HookPoints.TryParse(n, out var k, out _) && names.Contains(k));
        var want = logits.ToArray();
        if (precision == "f32") Check(Checkpoint.FromModel<float>(model, threads: 2));
        else Check(Checkpoint.FromModel<double>(model, threads: 2));

        void Check<T>(Transformer<T> t) where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
        {
            t.Forward(tokens, 1, tokens.Length);
            AssertClose(want, t.Logits, 1e-4, $"{fixture} {precision} logits");
            for (int l = 0; l < model.Config.NLayers; l++)
                foreach (var k in names)
                    AssertClose(cache[HookPoints.Name(k, l)].Data, t.Activation(k, l), 1e-4, $"{fixture} {precision} {HookPoints.Name(k, l)}");
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void SavedCheckpointLoadsBackWithTheSameLogits(string family)
    {
        using var dir = new TempDir();
        var spec = new ArchSpec(family, 2, 32, 4, 64, 50, 24) { KvHeads = family == "llama" ? 2 : 0, Tied = family == "gpt2" };
        var t = new Transformer<float>(spec.ToModelConfig(), threads: 2);
        t.Initialize(7, std: 0.2);
        Checkpoint.Save(t, spec, dir.Path);
        using var model = Model.Load(dir.Path);
        Assert.Equal(family, model.Config.ModelType);
        Assert.Empty(model.UnusedTensors);
        using var session = new Session(model, new SessionOptions { Backend = "cpu" });
        var rng = new Rng(3);
        const int B = 3, S = 17;
        var batch = Enumerable.Range(0, B * S).Select(_ => rng.Next(50)).ToArray();
        t.Forward(batch, B, S);
        var all = t.Logits.ToArray();
        for (int b = 0; b < B; b++)
        {
            var want = session.Run(batch.AsSpan(b * S, S)).ToArray();
            AssertClose(want, all.AsSpan(b * S * 50, S * 50), 1e-4, $"{family} sequence {b}");
        }
        // and reading it back into a training engine gives the same parameters
        var back = Checkpoint.FromModel<float>(model, threads: 1);
        Assert.Equal(t.Params, back.Params);
    }

    internal static void AssertClose<T>(ReadOnlySpan<float> want, ReadOnlySpan<T> got, double tol, string what) where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        Assert.True(want.Length == got.Length, $"{what}: {got.Length} values, expected {want.Length}");
        double worst = 0; int at = -1;
        for (int i = 0; i < want.Length; i++)
        {
            double d = Math.Abs(double.CreateTruncating(got[i]) - want[i]);
            if (d > worst) { worst = d; at = i; }
        }
        Assert.True(worst <= tol, $"{what}: max |diff| {worst:G3} at {at} (want {(at >= 0 ? want[at] : 0)}, got {(at >= 0 ? double.CreateTruncating(got[at]) : 0)})");
    }
}
