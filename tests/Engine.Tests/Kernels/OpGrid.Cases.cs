// The op grid: every op of IKernels over shapes chosen to break kernels (STYLE.md lessons 3-6), checked against the
// reference. No xunit here: tests/Engine.KernelCheck compiles this file too (see IsaVariantTests).
using Engine.Kernels;
using Engine.Kernels.Reference;
using Engine.Loader;

namespace Engine.Tests.Kernels;

public static class OpGrid
{
    public static readonly IKernels Reference = new ReferenceKernels();

    /// <summary>Every backend checked against the reference: all registered names but "cpu-ref" and the ILGPU ones
    /// (tests/Engine.Tests/Ilgpu runs the grid on those serially, with guards around the device buffers).</summary>
    public static IReadOnlyList<string> Backends => KernelRegistry.Names.Where(n => n != "cpu-ref" && !n.StartsWith("ilgpu", StringComparison.Ordinal)).ToList();

    public static IReadOnlyList<OpCase> All => s_all.Value;
    public static IReadOnlyDictionary<string, OpCase> ByName => s_byName.Value;

    static readonly Lazy<IReadOnlyList<OpCase>> s_all = new(Build);
    static readonly Lazy<IReadOnlyDictionary<string, OpCase>> s_byName = new(() =>
    {
        var d = new Dictionary<string, OpCase>(StringComparer.Ordinal);
        foreach (var c in All)
            if (!d.TryAdd(c.ToString(), c)) throw new InvalidOperationException($"duplicate op case {c}");
        return d;
    });

    /// <summary>Elementwise lengths: around every vector width (4/8/16 floats) and its multiples, up to 257.</summary>
    public static readonly int[] SampledLengths = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257];
    /// <summary>More than one work item of the elementwise kernels (4096 floats each).</summary>
    public const int LongLength = 2 * 4096 + 5;

    static List<OpCase> Build()
    {
        var list = new List<OpCase>();
        DType[] dtypes = [DType.F32, DType.F16, DType.BF16];

        // ---- MatMul: every (rows, in, out) in F32 out-major with bias; every dtype/layout/bias/alignment on a sampler.
        int[] dims = [1, 15, 17, 64, 70, 129, 257];
        foreach (int rows in new[] { 1, 2, 3, 7, 33 })
            foreach (int i in dims)
                foreach (int o in dims)
                    list.Add(new MatMulCase(rows, i, o, DType.F32, false, true));
        (int In, int Out)[] sampled = [(1, 1), (17, 15), (15, 17), (70, 45), (45, 70), (129, 257), (257, 64)];
        foreach (var dt in dtypes)
            foreach (bool inMajor in new[] { false, true })
                foreach (var (i, o) in sampled)
                    foreach (int rows in new[] { 1, 3, 33 })
                    {
                        foreach (bool bias in new[] { false, true })
                            if (dt != DType.F32 || inMajor || !bias) list.Add(new MatMulCase(rows, i, o, dt, inMajor, bias));
                        if (rows != 33) list.Add(new MatMulCase(rows, i, o, dt, inMajor, false, misaligned: true));
                    }
        foreach (var dt in dtypes)
            foreach (bool inMajor in new[] { false, true })
            {
                list.Add(new MatMulCase(3, 70, 45, dt, inMajor, true, values: Values.NonFinite));
                list.Add(new MatMulCase(7, 1024, 300, dt, inMajor, true));   // many work items: exercises the thread split
                // Row counts on both sides of the kernels' switch points (out-major: the broadcast path from 64 rows for
                // F32, 128 for BF16/F16, in 64-row panels; input-major: 6-, 4- and 1-row tiles), N = 70 = 11 six-row
                // weight tiles + 4 (out-major) or 64 + 6 columns (input-major).
                foreach (int rows in new[] { 6, 15, 16, 63, 64, 127, 128, 129, 269 })
                    list.Add(new MatMulCase(rows, 300, 70, dt, inMajor, true));
                // Out-major broadcast path over three K blocks (384 + 384 + 193) and items of 24 rows with a partial last
                // tile (N = 400 = 16 × 24 + 16).
                list.Add(new MatMulCase(130, 961, 400, dt, inMajor, true));
                // From 384 rows items of 48 weight rows (N = 400 = 8 × 48 + 16), seven panels with a partial last one.
                if (!inMajor) list.Add(new MatMulCase(390, 400, 400, dt, inMajor, true));
                // Input-major K blocks of 768 rows, the last one taking up to 1152: K = 1920 is 768 + 1152, K = 1921 is
                // 768 + 768 + 385; 13 rows = 6 + 6 + 1, N = 135 = 2 × 64 + 7 (64-, 16- and 1-column tails).
                list.Add(new MatMulCase(13, 1920, 135, dt, inMajor, true));
                list.Add(new MatMulCase(10, 1921, 135, dt, inMajor, false));
                list.Add(new MatMulCase(269, 300, 70, dt, inMajor, false, values: Values.NonFinite));
                foreach (int rows in new[] { 1, 3, 20, 260 })
                    list.Add(new MatMulCase(rows, 300, 70, dt, inMajor, true, nonFiniteWeights: true));
                // One row through weight rows of ≥ 4 KiB (the input-major decode path prefetches ahead there), K of two
                // 128-row chunks and a tail of 45 rows (four rows per pass, then one).
                int wide = dt == DType.F32 ? 1030 : 2070;
                list.Add(new MatMulCase(1, 301, wide, dt, inMajor, true));
                list.Add(new MatMulCase(1, 301, wide, dt, inMajor, false, values: Values.NonFinite));
                list.Add(new MatMulCase(1, 301, wide, dt, inMajor, true, nonFiniteWeights: true));
            }
        // F32 input-major rows a multiple of 4 KiB apart (N = 1024) are copied into a panel from 24 rows: 30 = 5 × 6 rows
        // over K blocks 768 + 768 + 385, 24 rows with non-finite inputs and weights, 23 rows (direct) beside them.
        foreach (int rows in new[] { 23, 24, 30 })
            list.Add(new MatMulCase(rows, 1921, 1024, DType.F32, true, rows != 24));
        list.Add(new MatMulCase(24, 300, 1024, DType.F32, true, true, values: Values.NonFinite));
        list.Add(new MatMulCase(24, 300, 1024, DType.F32, true, false, nonFiniteWeights: true));

        // ---- EmbeddingGather
        foreach (var dt in dtypes)
        {
            foreach (var (v, d) in new[] { (1, 1), (5, 7), (33, 64), (17, 257), (3, 65) })
                list.Add(new EmbeddingCase(v, d, 9, dt));
            list.Add(new EmbeddingCase(5, 7, 9, dt, misaligned: true));
        }

        // ---- norms
        foreach (int dim in new[] { 1, 7, 64, 65, 257 })
            for (int rows = 1; rows <= 5; rows++)
            {
                list.Add(new NormCase(true, rows, dim, bias: true));
                list.Add(new NormCase(true, rows, dim, bias: false));
                list.Add(new NormCase(false, rows, dim, offset: 0f));
                list.Add(new NormCase(false, rows, dim, offset: 1f));
            }
        list.Add(new NormCase(true, 3, 257, bias: true, xScale: 1000f));
        list.Add(new NormCase(false, 3, 257, offset: 1f, xScale: 1000f));
        list.Add(new NormCase(true, 64, 257, bias: true));                  // several work items
        list.Add(new NormCase(false, 64, 257, offset: 0f));
        list.Add(new NormCase(true, 4, 65, bias: true, values: Values.NonFinite));
        list.Add(new NormCase(false, 4, 65, offset: 1f, values: Values.NonFinite));

        // ---- rope
        foreach (var (hd, rot) in new[] { (2, 2), (8, 8), (16, 16), (16, 4), (6, 4), (33, 32), (64, 64) })
            foreach (int pos0 in new[] { 0, 5 })
                foreach (int heads in new[] { 1, 2, 3 })
                    foreach (int rows in new[] { 1, 3 })
                        list.Add(new RopeCase(rows, heads, hd, rot, pos0));
        list.Add(new RopeCase(2, 2, 16, 16, 1000));
        list.Add(new RopeCase(9, 3, 64, 32, 0));

        // ---- attention: GQA 1/2/4/8, decode (1 row at pos0 > 0), prefill, rows past a vector width, odd head sizes
        (int Kv, int Group)[] gqa = [(2, 1), (2, 2), (2, 4), (1, 8)];
        (int Rows, int Pos0)[] spans = [(1, 0), (1, 6), (3, 0), (3, 6), (17, 0), (17, 6)];
        foreach (AttnOp op in Enum.GetValues<AttnOp>())
        {
            foreach (var (kv, g) in gqa)
                foreach (var (rows, pos0) in spans)
                    foreach (int d in new[] { 1, 8, 16, 33 })
                        list.Add(new AttentionCase(op, rows, pos0, kv * g, kv, d));
            list.Add(new AttentionCase(op, 33, 40, 8, 2, 64));              // many work items
            // Long key ranges (the flash kernel of ilgpu walks keys in tiles of 32): 10 tiles at pos0 > 0, a decode row
            // with Tk = 257 (a 1-key last tile) and head dim 128 (two passes of 64 dims), head dim 160 with 3 query heads
            // per kv head.
            list.Add(new AttentionCase(op, 4, 296, 4, 2, 64));
            list.Add(new AttentionCase(op, 1, 256, 8, 1, 128));
            list.Add(new AttentionCase(op, 2, 70, 3, 1, 160));
        }
        list.Add(new AttentionCase(AttnOp.Softmax, 1, 0, 1, 1, 8, Values.NonFinite));
        list.Add(new AttentionCase(AttnOp.Softmax, 5, 3, 4, 2, 8, Values.NonFinite));
        list.Add(new AttentionCase(AttnOp.Softmax, 17, 6, 8, 1, 16, Values.NonFinite));
        list.Add(new AttentionCase(AttnOp.Scores, 3, 2, 4, 2, 16, Values.NonFinite));
        list.Add(new AttentionCase(AttnOp.Fused, 17, 6, 4, 2, 16, Values.NonFinite));
        list.Add(new AttentionCase(AttnOp.Fused, 3, 40, 4, 2, 33, Values.NonFinite));   // a first tile of -inf scores, then finite ones
        list.Add(new AttentionCase(AttnOp.Fused, 2, 0, 8, 1, 8, Values.NonFinite));     // row 0 sees one key, a -inf score: NaN

        // ---- activations: every length 0..257 for one kind, a sampler for the others, huge values and NaN/inf for all
        for (int n = 0; n <= 257; n++) list.Add(new ActivationCase(ActivationKind.Silu, n, false));
        foreach (var kind in Enum.GetValues<ActivationKind>())
        {
            if (kind != ActivationKind.Silu)
                foreach (int n in SampledLengths) list.Add(new ActivationCase(kind, n, false));
            foreach (int n in SampledLengths) list.Add(new ActivationCase(kind, n, true));
            foreach (bool gated in new[] { false, true })
            {
                list.Add(new ActivationCase(kind, LongLength, gated));
                list.Add(new ActivationCase(kind, 67, gated, Values.Large));
                list.Add(new ActivationCase(kind, 67, gated, Values.NonFinite));
            }
        }

        // ---- residual add and scaling
        foreach (int n in SampledLengths)
        {
            list.Add(new AddCase(n));
            list.Add(new ScaleCase(n, -1.75f));
        }
        list.Add(new AddCase(LongLength));
        list.Add(new ScaleCase(LongLength, 0.125f));
        list.Add(new AddCase(67, Values.Large));
        list.Add(new AddCase(67, Values.NonFinite));
        list.Add(new ScaleCase(67, -1.75f, Values.Large));
        list.Add(new ScaleCase(67, 3f, Values.NonFinite));
        list.Add(new ScaleCase(33, 0f, Values.NonFinite));                  // 0 * inf = NaN
        list.Add(new ScaleCase(33, float.PositiveInfinity));
        return list;
    }

    /// <summary>
    /// Backends whose fused Attention is an online softmax, equal to the three steps within the tolerance and not bit for
    /// bit (IKernels.Attention): the ILGPU ones. On every other backend the op grid checks bit-identity.
    /// </summary>
    public static bool FusedAttentionIsOnline(IKernels k) => k.Name.StartsWith("ilgpu", StringComparison.Ordinal);

    /// <summary>Cases whose work is split over threads (compared bitwise across thread counts).</summary>
    public static bool IsThreaded(OpCase c) => c is MatMulCase or AttentionCase or NormCase or RopeCase
        || (c is ActivationCase a && a.N > 4096) || c is AddCase { N: > 4096 } || c is ScaleCase { N: > 4096 };

    /// <summary>Runs a case on the reference and on a backend; returns the failures (empty when it passes).</summary>
    public static List<string> Check(OpCase c, IKernels backend)
    {
        var failures = new List<string>();
        string who = $"{c} on '{backend.Name}'";
        using var run = c.Prepare();
        var want = run.Run(Reference);
        foreach (var b in want)
            if (b.GuardViolation() is { } g) failures.Add($"{c} on the reference (test bug?): {g}");
        Buffer[] got;
        try { got = run.Run(backend); }
        catch (Exception e) { failures.Add($"{who}: threw {e.GetType().Name}: {e.Message}"); return failures; }
        for (int i = 0; i < want.Length; i++)
        {
            if (got[i].GuardViolation() is { } g) failures.Add($"{who}: output {g}");
            if (Verdict.Close($"{who}: output '{want[i].Name}' [{want[i].Length}]", want[i].Span, got[i].Span, c.Tolerance) is { } f) failures.Add(f);
        }
        foreach (var input in run.Inputs)
            if (input.InputModified() is { } m) failures.Add($"{who}: {m}");
        if (run.CheckInvariant(backend, got) is { } inv) failures.Add($"{who}: {inv}");
        return failures;
    }

    /// <summary>Runs a case on two backends that must agree bit for bit (e.g. one SimdKernels over 1 thread and over 3).</summary>
    public static List<string> CheckBitIdentical(OpCase c, IKernels a, string aName, IKernels b, string bName)
    {
        var failures = new List<string>();
        using var run = c.Prepare();
        var x = run.Run(a);
        var y = run.Run(b);
        for (int i = 0; i < x.Length; i++)
        {
            if (x[i].GuardViolation() is { } g1) failures.Add($"{c} on {aName}: output {g1}");
            if (y[i].GuardViolation() is { } g2) failures.Add($"{c} on {bName}: output {g2}");
            if (Verdict.Bitwise($"{c}: output '{x[i].Name}' {aName} vs {bName}", x[i].Span, y[i].Span) is { } f) failures.Add(f);
        }
        return failures;
    }
}

// ==================================================================== the cases

public sealed class MatMulCase(int rows, int inDim, int outDim, DType dtype, bool inputMajor, bool bias, bool misaligned = false, Values values = Values.Normal, bool nonFiniteWeights = false) : OpCase
{
    public override string Op => "MatMul";
    public override string Vars =>
        $"rows={rows},in={inDim},out={outDim},dtype={dtype.Name()},layout={(inputMajor ? "in-major" : "out-major")},bias={B(bias)}"
        + (misaligned ? ",offset=odd" : "") + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "")
        + (nonFiniteWeights ? ",weights=nonfinite" : "");
    /// <summary>Float accumulation error grows like sqrt(K).</summary>
    public override Tolerance Tolerance => new(1e-5 * Math.Sqrt(inDim), 1e-5, 1e-9);

    public override unsafe OpRun Prepare()
    {
        var rng = Rng();
        var x = Buffer.Input("x", rng.Spice(rng.Uniform(rows * inDim, -1, 1), values));
        long[] shape = inputMajor ? [inDim, outDim] : [outDim, inDim];
        var weights = rng.Uniform(inDim * outDim, -1, 1);
        if (nonFiniteWeights) weights = rng.Spice(weights, Values.NonFinite);
        var file = TempTensors.Write(dtype, misaligned, shape, weights);
        var view = file.File.View("w");
        long addr = (long)view.Data;
        if (misaligned ? addr % dtype.Size() == 0 || addr % 4 == 0 : addr % 4 != 0)
            throw new InvalidOperationException($"{this}: weight at address {addr:x} does not have the intended alignment");
        var lin = new Linear(view, inputMajor, bias ? rng.Uniform(outDim, -1, 1) : null, inDim, outDim);
        return new OpRun(k =>
        {
            var y = Buffer.Output("y", rows * outDim);
            k.MatMul(x.Span, rows, lin, y.Span);
            return [y];
        }, [x], file);
    }
}

public sealed class EmbeddingCase(int vocab, int dim, int count, DType dtype, bool misaligned = false) : OpCase
{
    public override string Op => "EmbeddingGather";
    public override string Vars => $"vocab={vocab},dim={dim},ids={count},dtype={dtype.Name()}" + (misaligned ? ",offset=odd" : "");
    /// <summary>Widening F16/BF16 to float is exact.</summary>
    public override Tolerance Tolerance => Tolerance.Exact;

    public override OpRun Prepare()
    {
        var rng = Rng();
        var file = TempTensors.Write(dtype, misaligned, [vocab, dim], rng.Normal(vocab * dim));
        var table = file.File.View("w");
        var ids = new int[count];
        for (int i = 0; i < count; i++) ids[i] = i == 0 ? vocab - 1 : i == 1 ? 0 : rng.Int(vocab);
        ids[^1] = ids[0];                                                   // a repeated id
        return new OpRun(k =>
        {
            var y = Buffer.Output("y", count * dim);
            k.EmbeddingGather(ids, table, y.Span);
            return [y];
        }, [], file);
    }
}

public sealed class NormCase(bool layer, int rows, int dim, bool bias = false, float offset = 0f, float xScale = 1f, Values values = Values.Normal) : OpCase
{
    public override string Op => layer ? "LayerNorm" : "RmsNorm";
    public override string Vars =>
        $"rows={rows},dim={dim}," + (layer ? $"bias={B(bias)}" : $"offset={offset:R}")
        + (xScale != 1f ? $",xscale={xScale:R}" : "") + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "");

    public override OpRun Prepare()
    {
        var rng = Rng();
        var xs = rng.Normal(rows * dim, 1.5f * xScale, 0.3f * xScale);
        if (values == Values.NonFinite)
        {
            // row 0 stays finite (no leak across rows); rows 1.. get one NaN, +inf, -inf each
            float[] specials = [float.NaN, float.PositiveInfinity, float.NegativeInfinity];
            for (int r = 1; r < rows; r++) xs[r * dim + rng.Int(dim)] = specials[(r - 1) % 3];
        }
        var x = Buffer.Input("x", xs);
        var w = Buffer.Input("weight", layer || offset == 0 ? rng.Normal(dim, 0.5f, 1f) : rng.Normal(dim, 0.3f));
        var b = Buffer.Input("bias", bias ? rng.Normal(dim, 0.5f) : []);
        float eps = layer ? 1e-5f : 1e-6f;
        return new OpRun(k =>
        {
            var y = Buffer.Output("y", rows * dim);
            var scale = Buffer.Output("scale", rows);
            if (layer) k.LayerNorm(x.Span, rows, dim, w.Span, bias ? b.Span : default, eps, y.Span, scale.Span);
            else k.RmsNorm(x.Span, rows, dim, w.Span, offset, eps, y.Span, scale.Span);
            return [y, scale];
        }, [x, w, b]);
    }
}

public sealed class RopeCase(int rows, int heads, int headDim, int rotDim, int pos0) : OpCase
{
    public override string Op => "Rope";
    public override string Vars => $"rows={rows},heads={heads},headDim={headDim},rotDim={rotDim},pos0={pos0}";

    public override OpRun Prepare()
    {
        var rng = Rng();
        var x0 = rng.Normal(rows * heads * headDim);
        var table = new RopeTable(rotDim, 10000.0, pos0 + rows);
        return new OpRun(k =>
        {
            var x = Buffer.InPlace("x", x0);
            k.Rope(x.Span, rows, heads, headDim, pos0, table);
            return [x];
        }, []);
    }
}

public enum AttnOp { Scores, Softmax, Mix, Fused }

public sealed class AttentionCase(AttnOp op, int rows, int pos0, int heads, int kvHeads, int headDim, Values values = Values.Normal) : OpCase
{
    public override string Op => op switch
    {
        AttnOp.Scores => "AttentionScores",
        AttnOp.Softmax => "AttentionSoftmax",
        AttnOp.Mix => "AttentionMix",
        _ => "Attention",
    };
    public override string Vars => $"rows={rows},pos0={pos0},heads={heads},kvHeads={kvHeads},headDim={headDim}"
        + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "");

    public override OpRun Prepare()
    {
        var rng = Rng();
        var s = new AttentionShape(rows, pos0, heads, kvHeads, headDim, 1f / MathF.Sqrt(headDim));
        int tk = s.Keys, n = heads * rows * tk;
        bool placed = op == AttnOp.Fused && values == Values.NonFinite;
        var q0 = rng.Spice(rng.Normal(rows * heads * headDim), placed ? Values.Normal : values);
        var k0 = rng.Normal(tk * kvHeads * headDim);
        var v0 = rng.Normal(tk * kvHeads * headDim);
        if (placed) PlaceNonFinite(s, q0, k0, v0);
        var q = Buffer.Input("q", q0);
        var kk = Buffer.Input("k", k0);
        var v = Buffer.Input("v", v0);
        switch (op)
        {
            case AttnOp.Scores:
                return new OpRun(k =>
                {
                    var sc = Buffer.Output("scores", n);
                    k.AttentionScores(q.Span, kk.Span, s, sc.Span);
                    return [sc];
                }, [q, kk]);
            case AttnOp.Softmax:
            {
                var sc = Buffer.Input("scores", Scores(rng, s));
                return new OpRun(k =>
                {
                    var p = Buffer.Output("pattern", n);
                    k.AttentionSoftmax(sc.Span, s, p.Span);
                    return [p];
                }, [sc]);
            }
            case AttnOp.Mix:
            {
                var p = Buffer.Input("pattern", Pattern(rng, s));
                return new OpRun(k =>
                {
                    var z = Buffer.Output("z", rows * heads * headDim);
                    k.AttentionMix(p.Span, v.Span, s, z.Span);
                    return [z];
                }, [p, v]);
            }
            default:
                return new OpRun(k =>
                {
                    var z = Buffer.Output("z", rows * heads * headDim);
                    k.Attention(q.Span, kk.Span, v.Span, s, z.Span);
                    return [z];
                }, [q, kk, v], invariant: (k, outs) =>
                {
                    // The runtime switches to the three steps when a hook taps scores or pattern. On the host backends z
                    // must not change by a bit; ILGPU's fused op is an online softmax, which agrees within the tolerance,
                    // NaN for NaN (IKernels.Attention).
                    var sc = Buffer.Output("scores", n);
                    var p = Buffer.Output("pattern", n);
                    var z = Buffer.Output("z", rows * heads * headDim);
                    k.AttentionScores(q.Span, kk.Span, s, sc.Span);
                    k.AttentionSoftmax(sc.Span, s, p.Span);
                    k.AttentionMix(p.Span, v.Span, s, z.Span);
                    const string what = "fused Attention vs AttentionScores -> AttentionSoftmax -> AttentionMix";
                    return (OpGrid.FusedAttentionIsOnline(k) ? Verdict.Close(what, z.Span, outs[0].Span, Tolerance) : Verdict.Bitwise(what, z.Span, outs[0].Span))
                        ?? sc.GuardViolation() ?? p.GuardViolation() ?? z.GuardViolation();
                });
        }
    }

    /// <summary>
    /// Non-finite inputs of the fused op, placed so that most rows stay finite and each special case has rows of its own
    /// (the reference decides what each row gets):
    /// - k: -inf in dim 0 of kv head 0 for keys 0..min(31, Tk - 2), and q's dim 0 positive in even rows, negative in odd
    ///   rows of the heads reading kv head 0: even rows see a block of -inf scores (all of their visible scores when they
    ///   see no later key: a NaN row; otherwise those keys weigh 0, and with Tk &gt; 32 the whole first tile is -inf),
    ///   odd rows a +inf score (a NaN row);
    /// - v: NaN at key min(3, Tk - 1), dim 0 of the last kv head: that dim of every row that sees the key is NaN;
    /// - k: NaN at the last key (dim d - 1) of the last kv head: only the last row of its heads sees it;
    /// - q: NaN in dim d / 2 of the middle row of the last head.
    /// </summary>
    static void PlaceNonFinite(AttentionShape s, float[] q, float[] k, float[] v)
    {
        int d = s.HeadDim, tk = s.Keys, K = s.KvHeads;
        for (int j = 0; j < Math.Max(1, Math.Min(32, tk - 1)); j++) k[(j * K + 0) * d] = float.NegativeInfinity;
        for (int t = 0; t < s.Rows; t++)
            for (int h = 0; h < s.Group; h++)
            {
                ref float x = ref q[(t * s.Heads + h) * d];
                x = (t % 2 == 0 ? 1f : -1f) * (Math.Abs(x) + 0.25f);
            }
        v[(Math.Min(3, tk - 1) * K + K - 1) * d] = float.NaN;
        k[((tk - 1) * K + K - 1) * d + d - 1] = float.NaN;
        q[((s.Rows / 2) * s.Heads + s.Heads - 1) * d + d / 2] = float.NaN;
    }

    /// <summary>Scores [H, T, Tk]; cells above the diagonal are NaN (they must not be read). NonFinite: per row, all
    /// visible -inf (a NaN row), some -inf, one +inf, or one NaN.</summary>
    float[] Scores(CaseRandom rng, AttentionShape s)
    {
        int tk = s.Keys;
        var a = new float[s.Heads * s.Rows * tk];
        for (int h = 0; h < s.Heads; h++)
            for (int t = 0; t < s.Rows; t++)
            {
                int r = h * s.Rows + t, off = r * tk, n = s.Pos0 + t + 1;
                for (int j = 0; j < tk; j++) a[off + j] = j < n ? 2f * rng.Normal() : float.NaN;
                if (values != Values.NonFinite) continue;
                switch (r % 4)
                {
                    case 0: for (int j = 0; j < n; j++) a[off + j] = float.NegativeInfinity; break;
                    case 1: for (int j = 1; j < n; j++) if (rng.Int(2) == 0) a[off + j] = float.NegativeInfinity; break;
                    case 2: a[off + rng.Int(n)] = float.PositiveInfinity; break;
                    default: a[off + rng.Int(n)] = float.NaN; break;
                }
            }
        return a;
    }

    /// <summary>Pattern [H, T, Tk]: visible cells a probability distribution, NaN above the diagonal (must not be read).</summary>
    static float[] Pattern(CaseRandom rng, AttentionShape s)
    {
        int tk = s.Keys;
        var a = new float[s.Heads * s.Rows * tk];
        for (int r = 0; r < s.Heads * s.Rows; r++)
        {
            int t = r % s.Rows, n = s.Pos0 + t + 1, off = r * tk;
            float sum = 0;
            for (int j = 0; j < n; j++) sum += a[off + j] = rng.Uniform(0, 1);
            for (int j = 0; j < tk; j++) a[off + j] = j < n ? a[off + j] / sum : float.NaN;
        }
        return a;
    }
}

public sealed class ActivationCase(ActivationKind kind, int n, bool gated, Values values = Values.Normal) : OpCase
{
    public int N => n;
    public override string Op => gated ? "GatedActivation" : "Activation";
    public override string Vars => $"kind={kind},n={n}" + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "");
    public override Tolerance Tolerance => Tolerance.Elementwise;

    public override OpRun Prepare()
    {
        var rng = Rng();
        var x = Buffer.Input("x", rng.Spice(rng.Uniform(n, -8, 8), values));
        var up = Buffer.Input("up", gated ? rng.Spice(rng.Uniform(n, -3, 3), values == Values.NonFinite ? values : Values.Normal) : []);
        return new OpRun(k =>
        {
            var y = Buffer.Output("y", n);
            if (gated) k.GatedActivation(kind, x.Span, up.Span, y.Span);
            else k.Activation(kind, x.Span, y.Span);
            return [y];
        }, gated ? [x, up] : [x]);
    }
}

public sealed class AddCase(int n, Values values = Values.Normal) : OpCase
{
    public int N => n;
    public override string Op => "AddInPlace";
    public override string Vars => $"n={n}" + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "");
    public override Tolerance Tolerance => Tolerance.Elementwise;

    public override OpRun Prepare()
    {
        var rng = Rng();
        var x = Buffer.Input("x", rng.Spice(rng.Normal(n), values));
        var acc0 = rng.Spice(rng.Normal(n), values);
        return new OpRun(k =>
        {
            var acc = Buffer.InPlace("acc", acc0);
            k.AddInPlace(x.Span, acc.Span);
            return [acc];
        }, [x]);
    }
}

public sealed class ScaleCase(int n, float s, Values values = Values.Normal) : OpCase
{
    public int N => n;
    public override string Op => "ScaleInPlace";
    public override string Vars => $"n={n},s={s:R}" + (values != Values.Normal ? $",values={values.ToString().ToLowerInvariant()}" : "");
    public override Tolerance Tolerance => Tolerance.Elementwise;

    public override OpRun Prepare()
    {
        var rng = Rng();
        var x0 = rng.Spice(rng.Normal(n), values);
        return new OpRun(k =>
        {
            var x = Buffer.InPlace("x", x0);
            k.ScaleInPlace(x.Span, s);
            return [x];
        }, []);
    }
}

/// <summary>
/// A one-tensor safetensors file ("w") in a temporary folder, written with <see cref="SafeTensorWriter"/> and mapped with
/// <see cref="SafeTensorFile"/>. Misaligned: a 1-element pad tensor goes first (F16 before an F32 tensor: +2 bytes;
/// U8 before a 16-bit tensor: +1 byte), so the weights start at an address that is not a multiple of their size.
/// </summary>
public sealed class TempTensors : IDisposable
{
    static int s_counter;
    public SafeTensorFile File { get; }
    readonly string _path;

    TempTensors(string path) { _path = path; File = SafeTensorFile.Open(path); }

    public static TempTensors Write(DType dtype, bool misaligned, long[] shape, float[] data)
    {
        string dir = Path.Combine(Path.GetTempPath(), "engine-opgrid");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, $"{Environment.ProcessId}-{Interlocked.Increment(ref s_counter)}.safetensors");
        var entries = new List<SafeTensorWriter.Entry>();
        if (misaligned)
            entries.Add(dtype == DType.F32
                ? SafeTensorWriter.Convert("pad", [1], [0f], DType.F16)
                : new SafeTensorWriter.Entry("pad", [1], DType.U8, [0]));
        entries.Add(SafeTensorWriter.Convert("w", shape, data, dtype));
        SafeTensorWriter.Write(path, entries);
        return new TempTensors(path);
    }

    public void Dispose()
    {
        File.Dispose();
        try { System.IO.File.Delete(_path); } catch (IOException) { }
    }
}
