using Engine.Interp;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Training;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Training;

/// <summary>
/// Ground truth for the induction recipe: the trained model reaches ≥ 95% on the repeated half; the head sweep
/// (HeadAblation, zero-ablating one head at a time, metric log p of the right token at a repeated-half position)
/// ranks the circuit's heads first; zero-ablating the top heads drops repeated-half accuracy by ≥ 50%; the induction heads
/// among them put most weight on the token after the previous occurrence, the others on the previous token. The test runs the recipe's defaults and checks the 10-minute budget
/// (800 steps are not enough: the induction phase change comes at about step 700 of the default schedule).
/// </summary>
public class InductionTests(ITestOutputHelper output)
{
    /// <summary>The recipe's defaults (1,500 steps; about 45 s on this 2-core machine), held to the 10-minute budget.</summary>
    [Fact]
    public void DefaultRecipeLearnsInductionWithinTenMinutesAndTheHeadSweepFindsTheCircuit() => TrainAndAnalyse(steps: null, timeLimitSeconds: 600);

    void TrainAndAnalyse(int? steps, double? timeLimitSeconds)
    {
        var recipe = new InductionRecipe();
        var run = Trainer.Train(new TrainSettings { Recipe = recipe, Steps = steps, Seed = 1, Threads = 2, EvalEvery = 0 }, output.WriteLine);
        output.WriteLine($"trained {run.Steps.Count} steps in {run.Seconds:F1} s, load average {run.LoadAverage[0]:F1} -> {run.LoadAverage[1]:F1}; held-out {run.Final["induction"]:P1}");
        Assert.True(run.Final["induction"] >= 0.95, $"repeated-half accuracy {run.Final["induction"]:P1} < 95%");
        if (timeLimitSeconds is double limit) Assert.True(run.Seconds <= limit, $"training took {run.Seconds:F0} s > {limit} s");

        using var dir = new TempDir();
        Trainer.WriteFolder(run, dir.Path);
        using var model = Model.Load(dir.Path);
        using var session = new Session(model, new SessionOptions { Backend = "cpu" });
        var full = recipe.HeldOut(99)[0];
        var task = full with { Examples = full.Examples.Take(64).ToArray() };
        double baseAcc = GroundTruth.Accuracy(session, task);
        Assert.True(Math.Abs(baseAcc - Trainer.Evaluate(run.Model, [task], recipe.Bos)["induction"]) < 1e-9, "the runtime and the training engine agree on accuracy");

        // head sweep: zero-ablate each head alone, log p of the right token at a repeated-half position, averaged
        var c = model.Config;
        var mean = new double[c.NLayers, c.NHeads];
        var sweepExamples = task.Examples.Take(12).ToArray();
        foreach (var e in sweepExamples)
        {
            int k = e.Positions.Length / 2;
            var tokens = e.Tokens[..(e.Positions[k] + 1)];
            var r = HeadAblation.Run(session, tokens, e.Expected[k], new AblationOptions { Metric = OutputMetric.LogProb });
            for (int l = 0; l < c.NLayers; l++)
                for (int h = 0; h < c.NHeads; h++) mean[l, h] += r.Delta![l, h] / sweepExamples.Length;
        }
        var ranked = (from l in Enumerable.Range(0, c.NLayers) from h in Enumerable.Range(0, c.NHeads) orderby mean[l, h] select (l, h, mean[l, h])).ToArray();
        output.WriteLine("head sweep (mean Δ log p): " + string.Join(", ", ranked.Select(x => $"L{x.l}H{x.h} {x.Item3:F2}")));
        // the top heads: every head whose effect is at least half of the strongest
        var top = ranked.Where(x => x.Item3 <= 0.5 * ranked[0].Item3).Select(x => (x.l, x.h)).ToArray();
        double ablated = GroundTruth.Accuracy(session, task, GroundTruth.ZeroHeads(c, top));
        output.WriteLine($"repeated-half accuracy {baseAcc:P1}; with {string.Join(" ", top.Select(t => $"L{t.l}H{t.h}"))} zero-ablated {ablated:P1}");
        Assert.True(ablated <= 0.5 * baseAcc, $"ablating the top heads leaves {ablated:P1} of {baseAcc:P1}");

        // the top heads are the two halves of the circuit: induction heads (attending to the token after the previous
        // occurrence) and the previous-token heads of an earlier layer that feed them; at least one induction head
        var induction = GroundTruth.InductionScores(session, task);
        var previous = GroundTruth.PreviousTokenScores(session, task);
        foreach (var (l, h) in top)
        {
            output.WriteLine($"L{l}H{h}: attention on the induction source {induction[l][h]:P1}, on the previous token {previous[l][h]:P1}");
            Assert.True(induction[l][h] > 0.5 || (previous[l][h] > 0.5 && top.Any(t => t.l > l && induction[t.l][t.h] > 0.5)),
                $"L{l}H{h} is neither an induction head ({induction[l][h]:P1} on the induction source) nor a previous-token head feeding one ({previous[l][h]:P1})");
        }
        Assert.Contains(top, t => induction[t.l][t.h] > 0.5);
    }
}
