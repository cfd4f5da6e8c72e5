using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Runtime;

public class GenerationTests
{
    static readonly int[] Prompt = [1, 45, 46, 47, 200, 301, 5, 77];

    [Fact]
    public void SamplingIsReproducibleForASeedAndVariesAcrossSeeds()
    {
        using var model = Model.Load(TestPaths.Fixture("llama"));
        using var s = new Session(model, new SessionOptions { AllLogits = false });
        var opts = new SamplingOptions { Temperature = 1.5f, Seed = 42, StopAtEos = false };
        var a = s.Generate(Prompt, 30, opts);
        var b = s.Generate(Prompt, 30, opts);
        Assert.Equal(a, b);
        var c = s.Generate(Prompt, 30, opts with { Seed = 43 });
        Assert.NotEqual(a, c);
        Assert.All(a, t => Assert.InRange(t, 0, model.Config.VocabSize - 1));
    }

    [Fact]
    public void TopKOneAndTinyTopPAreGreedy()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        using var s = new Session(model, new SessionOptions { AllLogits = false });
        var greedy = s.Generate(Prompt, 20, new SamplingOptions { StopAtEos = false });
        Assert.Equal(greedy, s.Generate(Prompt, 20, new SamplingOptions { Temperature = 1, TopK = 1, Seed = 5, StopAtEos = false }));
        Assert.Equal(greedy, s.Generate(Prompt, 20, new SamplingOptions { Temperature = 1, TopP = 1e-6f, Seed = 9, StopAtEos = false }));
    }

    [Fact]
    public void TopKRestrictsTheCandidates()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        using var s = new Session(model, new SessionOptions { AllLogits = true });
        var logits = s.Run(Prompt).ToArray();
        int V = model.Config.VocabSize;
        var last = logits.AsSpan((Prompt.Length - 1) * V, V).ToArray();
        var top3 = Enumerable.Range(0, V).OrderByDescending(i => last[i]).Take(3).ToHashSet();
        using var g = new Session(model, new SessionOptions { AllLogits = false });
        for (int seed = 0; seed < 20; seed++)
            Assert.Contains(g.Generate(Prompt, 1, new SamplingOptions { Temperature = 5, TopK = 3, Seed = seed })[0], top3);
    }

    [Fact]
    public void StopsAtEndOfSequence()
    {
        // Declare the third greedy token the model's EOS (in a copy of its config): generation must stop at its first
        // occurrence, EOS included; with StopAtEos off it must not.
        List<int> greedy;
        using (var model = Model.Load(TestPaths.Fixture("gpt2")))
        using (var s = new Session(model, new SessionOptions { AllLogits = false }))
            greedy = s.Generate(Prompt, 10, new SamplingOptions { StopAtEos = false });
        int eos = greedy[2];
        using var dir = new TempDir();
        string m = dir.CopyModel("gpt2");
        string cfg = Path.Combine(m, "config.json");
        File.WriteAllText(cfg, File.ReadAllText(cfg).Replace("\"eos_token_id\": 511", $"\"eos_token_id\": {eos}"));
        using var model2 = Model.Load(m);
        Assert.Equal([eos], model2.Config.EosTokenIds);
        using var s2 = new Session(model2, new SessionOptions { AllLogits = false });
        Assert.Equal(greedy.Take(greedy.IndexOf(eos) + 1), s2.Generate(Prompt, 10, new SamplingOptions()));
        Assert.Equal(greedy, s2.Generate(Prompt, 10, new SamplingOptions { StopAtEos = false }));
    }

    [Fact]
    public void BadSamplingOptionsAreRefused()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt2"));
        using var s = new Session(model);
        Assert.Contains("--temperature", Assert.Throws<Engine.Loader.UsageException>(() => s.Generate(Prompt, 3, new SamplingOptions { Temperature = -1 })).Message);
        Assert.Contains("--top-p", Assert.Throws<Engine.Loader.UsageException>(() => s.Generate(Prompt, 3, new SamplingOptions { TopP = 0 })).Message);
        Assert.Contains("--top-k", Assert.Throws<Engine.Loader.UsageException>(() => s.Generate(Prompt, 3, new SamplingOptions { TopK = -2 })).Message);
    }
}
