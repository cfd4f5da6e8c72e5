using Engine.Interp;
using Engine.Interp.Gradients;
using Engine.Runtime;
using Engine.Tests.Support;
using Engine.Training;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Training;

/// <summary>
/// Attribution patching for every activation kind that activation patching supports, on three families, in F64: the
/// cells of one layer partition that layer's activation, so their sum is ∂metric/∂act · (clean − corrupted) for the whole
/// layer, which must equal the (five-point) finite difference of the metric along (clean − corrupted) at that layer (the
/// corrupted run with act + s·(clean − act), s = ±1e-2; relative error ≤ 1e-3, as the op gradient checks). This checks the gradient of each kind and the way attribution
/// cuts it into cells.
/// </summary>
public class AttributionPatchingKindTests(ITestOutputHelper output)
{
    public static IEnumerable<object[]> Cases() =>
        from fixture in new[] { "gpt2", "llama", "gpt_neox" }
        from act in Enum.GetValues<PatchActivation>()
        select new object[] { fixture, act.ToString() };

    [Theory]
    [MemberData(nameof(Cases))]
    public void LayerSumsEqualTheFiniteDifferenceAlongCleanMinusCorrupted(string fixture, string activation)
    {
        var act = Enum.Parse<PatchActivation>(activation);
        using var model = Model.Load(TestPaths.Fixture(fixture));
        var c = model.Config;
        if (act == PatchActivation.ResidMid && c.ParallelResidual)
        {
            output.WriteLine($"{fixture} has a parallel residual: no resid_mid (refused, as activation patching refuses it)");
            Assert.Throws<Engine.Loader.UsageException>(() => ActivationPatching.CheckExists(c, act));
            return;
        }
        var gm = GradientModel.Load(model, Precision.F64);
        int V = c.VocabSize;
        int[] clean = [5, 17, 300 % V, 42, 9, 3], corrupt = [5, 17, 301 % V, 42, 9, 3];
        var r = AttributionPatching.Run(gm, clean, corrupt, null, null, new AttributionOptions { Activation = act });
        var kind = ActivationPatching.Kind(act);
        int ans = r.Estimate.AnswerToken, wr = r.Estimate.WrongToken;
        gm.Forward(clean);
        var cleanActs = Enumerable.Range(0, c.NLayers).Select(l => gm.Activation(kind, l)).ToArray();
        int cells = r.Attribution.Data.Length / c.NLayers;
        const double eps = 1e-2;   // the logits come back as float: a smaller step drowns in their rounding (~1e-7 relative)
        double worst = 0, largest = 0;
        for (int l = 0; l < c.NLayers; l++)
        {
            int layer = l;
            double Shifted(double s)
            {
                var last = gm.Forward(corrupt, (k, ll, v) =>
                {
                    if (k != kind || ll != layer) return;
                    for (int i = 0; i < v.Length; i++) v[i] += s * (cleanActs[layer][i] - v[i]);
                });
                return (double)last[ans] - last[wr];
            }
            // five-point stencil: truncation O(eps⁴), so the float rounding of the logits is what is left
            double fd = (8 * (Shifted(eps) - Shifted(-eps)) - (Shifted(2 * eps) - Shifted(-2 * eps))) / (12 * eps);
            double sum = r.Attribution.Data.AsSpan(l * cells, cells).ToArray().Sum();
            worst = Math.Max(worst, Math.Abs(fd - sum));
            largest = Math.Max(largest, Math.Abs(fd));
            output.WriteLine($"L{l}: finite difference {fd:E6}, attribution summed over {cells} cells {sum:E6}");
        }
        Assert.True(largest > 1e-6, $"{activation}: the patch direction changes nothing measurable (largest {largest:E2}); the check would be empty");
        Assert.True(worst <= 1e-3 * largest + 1e-6, $"{activation}: |finite difference − attribution| up to {worst:E3} (largest {largest:E3})");
    }
}
