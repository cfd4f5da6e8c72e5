using Engine.Kernels;
using Engine.Kernels.Simd;
using Engine.Kernels.Threading;
using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Runtime;

/// <summary>
/// Determinism: the same input gives bit-identical logits run after run (same backend, same thread count), for a
/// prefill of 20 tokens and for decoding through the KV cache; across thread counts of the cpu backend the logits are
/// bit-identical or within 1e-5. Models: random-weight GPT-2 and Llama shapes wide enough (d_model 256, d_mlp 1024,
/// 2,000-token vocabulary) that the cpu backend splits its matrix products over threads.
/// </summary>
public class DeterminismTests(ITestOutputHelper output, DeterminismTests.Models models) : IClassFixture<DeterminismTests.Models>
{
    public sealed class Models : IDisposable
    {
        readonly TempDir _dir = new();
        public string Gpt2 { get; }
        public string Llama { get; }

        public Models()
        {
            Gpt2 = Path.Combine(_dir.Path, "gpt2");
            RandomModel.Create(Gpt2, new RandomModelShape("gpt2", 2, 256, 4, 4, 1024, 2000, 128), DType.F32, 7);
            Llama = Path.Combine(_dir.Path, "llama");
            RandomModel.Create(Llama, new RandomModelShape("llama", 2, 256, 8, 2, 768, 2000, 128, Tied: false), DType.BF16, 8);
        }

        public void Dispose() => _dir.Dispose();
    }

    readonly Models _models = models;

    static readonly int[] Prompt = [5, 17, 1999, 3, 256, 42, 42, 7, 1000, 12, 0, 1, 2, 3, 512, 77, 8, 9, 10, 1500];

    string Folder(string family) => family == "gpt2" ? _models.Gpt2 : _models.Llama;

    /// <summary>Prefill logits [T, V] then 6 greedy decode steps' logits [1, V] each, concatenated.</summary>
    static float[] Trace(Model model, IKernels kernels)
    {
        using var s = new Session(model, new SessionOptions { Kernels = kernels, Capacity = 64 });
        var all = new List<float>(s.Run(Prompt).ToArray());
        int V = model.Config.VocabSize;
        int next = Session.ArgMax(all.ToArray().AsSpan((Prompt.Length - 1) * V, V));
        for (int step = 0; step < 6; step++)
        {
            var row = s.Forward([next]).ToArray();
            all.AddRange(row);
            next = Session.ArgMax(row);
        }
        return all.ToArray();
    }

    [Theory]
    [InlineData("gpt2", "cpu")]
    [InlineData("gpt2", "cpu-ref")]
    [InlineData("llama", "cpu")]
    [InlineData("llama", "cpu-ref")]
    public void SameInputGivesBitIdenticalLogits(string family, string backend)
    {
        using var model = Model.Load(Folder(family));
        var first = Trace(model, KernelRegistry.Create(backend));
        for (int run = 0; run < 3; run++)
        {
            var again = Trace(model, KernelRegistry.Create(backend));
            Assert.Equal(first.Length, again.Length);
            for (int i = 0; i < first.Length; i++)
                if (BitConverter.SingleToInt32Bits(first[i]) != BitConverter.SingleToInt32Bits(again[i]))
                    Assert.Fail($"{family}/{backend} run {run + 2}: logit {i} differs ({first[i]:R} vs {again[i]:R})");
        }
        // The same session reused (KV cache reset by Run) gives the same prefill logits too.
        using var s = new Session(model, new SessionOptions { Backend = backend, Capacity = 64 });
        var a = s.Run(Prompt).ToArray();
        s.Forward([1, 2, 3]);
        var b = s.Run(Prompt).ToArray();
        Assert.True(a.AsSpan().SequenceEqual(b), "a reused session gives different prefill logits");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void ThreadCountsAgree(string family)
    {
        using var model = Model.Load(Folder(family));
        float[]? reference = null;
        foreach (int threads in new[] { 1, 2, 3, 4 })
        {
            using var pool = new WorkerPool(threads);
            var kernels = new SimdKernels(pool);
            var got = Trace(model, kernels);
            var again = Trace(model, new SimdKernels(pool));
            Assert.True(got.AsSpan().SequenceEqual(again), $"{threads} threads: two runs differ");
            if (reference == null) { reference = got; continue; }
            double max = 0;
            int identical = 0;
            for (int i = 0; i < got.Length; i++)
            {
                double d = Math.Abs(got[i] - reference[i]);
                max = Math.Max(max, d);
                if (got[i] == reference[i]) identical++;
            }
            output.WriteLine($"{family}, {threads} threads vs 1: max |diff| {max:E2}, {identical}/{got.Length} bit-identical");
            Assert.True(max <= 1e-5, $"{family}: {threads} threads differ from 1 thread by {max:E2} (> 1e-5)");
        }
    }
}
