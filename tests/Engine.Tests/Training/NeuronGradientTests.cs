using Engine.Interp;
using Engine.Interp.Gradients;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Training;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Training;

/// <summary>
/// Neuron attribution by gradients, in F64 on fixtures: gradient × activation of a neuron equals the derivative of the
/// metric when that neuron alone is scaled by (1 + s) at s = 0 (finite difference); integrated gradients satisfy
/// completeness (per layer, the attributions sum to F(act) − F(0)) ever more closely as the steps grow.
/// </summary>
public class NeuronGradientTests(ITestOutputHelper output)
{
    static readonly int[] Tokens = [5, 17, 300, 42, 9, 3];

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("gpt_neox")]
    public void GradientTimesActivationIsTheDerivativeAlongTheNeuron(string fixture)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var gm = GradientModel.Load(model, Precision.F64);
        int M = model.Config.DMlp, P = Tokens.Length - 1;
        var r = NeuronGradients.GradientTimesActivation(gm, Tokens, null, new NeuronGradientOptions { Metric = OutputMetric.LogProb, Top = 5 });
        foreach (var (layer, neuron, score) in r.Top)
        {
            double Scaled(double s)
            {
                var last = gm.Forward(Tokens, (kind, l, v) => { if (kind == HookKind.MlpPost && l == layer) v[P * M + neuron] *= 1 + s; });
                return GradientModel.Metric(last, OutputMetric.LogProb, r.Target).Value;
            }
            const double h = 1e-2;
            double fd = (8 * (Scaled(h) - Scaled(-h)) - (Scaled(2 * h) - Scaled(-2 * h))) / (12 * h);
            output.WriteLine($"L{layer} n{neuron}: grad x act {score:E5}, finite difference {fd:E5}");
            Assert.True(Math.Abs(fd - score) <= 1e-3 * Math.Abs(fd) + 1e-6, $"L{layer} n{neuron}: {score} vs {fd}");
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void IntegratedGradientsApproachCompletenessAsTheStepsGrow(string fixture)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var gm = GradientModel.Load(model, Precision.F64);
        double Gap(int steps)
        {
            var r = NeuronGradients.IntegratedGradients(gm, Tokens, null, new NeuronGradientOptions { Metric = OutputMetric.LogProb, Steps = steps });
            double worst = 0, scale = 0;
            for (int l = 0; l < model.Config.NLayers; l++)
            {
                worst = Math.Max(worst, Math.Abs(r.LayerSums[l] - r.LayerTargets[l]));
                scale = Math.Max(scale, Math.Abs(r.LayerTargets[l]));
            }
            output.WriteLine($"{steps} steps: max |sum of attributions − (F(act) − F(0))| {worst:E3} (largest target {scale:E3})");
            Assert.True(scale > 1e-6, "the layers' neurons change nothing measurable; the check would be empty");
            return worst / scale;
        }
        double g4 = Gap(4), g64 = Gap(64);
        Assert.True(g64 < g4, $"completeness gap {g64:E2} at 64 steps is not below {g4:E2} at 4");
        Assert.True(g64 <= 0.02, $"completeness gap {g64:P2} of the largest layer target at 64 steps");
    }
}
