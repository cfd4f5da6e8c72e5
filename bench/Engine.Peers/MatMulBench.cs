using System.Diagnostics;
using Engine.Kernels;
using Engine.Loader;
using Engine.Peers.Peers;

namespace Engine.Peers;

/// <summary>One matrix-multiply shape: [T x K] · [K x N], weights stored [K, N] (input-major, GPT-2 Conv1D) or [N, K] (nn.Linear).</summary>
public sealed record MatMulCase(string Label, int T, int K, int N, bool InputMajor, int Stream)
{
    public string Layout => InputMajor ? "kn" : "nk";
    public double Flops => 2.0 * T * K * N;
    public double WeightBytes => 4.0 * K * N;
}

public sealed record MatMulResult(MatMulCase Case, Figure Figure, double MaxRelDiff);

/// <summary>
/// The engine's MatMul (backend "cpu", weights as zero-copy views of a safetensors file written here) against OpenBLAS
/// cblas_sgemm (cblas_sgemv for T = 1) on the same memory. "stream" cases rotate over enough distinct weight matrices
/// that they cannot stay in the last-level cache: the matrix-vector product then reads its weights from memory, as a
/// decode step does.
/// </summary>
public sealed unsafe class MatMulBench : IDisposable
{
    readonly SafeTensorFile _file;
    readonly string _path;
    readonly IKernels _kernels = KernelRegistry.Create("cpu");

    public static IReadOnlyList<MatMulCase> DefaultCases(int streamCount)
    {
        var list = new List<MatMulCase>();
        foreach (bool im in new[] { true, false })
        {
            foreach (int t in new[] { 1, 16, 128, 512 }) list.Add(new($"T={t}, 768->3072", t, 768, 3072, im, 0));
            list.Add(new("768x768x768", 768, 768, 768, im, 0));
            list.Add(new($"T=1, 768->3072, {streamCount} matrices (from memory)", 1, 768, 3072, im, streamCount));
        }
        return list;
    }

    public MatMulBench(string folder, IReadOnlyList<MatMulCase> cases)
    {
        Directory.CreateDirectory(folder);
        _path = Path.Combine(folder, $"matmul-{Environment.ProcessId}.safetensors");
        var rng = new Random(11);
        var names = new HashSet<string>();
        var entries = new List<SafeTensorWriter.Entry>();
        void Add(string name, long rows, long cols)
        {
            if (!names.Add(name)) return;
            var d = new float[rows * cols];
            for (int i = 0; i < d.Length; i++) d[i] = rng.NextSingle() - 0.5f;
            entries.Add(SafeTensorWriter.F32(name, [rows, cols], d));
        }
        foreach (var c in cases)
            for (int s = 0; s < Math.Max(1, c.Stream); s++)
            {
                string n = WeightName(c, s);
                if (c.InputMajor) Add(n, c.K, c.N); else Add(n, c.N, c.K);
            }
        SafeTensorWriter.Write(_path, entries);
        _file = SafeTensorFile.Open(_path);
    }

    static string WeightName(MatMulCase c, int s) => $"w_{c.Layout}_{c.K}x{c.N}" + (c.Stream > 0 ? $"_s{s}" : "");

    Linear[] Weights(MatMulCase c) => Enumerable.Range(0, Math.Max(1, c.Stream))
        .Select(s => new Linear(_file.View(WeightName(c, s)), c.InputMajor, null, c.K, c.N)).ToArray();

    public MatMulResult Run(MatMulCase c, Harness h, bool openBlas)
    {
        var w = Weights(c);
        var x = new float[c.T * c.K];
        var rng = new Random(5);
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextSingle() - 0.5f;
        var yE = new float[c.T * c.N];
        var yB = new float[c.T * c.N];
        int idx = 0;
        void Engine() { var lin = w[idx++ % w.Length]; _kernels.MatMul(x, c.T, lin, yE); }
        void Blas()
        {
            var lin = w[idx++ % w.Length];
            fixed (float* px = x, py = yB) OpenBlas.MatMul(px, c.T, c.K, c.N, (float*)lin.W.Data, c.InputMajor, py);
        }
        // Correctness on the first weight matrix.
        double maxRel = double.NaN;
        if (openBlas)
        {
            idx = 0; Engine(); idx = 0; Blas();
            double scale = yB.Max(v => Math.Abs(v)), diff = 0;
            for (int i = 0; i < yE.Length; i++) diff = Math.Max(diff, Math.Abs(yE[i] - yB[i]));
            maxRel = diff / Math.Max(scale, 1e-30);
        }
        // Calls per timed run: enough for ~40 ms (measured on the engine after a warm-up).
        Engine();
        var sw = Stopwatch.StartNew();
        int calib = 0;
        while (sw.Elapsed.TotalMilliseconds < 20) { Engine(); calib++; }
        int calls = Math.Max(1, (int)(calib * 40 / sw.Elapsed.TotalMilliseconds));
        double Timed(Action op)
        {
            var t = Stopwatch.StartNew();
            for (int i = 0; i < calls; i++) op();
            return t.Elapsed.TotalSeconds / calls;
        }
        var peers = new List<(string, Func<double>)> { ("engine", () => Timed(Engine)) };
        if (openBlas) peers.Add(("openblas", () => Timed(Blas)));
        var fig = h.Measure("matmul", c.T, peers);
        return new MatMulResult(c, fig, maxRel);
    }

    public void Dispose()
    {
        _file.Dispose();
        try { File.Delete(_path); } catch (IOException) { }
    }
}
