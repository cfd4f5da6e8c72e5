using Engine.Loader;
using Engine.Runtime;
using Engine.Training;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Training;

/// <summary>
/// The op grid of the training engine: every op's backward against central finite differences in F64 (relative error
/// |a − n| / max(|a|, |n|, 1e-6) ≤ 1e-3 per element: the floor keeps the ~1e-10 rounding of finite differences out of tiny gradients), each op on its own and
/// the whole model of every architecture variant (gpt2, gpt2 with 1/(layer+1) attention scale, llama with GQA, qwen2
/// biases, gemma (1 + w) norms and embedding scale, gpt_neox parallel residual with partial rotary), for every parameter
/// and for every activation the gradient-based methods read. Then the float engine (the kernels' GEMM) against F64.
/// </summary>
public class GradientCheckTests(ITestOutputHelper output)
{
    const double Step = 1e-6, Tol = 1e-3;

    static double[] Randn(Rng rng, int n, double scale = 1) => Enumerable.Range(0, n).Select(_ => rng.Normal() * scale).ToArray();

    /// <summary>Numerical gradient of f at x (each element perturbed ± Step) against <paramref name="analytic"/>.</summary>
    void Check(string what, double[] x, Func<double> f, double[] analytic, IEnumerable<int>? indices = null)
    {
        double worst = 0; int worstAt = -1; double wa = 0, wn = 0;
        foreach (int i in indices ?? Enumerable.Range(0, x.Length))
        {
            double keep = x[i];
            x[i] = keep + Step; double fp = f();
            x[i] = keep - Step; double fm = f();
            x[i] = keep;
            double num = (fp - fm) / (2 * Step), an = analytic[i];
            double scale = Math.Max(Math.Abs(num), Math.Abs(an));
            double err = Math.Abs(num - an) / Math.Max(scale, 1e-6);   // denominator floored: finite differences carry ~1e-10 of rounding
            if (err > worst) { worst = err; worstAt = i; wa = an; wn = num; }
        }
        output.WriteLine($"{what}: worst relative error {worst:G3}");
        Assert.True(worst <= Tol, $"{what}: relative error {worst:G3} at {worstAt} (analytic {wa:G6}, numerical {wn:G6})");
    }

    static double Dot(double[] a, double[] b) { double s = 0; for (int i = 0; i < a.Length; i++) s += a[i] * b[i]; return s; }

    // ------------------------------------------------------------------ single ops

    [Theory]
    [InlineData("LayerNorm", 0.0)]
    [InlineData("RmsNorm", 0.0)]
    [InlineData("RmsNorm", 1.0)]
    public void Norm(string kind, double offset)
    {
        var rng = new Rng(1);
        int rows = 3, dim = 7;
        var x = Randn(rng, rows * dim, 2); var w = Randn(rng, dim); var b = Randn(rng, dim); var r = Randn(rng, rows * dim);
        bool ln = kind == "LayerNorm";
        double F()
        {
            var y = new double[rows * dim]; var xh = new double[rows * dim]; var rs = new double[rows];
            if (ln) Ops<double>.LayerNorm(x, rows, dim, w, b, 1e-5, y, xh, rs);
            else Ops<double>.RmsNorm(x, rows, dim, w, offset, 1e-5, y, xh, rs);
            return Dot(y, r);
        }
        var y0 = new double[rows * dim]; var xh0 = new double[rows * dim]; var rs0 = new double[rows];
        if (ln) Ops<double>.LayerNorm(x, rows, dim, w, b, 1e-5, y0, xh0, rs0);
        else Ops<double>.RmsNorm(x, rows, dim, w, offset, 1e-5, y0, xh0, rs0);
        var dx = new double[rows * dim]; var dw = new double[dim]; var db = new double[dim];
        if (ln) Ops<double>.LayerNormBackward(r, xh0, rs0, rows, dim, w, dx, dw, db);
        else Ops<double>.RmsNormBackward(r, xh0, rs0, rows, dim, w, offset, dx, dw);
        Check($"{kind}(offset={offset}) dx", x, F, dx);
        Check($"{kind}(offset={offset}) dw", w, F, dw);
        if (ln) Check($"{kind} db", b, F, db);
    }

    [Theory]
    [InlineData(8, 8)]
    [InlineData(8, 4)]
    public void Rope(int headDim, int rotaryDim)
    {
        var rng = new Rng(2);
        int rows = 5, heads = 2, half = rotaryDim / 2;
        var cos = new double[rows * half]; var sin = new double[rows * half];
        for (int p = 0; p < rows; p++) for (int i = 0; i < half; i++) { cos[p * half + i] = Math.Cos(p * 0.3 / (i + 1)); sin[p * half + i] = Math.Sin(p * 0.3 / (i + 1)); }
        var x = Randn(rng, rows * heads * headDim); var r = Randn(rng, x.Length);
        double F() { var y = (double[])x.Clone(); Ops<double>.Rope(y, rows, heads, headDim, rotaryDim, rows, cos, sin, false); return Dot(y, r); }
        var dx = (double[])r.Clone();
        Ops<double>.Rope(dx, rows, heads, headDim, rotaryDim, rows, cos, sin, true);
        Check($"Rope(d={headDim},rot={rotaryDim})", x, F, dx);
    }

    [Theory]
    [InlineData(2, 2)]
    [InlineData(4, 2)]
    [InlineData(4, 1)]
    public void Attention(int heads, int kvHeads)
    {
        var rng = new Rng(3);
        int S = 6, d = 4;
        var q = Randn(rng, S * heads * d); var k = Randn(rng, S * kvHeads * d); var v = Randn(rng, S * kvHeads * d);
        var r = Randn(rng, S * heads * d);
        double scale = 0.7;
        double F()
        {
            var z = new double[S * heads * d]; var pat = new double[S * S];
            for (int h = 0; h < heads; h++) Ops<double>.AttentionHead(q, k, v, S, heads, kvHeads, d, h, scale, pat, z);
            return Dot(z, r);
        }
        var dq = new double[q.Length]; var dk = new double[k.Length]; var dv = new double[v.Length]; var dpat = new double[S * S];
        for (int h = 0; h < heads; h++)
        {
            var pat = new double[S * S]; var z = new double[S * heads * d];
            Ops<double>.AttentionHead(q, k, v, S, heads, kvHeads, d, h, scale, pat, z);
            Ops<double>.AttentionHeadBackward(q, k, v, pat, r, S, heads, kvHeads, d, h, scale, dq, dk, dv, dpat);
        }
        Check($"Attention(H={heads},K={kvHeads}) dq", q, F, dq);
        Check($"Attention(H={heads},K={kvHeads}) dk", k, F, dk);
        Check($"Attention(H={heads},K={kvHeads}) dv", v, F, dv);

        // the pattern gradient, through the mix alone (the pattern as the input of z = pattern · v)
        var pat0 = new double[S * S]; var z0 = new double[S * heads * d];
        Ops<double>.AttentionHead(q, k, v, S, heads, kvHeads, d, 0, scale, pat0, z0);
        var dp = new double[S * S];
        Ops<double>.AttentionHeadBackward(q, k, v, pat0, r, S, heads, kvHeads, d, 0, scale, new double[q.Length], new double[k.Length], new double[v.Length], dp);
        double G() { var z = new double[S * heads * d]; Ops<double>.AttentionMix(pat0, v, S, heads, kvHeads, d, 0, z); return Dot(z, r); }
        Check($"AttentionMix(H={heads},K={kvHeads}) dpattern", pat0, G, dp, Enumerable.Range(0, S * S).Where(i => i % S <= i / S));
    }

    [Theory]
    [InlineData(ActivationKind.GeluTanh)]
    [InlineData(ActivationKind.GeluErf)]
    [InlineData(ActivationKind.Silu)]
    [InlineData(ActivationKind.Relu)]
    [InlineData(ActivationKind.QuickGelu)]
    public void Activations(ActivationKind kind)
    {
        var rng = new Rng(4);
        int n = 40;
        // ReLU: keep away from the kink at 0
        var x = Randn(rng, n, 2).Select(v => kind == ActivationKind.Relu && Math.Abs(v) < 0.05 ? v + 0.2 : v).ToArray();
        var up = Randn(rng, n); var r = Randn(rng, n);
        double F() { var y = new double[n]; Ops<double>.Activation(kind, x, y); return Dot(y, r); }
        var dx = new double[n];
        Ops<double>.ActivationBackward(kind, x, r, dx);
        Check($"Activation({kind})", x, F, dx);
        double Gf() { var y = new double[n]; Ops<double>.Gated(kind, x, up, y); return Dot(y, r); }
        var dg = new double[n]; var du = new double[n];
        Ops<double>.GatedBackward(kind, x, up, r, dg, du);
        Check($"Gated({kind}) dgate", x, Gf, dg);
        Check($"Gated({kind}) dup", up, Gf, du);
        // the vectorised float forward agrees with the double definition
        var xf = x.Select(v => (float)v).ToArray(); var yf = new float[n];
        Ops<float>.Activation(kind, xf, yf);
        for (int i = 0; i < n; i++) Assert.True(Math.Abs(yf[i] - Ops<double>.Act(kind, xf[i]).Y) <= 1e-5 * Math.Max(1, Math.Abs(yf[i])), $"{kind} float at {xf[i]}");
    }

    [Fact]
    public void CrossEntropy()
    {
        var rng = new Rng(5);
        int rows = 5, V = 9;
        var logits = Randn(rng, rows * V, 3);
        int[] targets = [3, -1, 0, 8, 2];
        float[] weights = [1f, 1f, 0.5f, 0f, 2f];
        double F() => Ops<double>.CrossEntropy(logits, rows, V, targets, weights, new double[rows * V]).Loss;
        var d = new double[rows * V];
        Ops<double>.CrossEntropy(logits, rows, V, targets, weights, d);
        Check("CrossEntropy(weighted, skipped rows)", logits, F, d);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Linear(bool bias)
    {
        var rng = new Rng(6);
        int rows = 4, inDim = 5, outDim = 3;
        var mm = new LoopMatOps<double>(new Par(2));
        var x = Randn(rng, rows * inDim); var w = Randn(rng, outDim * inDim); var b = bias ? Randn(rng, outDim) : []; var r = Randn(rng, rows * outDim);
        double F() { var y = new double[rows * outDim]; mm.Forward(x, rows, inDim, w, outDim, b, y); return Dot(y, r); }
        var dx = new double[x.Length]; var dw = new double[w.Length]; var db = new double[b.Length];
        mm.BackwardInput(r, rows, outDim, w, inDim, dx, accumulate: false);
        mm.BackwardWeight(r, x, rows, outDim, inDim, dw, db);
        Check($"Linear(bias={bias}) dx", x, F, dx);
        Check($"Linear(bias={bias}) dw", w, F, dw);
        if (bias) Check("Linear db", b, F, db);
    }

    // ------------------------------------------------------------------ whole models

    public static ModelConfig Variant(string name)
    {
        var gpt2 = new ArchSpec("gpt2", 2, 8, 2, 12, 13, 8).ToModelConfig();
        var llama = new ArchSpec("llama", 2, 8, 2, 12, 13, 8) { KvHeads = 1, Tied = false }.ToModelConfig();
        return name switch
        {
            "gpt2" => gpt2,
            "gpt2-inverse-layer-scale" => gpt2 with { ScaleAttnByInverseLayer = true, Activation = ActivationKind.Relu },
            "llama-gqa" => llama,
            "qwen2-biases" => llama with { ModelType = "qwen2", QkvBias = true, TiedEmbeddings = true },
            "gemma" => llama with { ModelType = "gemma", NormWeightOffset = 1, EmbedScale = MathF.Sqrt(8), Activation = ActivationKind.GeluTanh, TiedEmbeddings = true, NKvHeads = 2 },
            "gpt_neox" => llama with
            {
                ModelType = "gpt_neox", Norm = NormKind.LayerNorm, GatedMlp = false, Activation = ActivationKind.GeluErf, ParallelResidual = true,
                RotaryDim = 2, QkvBias = true, OutBias = true, MlpBias = true, NKvHeads = 2, QkvLayout = QkvLayout.FusedPerHead,
            },
            _ => throw new ArgumentException(name),
        };
    }

    public static IEnumerable<object[]> Variants() =>
        new[] { "gpt2", "gpt2-inverse-layer-scale", "llama-gqa", "qwen2-biases", "gemma", "gpt_neox" }.Select(v => new object[] { v });

    static (int[] Tokens, int[] Targets, float[] Weights) Batch(ModelConfig c, int B, int S, ulong seed)
    {
        var rng = new Rng(seed);
        var tokens = Enumerable.Range(0, B * S).Select(_ => rng.Next(c.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, B * S).Select(i => i % 7 == 3 ? -1 : rng.Next(c.VocabSize)).ToArray();
        var weights = Enumerable.Range(0, B * S).Select(i => (float)(0.5 + rng.Uniform())).ToArray();
        return (tokens, targets, weights);
    }

    [Theory]
    [MemberData(nameof(Variants))]
    public void ModelParameters(string variant)
    {
        var c = Variant(variant);
        var t = new Transformer<double>(c, threads: 2);
        t.Initialize(11, std: 0.4);
        // non-trivial norm weights and biases
        var rng = new Rng(12);
        foreach (var p in t.Layout.Params.Where(p => p.Shape.Length == 1))
        {
            var s = t.Layout.Slice(t.Params, p);
            for (int i = 0; i < s.Length; i++) s[i] += 0.3 * rng.Normal();
        }
        const int B = 2, S = 5;
        var (tokens, targets, weights) = Batch(c, B, S, 13);
        double F() { t.Forward(tokens, B, S); return t.Loss(targets, weights); }
        F();
        t.ZeroGrad();
        t.Backward();
        var analytic = (double[])t.Grads.Clone();
        foreach (var p in t.Layout.Params)
            Check($"{variant} {p}", t.Params, F, analytic, Enumerable.Range((int)p.Offset, p.Count));
    }

    public static IEnumerable<object[]> ActivationCases() =>
        from v in new[] { "gpt2", "llama-gqa", "gpt_neox" }
        from k in new[] { HookKind.ResidPre, HookKind.ResidMid, HookKind.ResidPost, HookKind.AttnOut, HookKind.MlpOut, HookKind.Z, HookKind.Q, HookKind.K, HookKind.V, HookKind.Pattern, HookKind.MlpPost }
        where !(v == "gpt_neox" && k == HookKind.ResidMid)
        select new object[] { v, k };

    [Theory]
    [MemberData(nameof(ActivationCases))]
    public void ActivationGradients(string variant, HookKind kind)
    {
        var c = Variant(variant);
        var t = new Transformer<double>(c, threads: 1);
        t.Initialize(21, std: 0.4);
        const int B = 2, S = 5;
        var (tokens, targets, weights) = Batch(c, B, S, 22);
        t.Forward(tokens, B, S);
        t.Loss(targets, weights);
        t.Backward(new BackwardOptions { ParameterGradients = false, KeepGradients = new HashSet<HookKind> { kind } });
        for (int l = 0; l < c.NLayers; l++)
        {
            var analytic = t.Gradient(kind, l).ToArray();
            var x = new double[analytic.Length];      // the perturbation added to the activation
            double F()
            {
                t.Forward(tokens, B, S, (k, layer, value) => { if (k == kind && layer == l) for (int i = 0; i < value.Length; i++) value[i] += x[i]; });
                return t.Loss(targets, weights);
            }
            // pattern: only entries on or below the diagonal exist
            var idx = kind == HookKind.Pattern ? Enumerable.Range(0, x.Length).Where(i => i % S <= (i / S) % S) : null;
            Check($"{variant} {HookPoints.Name(kind, l)}", x, F, analytic, idx);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama-gqa")]
    public void FloatEngineOnTheKernelsMatchesF64(string variant)
    {
        // wide enough for the packed GEMM (≥ 16 rows in every product)
        var c = variant == "gpt2" ? new ArchSpec("gpt2", 2, 32, 4, 64, 40, 24).ToModelConfig()
                                  : new ArchSpec("llama", 2, 32, 4, 64, 40, 24) { KvHeads = 2 }.ToModelConfig();
        var t64 = new Transformer<double>(c, threads: 2);
        t64.Initialize(31, std: 0.1);
        var t32 = new Transformer<float>(c, threads: 2);
        Assert.StartsWith("kernels:", t32.MatOpsName);
        t32.CopyParametersFrom(t64);
        const int B = 3, S = 20;
        var (tokens, targets, weights) = Batch(c, B, S, 32);
        t64.Forward(tokens, B, S); double l64 = t64.Loss(targets, weights); t64.Backward();
        t32.Forward(tokens, B, S); double l32 = t32.Loss(targets, weights); t32.Backward();
        Assert.True(Math.Abs(l64 - l32) <= 1e-5 * Math.Abs(l64), $"loss {l32} vs {l64}");
        foreach (var p in t64.Layout.Params)
        {
            var g64 = t64.Layout.Slice(t64.Grads, p).ToArray();
            var g32 = t32.Layout.Slice(t32.Grads, p).ToArray();
            double diff = 0, norm = 0;
            for (int i = 0; i < g64.Length; i++) { diff += Math.Pow(g32[i] - g64[i], 2); norm += g64[i] * g64[i]; }
            double rel = Math.Sqrt(diff / Math.Max(norm, 1e-30));
            output.WriteLine($"{variant} {p}: float vs F64 relative error {rel:G3}");
            Assert.True(rel <= 1e-3, $"{variant} {p}: float gradient relative error {rel:G3}");
        }
    }
}
