using System.Runtime.InteropServices;
using Engine.Kernels;
using Engine.Kernels.Profiling;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Runtime;

/// <summary>
/// Properties of the runtime that no single golden value pins: taps that change nothing change nothing (bit for bit),
/// taps that write change exactly what follows them, hook registration is scoped and checked, the KV cache gives the
/// logits of one full run, runs are deterministic, and the hook list of a model is fixed.
/// </summary>
public class RuntimeInvariantTests
{
    /// <summary>One fixture per family: learned positions + Conv1D (gpt2), RoPE + GQA (llama), offset RMSNorm + MQA +
    /// embedding scale (gemma), parallel residual + partial rotary + fused per-head qkv (gpt_neox).</summary>
    public static readonly string[] Families = ["gpt2", "llama", "gemma", "gpt_neox"];
    public static readonly string[] Backends = ["cpu", "cpu-ref"];

    public static IEnumerable<object[]> FamilyBackends() => from f in Families from b in Backends select new object[] { f, b };
    public static IEnumerable<object[]> FamilyNames() => Families.Select(f => new object[] { f });

    internal static readonly int[] TokensA = [5, 17, 300, 42, 511, 0, 99, 7];
    internal static readonly int[] TokensB = [13, 250, 1, 64, 128, 400, 3, 77];

    internal static (Model Model, Session Session) Open(string fixture, string backend)
    {
        var model = Model.Load(TestPaths.Fixture(fixture));
        return (model, new Session(model, new SessionOptions { Backend = backend, Capacity = 32 }));
    }

    internal static bool BitIdentical(ReadOnlySpan<float> a, ReadOnlySpan<float> b) =>
        MemoryMarshal.AsBytes(a).SequenceEqual(MemoryMarshal.AsBytes(b));

    static string FirstDifference(ReadOnlySpan<float> want, ReadOnlySpan<float> got)
    {
        if (want.Length != got.Length) return $"length {got.Length} != {want.Length}";
        for (int i = 0; i < want.Length; i++)
            if (BitConverter.SingleToInt32Bits(want[i]) != BitConverter.SingleToInt32Bits(got[i]))
                return $"first difference at [{i}]: {want[i]:R} vs {got[i]:R}";
        return "identical";
    }

    // ------------------------------------------------------------------ no-op hooks

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void NoOpHooksLeaveLogitsBitIdentical(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        {
            var clean = s.Run(TokensA).ToArray();
            int calls = 0;
            // Every hook name, attn_scores/pattern included: attention runs as three materialised steps instead of fused.
            // On the host backends the fused op is bit-identical to the three steps (IKernels.Attention), so the logits
            // are too. The ILGPU backends' fused op is an online softmax (flash attention) that agrees with the three
            // steps only within float rounding, so there a hook on scores or pattern may move the logits by rounding
            // (bounded here by 1e-5 absolute); the hooks that leave attention fused must still change no bit (below).
            using (s.Hooks.AddWhere(_ => true, _ => calls++))
            {
                Assert.Equal(HookPoints.All(model.Config).Count, s.Hooks.Count);
                var hooked = s.Run(TokensA).ToArray();
                AssertSameAsFused(clean, hooked, backend, $"{fixture}/{backend}: no-op hooks on every tap changed the logits");
                Assert.Equal(HookPoints.All(model.Config).Count, calls);
            }
            // Every hook but the attention ones: the fused path with taps around it.
            using (s.Hooks.AddWhere(n => !n.EndsWith("hook_attn_scores", StringComparison.Ordinal) && !n.EndsWith("hook_pattern", StringComparison.Ordinal), _ => { }))
            {
                var hooked = s.Run(TokensA).ToArray();
                Assert.True(BitIdentical(clean, hooked), $"{fixture}/{backend}: no-op non-attention hooks changed the logits: {FirstDifference(clean, hooked)}");
            }
            // The same through the KV cache (prefix, then one token at a time).
            var cleanDecode = Decode(s, TokensA, 5);
            using (s.Hooks.AddWhere(_ => true, _ => { }))
            {
                var hookedDecode = Decode(s, TokensA, 5);
                AssertSameAsFused(cleanDecode, hookedDecode, backend, $"{fixture}/{backend}: no-op hooks changed KV-cache decoding");
            }
            var again = s.Run(TokensA).ToArray();
            Assert.True(BitIdentical(clean, again), $"{fixture}/{backend}: logits changed after the hooks were removed");
        }
    }

    /// <summary>
    /// Logits of a run whose attention went through the three steps (a hook on scores or pattern) against the fused run:
    /// bit for bit on the host backends; within 1e-5 absolute on the ILGPU backends, whose fused op is an online softmax.
    /// </summary>
    static void AssertSameAsFused(float[] fused, float[] threeSteps, string backend, string what)
    {
        if (!backend.StartsWith("ilgpu", StringComparison.Ordinal))
        {
            Assert.True(BitIdentical(fused, threeSteps), $"{what}: {FirstDifference(fused, threeSteps)}");
            return;
        }
        double d = Compare.MaxAbsDiff(threeSteps, fused, out int at);
        Assert.True(d <= 1e-5, $"{what} by more than rounding: max |diff| {d:G3} at [{at}]");
    }

    /// <summary>Forward(prefix) then one Forward per remaining token; returns the logits rows of all positions [T, V].</summary>
    static float[] Decode(Session s, int[] tokens, int prefix)
    {
        int V = s.Config.VocabSize;
        var all = new float[tokens.Length * V];
        s.Reset();
        s.Forward(tokens.AsSpan(0, prefix)).CopyTo(all);
        for (int t = prefix; t < tokens.Length; t++) s.Forward(tokens.AsSpan(t, 1)).CopyTo(all.AsSpan(t * V));
        return all;
    }

    // ------------------------------------------------------------------ writing taps

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void ZeroingResidPreAtOnePositionChangesThatPositionAndLaterOnes(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        {
            int V = model.Config.VocabSize, p = 3;
            var clean = s.Run(TokensA).ToArray();
            float[] patched;
            using (s.Hooks.Add("blocks.0.hook_resid_pre", tap => tap.Row(p).Clear()))
                patched = s.Run(TokensA).ToArray();
            for (int t = 0; t < TokensA.Length; t++)
            {
                var a = clean.AsSpan(t * V, V);
                var b = patched.AsSpan(t * V, V);
                if (t < p) Assert.True(BitIdentical(a, b), $"{fixture}/{backend}: position {t} < {p} changed (causality): {FirstDifference(a, b)}");
                else Assert.False(BitIdentical(a, b), $"{fixture}/{backend}: position {t} >= {p} did not change");
            }
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void ZeroingOneHeadOfZRemovesExactlyItsShareOfTheOutputProjection(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        {
            var c = model.Config;
            int l = 1, head = 2, H = c.NHeads, d = c.HeadDim, D = c.DModel, T = TokensA.Length;
            string zName = HookPoints.Act("z", l), outName = HookPoints.Act("attn_out", l);
            var (cleanLogits, clean) = s.RunWithCache(TokensA, n => n == zName || n == outName);

            float[]? zPatched = null, attnOut = null;
            float[] logits;
            using (s.Hooks.Add(zName, tap =>
                   {
                       for (int t = 0; t < tap.Shape.D0; t++) tap.Data.Slice((t * H + head) * d, d).Clear();   // [T, H, d]
                   }))
            using (s.Hooks.Add(zName, tap => zPatched = tap.Data.ToArray()))
            using (s.Hooks.Add(outName, tap => attnOut = tap.Data.ToArray()))
                logits = s.Run(TokensA).ToArray();
            Assert.NotNull(zPatched);
            Assert.NotNull(attnOut);
            Assert.False(BitIdentical(cleanLogits, logits), $"{fixture}/{backend}: zeroing head {head} of {zName} left the logits unchanged");

            // 1. The patched z is what the output projection read: same kernel, same input, same bits.
            var expected = new float[T * D];
            s.Kernels.MatMul(zPatched, T, model.Weights.Layers[l].O, expected);
            Assert.True(BitIdentical(expected, attnOut), $"{fixture}/{backend}: {outName} is not W_O applied to the patched z: {FirstDifference(expected, attnOut)}");

            // 2. Independently, in double: attn_out_patched = attn_out_clean - z_clean[:, head] . W_O[:, head*d:(head+1)*d]^T.
            var o = model.Weights.Layers[l].O;
            var zClean = clean[zName].Data;
            var outClean = clean[outName].Data;
            double worst = 0;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < D; j++)
                {
                    double share = 0;
                    for (int i = 0; i < d; i++)
                    {
                        int col = head * d + i;
                        long idx = o.InputMajor ? (long)col * o.Out + j : (long)j * o.In + col;
                        share += (double)zClean[(t * H + head) * d + i] * o.W.Get(idx);
                    }
                    worst = Math.Max(worst, Math.Abs(outClean[t * D + j] - share - attnOut![t * D + j]));
                }
            Assert.True(worst <= 1e-4, $"{fixture}/{backend}: removing head {head}'s share by hand differs by {worst:G3}");
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void PatchingResidPreWithAnotherRunReproducesThatRunDownstream(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        {
            int l = 1;
            string resid = HookPoints.Act("resid_pre", l), post = HookPoints.Act("resid_post", l), lnf = "ln_final.hook_normalized";
            var (logitsB, cacheB) = s.RunWithCache(TokensB, n => n == resid || n == post || n == lnf);
            var logitsA = s.Run(TokensA).ToArray();
            Assert.False(BitIdentical(logitsA, logitsB));

            var fromB = cacheB[resid].Data;
            (float[] Logits, ActivationCache Cache) patched;
            using (s.Hooks.Add(resid, tap => fromB.CopyTo(tap.Data)))
                patched = s.RunWithCache(TokensA, n => n == post || n == lnf);
            Assert.True(BitIdentical(logitsB, patched.Logits), $"{fixture}/{backend}: logits of A with B's {resid} differ from B's: {FirstDifference(logitsB, patched.Logits)}");
            Assert.True(BitIdentical(cacheB[post].Data, patched.Cache[post].Data), $"{fixture}/{backend}: {post} differs");
            Assert.True(BitIdentical(cacheB[lnf].Data, patched.Cache[lnf].Data), $"{fixture}/{backend}: {lnf} differs");
        }
    }

    // ------------------------------------------------------------------ registration

    [Theory]
    [MemberData(nameof(FamilyNames))]
    public void HookRegistrationIsScoped(string fixture)
    {
        var (model, s) = Open(fixture, "cpu");
        using (model) using (s)
        {
            int calls = 0, second = 0;
            Assert.Equal(0, s.Hooks.Count);
            using (s.Hooks.Add("blocks.0.hook_resid_pre", _ => calls++))
            {
                Assert.Equal(1, s.Hooks.Count);
                s.Run(TokensA);
                Assert.Equal(1, calls);
            }
            Assert.Equal(0, s.Hooks.Count);
            s.Run(TokensA);
            Assert.Equal(1, calls);

            var first = s.Hooks.Add("hook_embed", _ => calls++);
            var other = s.Hooks.Add("hook_embed", _ => second++);
            Assert.Equal(2, s.Hooks.Count);
            first.Dispose();
            first.Dispose();                                                 // disposing twice removes nothing else
            Assert.Equal(1, s.Hooks.Count);
            s.Run(TokensA);
            Assert.Equal((1, 1), (calls, second));
            other.Dispose();

            var all = s.Hooks.AddWhere(_ => true, _ => { });
            Assert.Equal(HookPoints.All(model.Config).Count, s.Hooks.Count);
            all.Dispose();
            Assert.Equal(0, s.Hooks.Count);

            var (_, cache) = s.RunWithCache(TokensA);
            Assert.Equal(HookPoints.All(model.Config), cache.Names);
            Assert.Equal(0, s.Hooks.Count);                                  // RunWithCache removes its hooks
        }
    }

    public static IEnumerable<object[]> BadHookNames() =>
    [
        ["llama", "hook_pos_embed"],                                          // RoPE models have no position embedding
        ["llama", "blocks.0.hook_nonsense"],
        ["llama", "blocks.3.hook_resid_pre"],                                 // 3 layers: 0..2
        ["llama", "blocks.-1.hook_resid_pre"],
        ["llama", "blocks.0.attn.hook_result"],
        ["llama", "resid_pre"],                                               // a short name is not a hook name
        ["llama", ""],
        ["gpt_neox", "blocks.0.hook_resid_mid"],                              // parallel residual
        ["gpt2", "blocks.0.attn.hook_rot_q"],                                 // learned positions
        ["gpt2", "blocks.1.mlp.hook_pre_linear"],                             // not a gated MLP
    ];

    [Theory]
    [MemberData(nameof(BadHookNames))]
    public void UnknownOrAbsentHookNamesThrowNamingTheHook(string fixture, string name)
    {
        var (model, s) = Open(fixture, "cpu");
        using (model) using (s)
        {
            var e = Assert.ThrowsAny<EngineException>(() => s.Hooks.Add(name, _ => { }));
            Assert.Contains($"'{name}'", e.Message);
            Assert.Equal(0, s.Hooks.Count);
        }
    }

    // ------------------------------------------------------------------ KV cache and determinism

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void KvCacheGivesTheLogitsOfOneRun(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        {
            var full = s.Run(TokensA).ToArray();
            foreach (int prefix in new[] { 1, 3, TokensA.Length - 1 })
            {
                int V = model.Config.VocabSize;
                var split = new float[full.Length];
                s.Reset();
                s.Forward(TokensA.AsSpan(0, prefix)).CopyTo(split);
                s.Forward(TokensA.AsSpan(prefix)).CopyTo(split.AsSpan(prefix * V));
                Compare.Close(split, full, 1e-5, $"{fixture}/{backend}: Forward({prefix} tokens) + Forward(rest) vs Run");
                Compare.Close(Decode(s, TokensA, prefix), full, 1e-5, $"{fixture}/{backend}: Forward({prefix} tokens) + one token at a time vs Run");
                Assert.Equal(TokensA.Length, s.Length);
            }
        }
    }

    /// <summary>
    /// A session that keeps only the last row's logits, with no hook registered, runs the last layer from its attention
    /// on for that row alone (SessionOptions.SkipUnusedRows): its logits and the KV cache it leaves must be those of the
    /// full computation (within rounding), and any hook must turn the skip off, so that the hook sees every row.
    /// </summary>
    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void LastRowOnlyPassSkipsNothingObservable(string fixture, string backend)
    {
        using var model = Model.Load(TestPaths.Fixture(fixture));
        int V = model.Config.VocabSize, last = model.Config.NLayers - 1, T = TokensA.Length;
        using var all = new Session(model, new SessionOptions { Backend = backend, Capacity = 32 });
        var lastOnlyKernels = new ProfilingKernels(KernelRegistry.Create(backend));
        var fullWorkKernels = new ProfilingKernels(KernelRegistry.Create(backend));
        using var lastOnly = new Session(model, new SessionOptions { Kernels = lastOnlyKernels, Capacity = 32, AllLogits = false, SkipUnusedRows = true });
        using var fullWork = new Session(model, new SessionOptions { Kernels = fullWorkKernels, Capacity = 32, AllLogits = false, SkipUnusedRows = false });
        var want = all.Run(TokensA).ToArray();
        var wantLast = want.AsSpan((T - 1) * V, V).ToArray();

        Compare.Close(lastOnly.Run(TokensA).ToArray(), wantLast, 1e-5, $"{fixture}/{backend}: last-row logits with the last layer's unused rows skipped");
        Compare.Close(fullWork.Run(TokensA).ToArray(), wantLast, 1e-5, $"{fixture}/{backend}: last-row logits, every row computed");
        // One-row products: the unembedding alone when every row is computed; with the skip also the last layer's
        // output projection and MLP (2 or 3 products).
        static long OneRowProducts(ProfilingKernels k) =>
            k.Profile.Stats.Where(st => st.Call.Kind == OpKind.MatMul && st.Call.A == 1).Sum(st => st.Calls);
        Assert.Equal(1, OneRowProducts(fullWorkKernels));
        Assert.InRange(OneRowProducts(lastOnlyKernels), 4, 5);

        // RunFrom (last-row logits only) skips the same rows; capturing the base computes every row.
        using (var captured = lastOnly.CaptureBase(TokensA))
        {
            long before = OneRowProducts(lastOnlyKernels);
            Compare.Close(lastOnly.RunFrom(captured, 1, 3).ToArray(), wantLast, 1e-5, $"{fixture}/{backend}: RunFrom(layer 1, row 3) with the skip");
            Assert.InRange(OneRowProducts(lastOnlyKernels) - before, 4, 5);
        }

        // The KV cache left behind is complete: decoding on from it gives the full run's logits.
        var next = new[] { TokensB[0] };
        all.Forward(next);
        var wantNext = all.LastLogits.ToArray();
        Compare.Close(lastOnly.Forward(next).ToArray(), wantNext, 1e-5, $"{fixture}/{backend}: decode step after a skipping prefill");

        // Any hook turns the skip off: a hook on a tap of the skipped rows (or anywhere else) sees all of them, and the
        // logits are those of the full computation.
        foreach (var name in new[] { "blocks.0.hook_resid_pre", $"blocks.{last}.attn.hook_k", $"blocks.{last}.attn.hook_z", $"blocks.{last}.mlp.hook_post", $"blocks.{last}.hook_resid_post", "ln_final.hook_normalized" })
        {
            int rows = 0, pos0 = -1;
            long before = OneRowProducts(lastOnlyKernels);
            using (lastOnly.Hooks.Add(name, t => { rows = t.Shape.D0; pos0 = t.Pos0; }))
            {
                var got = lastOnly.Run(TokensA).ToArray();
                Assert.True(rows == T && pos0 == 0, $"{fixture}/{backend}: {name} saw {rows} rows from {pos0}, want {T} from 0");
                Assert.Equal(1, OneRowProducts(lastOnlyKernels) - before);
                Compare.Close(got, wantLast, 1e-5, $"{fixture}/{backend}: last-row logits with a hook on {name}");
                Assert.True(BitIdentical(fullWork.Run(TokensA), got), $"{fixture}/{backend}: with a hook on {name}, the last-row logits differ from the full computation's");
            }
        }
    }

    [Theory]
    [MemberData(nameof(FamilyBackends))]
    public void RunsAreBitIdentical(string fixture, string backend)
    {
        var (model, s) = Open(fixture, backend);
        using (model) using (s)
        using (var s2 = new Session(model, new SessionOptions { Backend = backend, Capacity = 32 }))
        {
            var a = s.Run(TokensA).ToArray();
            s.Run(TokensB);
            var b = s.Run(TokensA).ToArray();
            var c = s2.Run(TokensA).ToArray();
            Assert.True(BitIdentical(a, b), $"{fixture}/{backend}: two runs on one session differ: {FirstDifference(a, b)}");
            Assert.True(BitIdentical(a, c), $"{fixture}/{backend}: two sessions differ: {FirstDifference(a, c)}");
        }
    }

    // ------------------------------------------------------------------ golden hook lists

    static string[] Block(int l, bool rotary, bool residMid, bool gated) =>
    [
        $"blocks.{l}.hook_resid_pre", $"blocks.{l}.ln1.hook_scale", $"blocks.{l}.ln1.hook_normalized",
        $"blocks.{l}.attn.hook_q", $"blocks.{l}.attn.hook_k", $"blocks.{l}.attn.hook_v",
        .. rotary ? new[] { $"blocks.{l}.attn.hook_rot_q", $"blocks.{l}.attn.hook_rot_k" } : [],
        $"blocks.{l}.attn.hook_attn_scores", $"blocks.{l}.attn.hook_pattern", $"blocks.{l}.attn.hook_z",
        $"blocks.{l}.hook_attn_out",
        .. residMid ? new[] { $"blocks.{l}.hook_resid_mid" } : [],
        $"blocks.{l}.ln2.hook_scale", $"blocks.{l}.ln2.hook_normalized",
        $"blocks.{l}.mlp.hook_pre",
        .. gated ? new[] { $"blocks.{l}.mlp.hook_pre_linear" } : [],
        $"blocks.{l}.mlp.hook_post", $"blocks.{l}.hook_mlp_out", $"blocks.{l}.hook_resid_post",
    ];

    [Fact]
    public void HookListOfATwoLayerGpt2IsPinned()
    {
        var c = ModelConfig.Load(Path.Combine(TestPaths.Fixture("gpt2"), "config.json")) with { NLayers = 2 };
        string[] expected =
        [
            "hook_embed", "hook_pos_embed",
            "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized",
            "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v",
            "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
            "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_scale", "blocks.0.ln2.hook_normalized",
            "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_pre", "blocks.1.ln1.hook_scale", "blocks.1.ln1.hook_normalized",
            "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v",
            "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
            "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.1.ln2.hook_scale", "blocks.1.ln2.hook_normalized",
            "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
            "ln_final.hook_scale", "ln_final.hook_normalized",
        ];
        Assert.Equal(expected, HookPoints.All(c));
        string[] composed = ["hook_embed", "hook_pos_embed", .. Block(0, false, true, false), .. Block(1, false, true, false), "ln_final.hook_scale", "ln_final.hook_normalized"];
        Assert.Equal(expected, composed);
    }

    [Fact]
    public void HookListOfATwoLayerLlamaIsPinned()
    {
        var c = ModelConfig.Load(Path.Combine(TestPaths.Fixture("llama"), "config.json")) with { NLayers = 2 };
        string[] expected =
        [
            "hook_embed",
            "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized",
            "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v",
            "blocks.0.attn.hook_rot_q", "blocks.0.attn.hook_rot_k",
            "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
            "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_scale", "blocks.0.ln2.hook_normalized",
            "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_pre", "blocks.1.ln1.hook_scale", "blocks.1.ln1.hook_normalized",
            "blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v",
            "blocks.1.attn.hook_rot_q", "blocks.1.attn.hook_rot_k",
            "blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z",
            "blocks.1.hook_attn_out", "blocks.1.hook_resid_mid", "blocks.1.ln2.hook_scale", "blocks.1.ln2.hook_normalized",
            "blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_pre_linear", "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post",
            "ln_final.hook_scale", "ln_final.hook_normalized",
        ];
        Assert.Equal(expected, HookPoints.All(c));
        string[] composed = ["hook_embed", .. Block(0, true, true, true), .. Block(1, true, true, true), "ln_final.hook_scale", "ln_final.hook_normalized"];
        Assert.Equal(expected, composed);
    }

    [Fact]
    public void GptNeoXHasNoResidMid()
    {
        using var model = Model.Load(TestPaths.Fixture("gpt_neox"));
        var c = model.Config;
        string[] expected = ["hook_embed", .. Enumerable.Range(0, c.NLayers).SelectMany(l => Block(l, true, false, false)), "ln_final.hook_scale", "ln_final.hook_normalized"];
        Assert.Equal(expected, HookPoints.All(c));
    }
}

/// <summary>Runs alone (no other test allocating meanwhile), so that the process-wide allocation counter means something.</summary>
[CollectionDefinition(nameof(AllocationCollection), DisableParallelization = true)]
public sealed class AllocationCollection;

/// <summary>
/// STYLE.md lesson 11: after warm-up the forward pass allocates nothing, prefill or decode, on the calling thread
/// (GetAllocatedBytesForCurrentThread, exact) or on the worker threads (GetTotalAllocatedBytes, process-wide).
/// </summary>
[Collection(nameof(AllocationCollection))]
public class RuntimeInvariantAllocationTests
{
    public static IEnumerable<object[]> Fixtures() =>
        new[] { "gpt2", "llama", "llama-bf16", "gemma", "gpt_neox" }.Select(f => new object[] { f });

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void ForwardAllocatesNothingPerTokenOnCpu(string fixture)
    {
        var (model, s) = RuntimeInvariantTests.Open(fixture, "cpu");
        using (model) using (s)
        {
            var prompt = RuntimeInvariantTests.TokensA;
            var one = new int[1];
            void Prefill() => s.Run(prompt);
            void Decode()
            {
                for (int i = 0; i < 4; i++) { one[0] = RuntimeInvariantTests.TokensB[i]; s.Forward(one); }
            }
            // Warm-up: JIT, and the thread-static scratch of every worker (grown once, on first use by each thread).
            for (int w = 0; w < 5; w++) { Prefill(); Decode(); }

            var report = new List<string>();
            long bestTotal = long.MaxValue;
            // The per-thread count is exact; the process-wide count also sees other threads of the test process (a
            // background thread left by an earlier test, the runtime's own), so take the best of up to ten attempts a
            // little apart (a per-token allocation on a worker shows up in every one).
            for (int attempt = 0; attempt < 10 && bestTotal != 0; attempt++)
            {
                if (attempt > 0) Thread.Sleep(20 * attempt);
                long total = 0;
                foreach (var (what, step) in new (string, Action)[] { ("prefill", Prefill), ("decode x4", Decode) })
                {
                    long t0 = GC.GetAllocatedBytesForCurrentThread(), g0 = GC.GetTotalAllocatedBytes(precise: true);
                    step();
                    long t1 = GC.GetAllocatedBytesForCurrentThread(), g1 = GC.GetTotalAllocatedBytes(precise: true);
                    Assert.True(t1 - t0 == 0, $"{fixture}: {what} allocated {t1 - t0} bytes on the calling thread");
                    total += g1 - g0;
                    report.Add($"{what}: {g1 - g0} bytes process-wide");
                }
                bestTotal = Math.Min(bestTotal, total);
            }
            Assert.True(bestTotal == 0, $"{fixture}: the forward pass allocated in every attempt: {string.Join("; ", report)}");
        }
    }
}
