using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Runtime;

/// <summary>stories260K (a real trained llama2.c model, converted to HF) against the reference and llama2.c's own run.c.</summary>
public class Stories260kTests
{
    static string Folder => TestPaths.SharedPath("fixtures", "stories260k")!;

    [SharedTheory("fixtures", "stories260k")]
    [InlineData("cpu")]
    [InlineData("cpu-ref")]
    public void MatchesReferenceLogitsTapsAndGreedy(string backend)
    {
        using var fx = new Fixture("stories260k");
        using var model = Model.Load(fx.Folder);
        using var session = new Session(model, new SessionOptions { Backend = backend });
        int V = model.Config.VocabSize, i = 0;
        foreach (var p in fx.Prompts)
        {
            var tokens = Fixture.Ints(p.GetProperty("tokens"));
            var logits = session.Run(tokens).ToArray();
            if (fx.HasActivation($"prompt{i}.logits")) Compare.Close(logits, fx.Activation($"prompt{i}.logits").Data, 1e-4, $"prompt {i} logits");
            Compare.Close(logits.AsSpan((tokens.Length - 1) * V, V), Fixture.Doubles(p.GetProperty("logits_last")), 1e-4, $"prompt {i} logits_last");
            i++;
        }
        var t0 = Fixture.Ints(fx.Prompts.First().GetProperty("tokens"));
        var (_, cache) = session.RunWithCache(t0);
        foreach (var key in fx.ActivationKeys.Where(k => k.StartsWith("prompt0.") && !k.EndsWith(".logits")))
            Compare.Close(cache[key["prompt0.".Length..]].Data, fx.Activation(key).Data, 1e-4, key);
        var cont = session.Generate(t0, Fixture.Ints(fx.Prompts.First().GetProperty("greedy_continuation")).Length, new SamplingOptions { StopAtEos = false });
        Assert.Equal(Fixture.Ints(fx.Prompts.First().GetProperty("greedy_continuation")), cont);
    }

    [SharedTheory("fixtures", "stories260k")]
    [InlineData("cpu")]
    [InlineData("cpu-ref")]
    public void MatchesLlama2cRunC(string backend)
    {
        using var fx = new Fixture("stories260k");
        using var model = Model.Load(fx.Folder);
        using var runc = SafeTensorFile.Open(Path.Combine(Folder, "llama2c_runc_logits.safetensors"));
        var info = fx.Expected.GetProperty("llama2c_run_c");
        int V = model.Config.VocabSize;

        // Prompt: all 16 positions against run.c's logits.
        using var session = new Session(model, new SessionOptions { Backend = backend });
        var prompt = Fixture.Ints(info.GetProperty("prompt_tokens"));
        var logits = session.Run(prompt).ToArray();
        Compare.Close(logits, runc.View("prompt_logits").ToFloatArray(), 1e-4, "run.c prompt logits");

        // 64 greedy tokens from BOS, one token per forward call through the KV cache, logits of every step.
        var greedyTokens = Fixture.Ints(info.GetProperty("greedy_tokens"));
        var stepLogits = runc.View("greedy_logits").ToFloatArray();
        Assert.Equal(Fixture.Ints(fx.Expected.GetProperty("greedy_from_bos").GetProperty("tokens")), greedyTokens);
        session.Reset();
        int token = 1;
        for (int s = 0; s < greedyTokens.Length; s++)
        {
            var row = session.Forward([token]).ToArray();
            Compare.Close(row, stepLogits.AsSpan(s * V, V).ToArray(), 1e-4, $"run.c step {s}");
            token = Session.ArgMax(row);
            Assert.Equal(greedyTokens[s], token);
        }
        // And the same through Generate.
        Assert.Equal(greedyTokens, session.Generate([1], 64, new SamplingOptions { StopAtEos = false }));
    }
}
