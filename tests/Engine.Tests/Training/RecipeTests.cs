using System.Text.Json;
using Engine.Loader.Tokenization;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Training;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Training;

/// <summary>
/// The recipes and the word-level tokenizer: the tokenizer.json the text recipes write is read by the engine's loader
/// and encodes every generated text exactly as the recipes do (one token per listed word, digits as bytes), decodes
/// back to the text, and still encodes any other text (bytes); the data are deterministic from the seed; training is
/// bit-for-bit reproducible (thread count included); `engine train` writes a loadable folder and refuses to overwrite.
/// </summary>
public class RecipeTests(ITestOutputHelper output)
{
    [Fact]
    public void TokenizerJsonRoundTripsThroughTheLoader()
    {
        using var dir = new TempDir();
        var wt = TextTasks.Tokenizer;
        wt.Write(dir.Path);
        var tok = ModelTokenizer.TryLoad(dir.Path, null);
        Assert.NotNull(tok);
        Assert.Equal(wt.Bos, tok!.BosId);
        Assert.True(tok.AddBosByDefault);
        output.WriteLine($"{tok}; {wt.Words.Count} words");
        var rng = new Rng(5);
        var texts = new List<string>();
        foreach (var name in TextTasks.Demo)
        {
            var task = TextTasks.Get(name);
            for (int i = 0; i < 200; i++) texts.Add(task.Sample(rng));
            foreach (var e in task.HeldOut(wt, 1).Examples) texts.Add(wt.Decode(e.Tokens.Skip(1)));
        }
        foreach (var text in texts)
        {
            var ids = tok.Encode(text);
            Assert.Equal(wt.Encode(text), ids);
            Assert.Equal(text, tok.Decode(ids, skipSpecialTokens: true));
        }
        // listed words are single tokens, with and without the leading space as listed
        Assert.Equal([wt.Bos, wt.Word("Smith"), wt.Word(" lives"), wt.Word(" in"), wt.Word(" Paris")], tok.Encode("Smith lives in Paris"));
        Assert.Equal(" Paris", tok.TokenText(wt.Word(" Paris")));
        // digits are bytes; any other text still round-trips
        Assert.Equal([wt.Bos, '2', '3', '+', '5', '8', '='], tok.Encode("23+58="));
        foreach (var s in new[] { "Hello, wörld! Paris? Parisian Smithson 123", "  spaces\tand\nlines  ", "ÄÖÜ → ∑ 🙂" })
            Assert.Equal(s, tok.Decode(tok.Encode(s), skipSpecialTokens: true));
    }

    [Fact]
    public void RecipesAreDeterministicAndHeldOutIsDisjoint()
    {
        foreach (var name in Recipe.Names)
        {
            var r = Recipe.Create(name);
            var a = Enumerable.Range(0, 50).Select(_ => 0).Select((_, i) => r.Sample(Rng.Derive(3, "x" + i)).Tokens).ToArray();
            var b = Enumerable.Range(0, 50).Select(_ => 0).Select((_, i) => r.Sample(Rng.Derive(3, "x" + i)).Tokens).ToArray();
            Assert.Equal(a, b);
            foreach (var t in r.HeldOut(1)) Assert.NotEmpty(t.Examples);
        }
        // arithmetic: no held-out pair is ever sampled for training
        var arith = new ArithmeticTask();
        var rng = new Rng(9);
        for (int i = 0; i < 2000; i++)
        {
            var s = arith.Sample(rng);
            var parts = s.TrimEnd('.').Split('+', '=');
            Assert.False(ArithmeticTask.IsHeldOut(int.Parse(parts[0]), int.Parse(parts[1])), s);
            Assert.Equal(int.Parse(parts[0]) + int.Parse(parts[1]), int.Parse(parts[2]));
        }
        // ... and the held-out pairs can be learnt from the others: their sums end in every digit, and every pair of
        // last digits and every pair of first digits occurs in training (the first held-out rule held out every sum ending in 7)
        var pairs = (from x in Enumerable.Range(ArithmeticTask.Lo, ArithmeticTask.Hi - ArithmeticTask.Lo + 1)
                     from y in Enumerable.Range(ArithmeticTask.Lo, ArithmeticTask.Hi - ArithmeticTask.Lo + 1) select (x, y)).ToArray();
        var held = pairs.Where(p => ArithmeticTask.IsHeldOut(p.x, p.y)).ToArray();
        var train = pairs.Where(p => !ArithmeticTask.IsHeldOut(p.x, p.y)).ToArray();
        Assert.InRange(held.Length, pairs.Length / 20, pairs.Length / 5);
        Assert.Equal(10, held.Select(p => (p.x + p.y) % 10).Distinct().Count());
        Assert.Equal(100, train.Select(p => (p.x % 10, p.y % 10)).Distinct().Count());
        Assert.Equal(16, train.Select(p => (p.x / 10, p.y / 10)).Distinct().Count());
        // induction: the scored positions are the second copy after its first token, and their sources hold the expected tokens
        var ind = new InductionRecipe();
        foreach (var e in ind.HeldOut(1)[0].Examples.Take(50))
            for (int k = 0; k < e.Positions.Length; k++)
            {
                Assert.Equal(e.Expected[k], e.Tokens[e.Positions[k] + 1]);
                Assert.Equal(e.Expected[k], e.Tokens[e.Sources![k]]);
                Assert.Equal(e.Tokens[e.Positions[k]], e.Tokens[e.Sources[k] - 1]);
            }
    }

    [Fact]
    public void TrainingIsReproducibleAcrossThreadCounts()
    {
        var arch = new ArchSpec("gpt2", 2, 32, 4, 64, TextTasks.Tokenizer.VocabSize, 64);
        TrainRun Run(int threads) => Trainer.Train(new TrainSettings { Recipe = Recipe.Create("demo"), Arch = arch, Steps = 6, Batch = 8, Seed = 4, Threads = threads, EvalEvery = 0 });
        var a = Run(1); var b = Run(2);
        Assert.Equal(a.Steps.Select(s => s.Loss), b.Steps.Select(s => s.Loss));
        Assert.Equal(a.Model.Params, b.Model.Params);
        Assert.True(a.Steps[^1].Loss < a.Steps[0].Loss, "the loss goes down");
    }

    [Fact]
    public void TrainCommandWritesALoadableFolder()
    {
        using var dir = new TempDir();
        string outDir = dir.File("facts");
        var r = Support.Cli.Run("train", "--recipe", "facts", "--out", outDir, "--steps", "3", "--batch", "4", "--threads", "2", "--eval-every", "0");
        Assert.True(r.ExitCode == 0, r.Stderr);
        foreach (var f in new[] { "config.json", "model.safetensors", "tokenizer.json", "training.json", "loss.png", "accuracy.png", "loss.svg" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        using var model = Model.Load(outDir);
        Assert.NotNull(model.Tokenizer);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "training.json")));
        Assert.Equal("facts", doc.RootElement.GetProperty("recipe").GetString());
        Assert.Equal(3, doc.RootElement.GetProperty("loss_curve").GetProperty("loss").GetArrayLength());
        Assert.True(doc.RootElement.GetProperty("held_out_accuracy").TryGetProperty("facts", out _));
        
        Assert.Contains("step", r.Stderr);
        var png = File.ReadAllBytes(Path.Combine(outDir, "loss.png"));
        Assert.Equal(0x89, png[0]);
        // refuses to overwrite without --force
        var again = Support.Cli.Run("train", "--recipe", "facts", "--out", outDir, "--steps", "1");
        Assert.Equal(2, again.ExitCode);
        Assert.Contains("--force", again.Stderr);
        Assert.Equal(2, Support.Cli.Run("train", "--recipe", "nope", "--out", dir.File("x")).ExitCode);
        Assert.Equal(2, Support.Cli.Run("train", "--recipe", "facts", "--out", dir.File("y"), "--family", "bert").ExitCode);
    }
}
