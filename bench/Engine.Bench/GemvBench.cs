using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using Engine.Kernels;
using Engine.Kernels.Threading;
using Engine.Loader;

namespace Engine.Bench;

/// <summary>
/// Matrix-vector products (one row, as a decode step) read from memory: `sweeps`-style subcommand
///   dotnet run -c Release --project bench/Engine.Bench -- gemv [--matrices 16] [--rounds 7] [--calls 64]
/// Weights are zero-copy views of a safetensors file (as a loaded model's are: file-backed pages), rotated over enough
/// distinct matrices that they cannot stay in the last-level cache. Each case is held against a plain 2-thread SIMD read
/// of the same matrices in the same round (the ceiling for weights mapped from a file), and against the machine's
/// measured read bandwidth (engine sysinfo, anonymous memory). Figures: medians over rounds of GB/s of weight bytes.
/// </summary>
public static unsafe class GemvBench
{
    sealed record Case(string Label, int K, int N, bool InputMajor, DType DType)
    {
        public long Bytes => (long)K * N * DType switch { DType.F32 => 4, _ => 2 };
    }

    public static int Run(string[] args)
    {
        string Arg(string name, string def)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : def;
        }
        int matrices = int.Parse(Arg("--matrices", "16"), CultureInfo.InvariantCulture);
        int rounds = int.Parse(Arg("--rounds", "7"), CultureInfo.InvariantCulture);
        int calls = int.Parse(Arg("--calls", "64"), CultureInfo.InvariantCulture);
        var only = Arg("--cases", "").Split(',', StringSplitOptions.RemoveEmptyEntries).ToHashSet();
        var cases = new List<Case>();
        foreach (var dt in new[] { DType.F32, DType.BF16, DType.F16 })
            foreach (bool im in new[] { true, false })
                foreach (var (k, n) in new[] { (768, 3072), (3072, 768), (768, 2304) })
                    cases.Add(new Case($"{(im ? "kn" : "nk")} {dt.ToString().ToLowerInvariant()} {k}->{n}", k, n, im, dt));
        if (only.Count > 0) cases = cases.Where(c => only.Any(o => c.Label.Contains(o, StringComparison.Ordinal))).ToList();

        string folder = Path.Combine(Path.GetTempPath(), $"engine-gemv-{Environment.ProcessId}");
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, "w.safetensors");
        try
        {
            var rng = new Random(3);
            var entries = new List<SafeTensorWriter.Entry>();
            foreach (var c in cases)
                for (int s = 0; s < matrices; s++)
                {
                    var d = new float[(long)c.K * c.N];
                    for (int i = 0; i < d.Length; i++) d[i] = rng.NextSingle() - 0.5f;
                    long[] shape = c.InputMajor ? [c.K, c.N] : [c.N, c.K];
                    entries.Add(SafeTensorWriter.Convert(Name(c, s), shape, d, c.DType));
                }
            SafeTensorWriter.Write(path, entries);
            entries.Clear();
            using var file = SafeTensorFile.Open(path);
            var kernels = KernelRegistry.Create("cpu");
            var peak = Engine.Kernels.Profiling.MachinePeak.Load().Peak;
            Console.WriteLine($"machine read bandwidth (engine sysinfo): {peak.ReadBytesAllCores / 1e9:F1} GB/s all cores; {WorkerPool.Shared.Threads} threads; {matrices} matrices per case");
            Console.WriteLine($"| case | MB per matrix | engine GB/s | plain read GB/s (same file) | engine / plain read | engine / sysinfo read |");
            Console.WriteLine("| --- | --- | --- | --- | --- | --- |");
            foreach (var c in cases)
            {
                var ws = Enumerable.Range(0, matrices).Select(s => new Linear(file.View(Name(c, s)), c.InputMajor, null, c.K, c.N)).ToArray();
                var x = new float[c.K];
                for (int i = 0; i < x.Length; i++) x[i] = rng.NextSingle() - 0.5f;
                var y = new float[c.N];
                var reader = new ReadWork();
                for (int i = 0; i < 2 * matrices; i++) kernels.MatMul(x, 1, ws[i % matrices], y);       // warm-up
                var engine = new List<double>();
                var plain = new List<double>();
                for (int r = 0; r < rounds; r++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    for (int i = 0; i < calls; i++) kernels.MatMul(x, 1, ws[i % matrices], y);
                    engine.Add(calls * (double)c.Bytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9);
                    t0 = Stopwatch.GetTimestamp();
                    for (int i = 0; i < calls; i++) reader.Read(ws[i % matrices].W.Data, c.Bytes);
                    plain.Add(calls * (double)c.Bytes / Stopwatch.GetElapsedTime(t0).TotalSeconds / 1e9);
                }
                double e = SweepBenchmarks.Median(engine), p = SweepBenchmarks.Median(plain);
                Console.WriteLine($"| {c.Label} | {c.Bytes / 1e6:F1} | {e:F1} | {p:F1} | {e / p:F2} | {e * 1e9 / peak.ReadBytesAllCores:F2} |");
            }
        }
        finally
        {
            try { Directory.Delete(folder, true); } catch (IOException) { }
        }
        return 0;
    }

    static string Name(Case c, int s) => $"{c.Label.Replace(' ', '_').Replace("->", "_")}_{s}";

    /// <summary>Sums a byte range as floats on the worker pool's threads (contiguous halves), four independent chains.</summary>
    sealed class ReadWork : IParallelWork
    {
        byte* _data; long _bytes; int _parts;
        public float Sink;

        public void Read(byte* data, long bytes)
        {
            _data = data; _bytes = bytes; _parts = WorkerPool.Shared.Threads;
            WorkerPool.Shared.Run(this, _parts);
        }

        public void Execute(int index)
        {
            long per = _bytes / _parts / 256 * 256;
            byte* p = _data + index * per, end = index == _parts - 1 ? _data + _bytes : p + per;
            Vector512<float> a = default, b = default, c = default, d = default;
            for (; p + 256 <= end; p += 256)
            {
                a += Vector512.Load((float*)p); b += Vector512.Load((float*)(p + 64));
                c += Vector512.Load((float*)(p + 128)); d += Vector512.Load((float*)(p + 192));
            }
            Sink += Vector512.Sum(a + b + c + d);
        }
    }
}
