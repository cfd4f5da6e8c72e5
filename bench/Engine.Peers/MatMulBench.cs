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
    readonly IKernels _kernels = KernelRegistry.Create("cpu");

    /// <summary>The safetensors file holding every case's weights (the workers open the same file).</summary>
    public string FilePath { get; }
    public IReadOnlyList<MatMulCase> Cases { get; }

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

    /// <summary>The cached weights file of these cases under <paramref name="folder"/> (named by the cases' shapes).</summary>
    static string FileFor(string folder, IReadOnlyList<MatMulCase> cases)
    {
        string key = string.Join("_", cases.Select(c => $"{c.Layout}{c.K}x{c.N}s{c.Stream}").Distinct());
        return Path.Combine(folder, $"matmul-v1-{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(key)))[..12].ToLowerInvariant()}.safetensors");
    }

    /// <summary>The cached weights file of these cases when it exists (none yet: empty).</summary>
    public static IEnumerable<string> ExistingFile(string folder, IReadOnlyList<MatMulCase> cases)
    {
        string f = FileFor(folder, cases);
        return File.Exists(f) ? [f] : [];
    }

    /// <summary>
    /// Opens the file under <paramref name="folder"/> holding the weights of <paramref name="cases"/> (random, seed 11),
    /// writing it first when it is not there yet.
    /// </summary>
    public MatMulBench(string folder, IReadOnlyList<MatMulCase> cases)
    {
        Directory.CreateDirectory(folder);
        // Deterministic content (seed 11), so the file is kept and reused: a file written moments before its pages
        // are streamed measured 8-13 GB/s in the from-memory cases against 38-50 GB/s on an older one (this VM).
        FilePath = FileFor(folder, cases);
        Cases = cases;
        if (File.Exists(FilePath)) { _file = SafeTensorFile.Open(FilePath); return; }
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
        SafeTensorWriter.Write(FilePath, entries);
        _file = SafeTensorFile.Open(FilePath);
    }

    MatMulBench(SafeTensorFile file, IReadOnlyList<MatMulCase> cases)
    {
        _file = file; FilePath = file.Path; Cases = cases;
    }

    /// <summary>Opens a file written by the parent's <see cref="MatMulBench(string, IReadOnlyList{MatMulCase})"/> (a worker).</summary>
    public static MatMulBench Open(string path, IReadOnlyList<MatMulCase> cases) => new(SafeTensorFile.Open(path), cases);

    static string WeightName(MatMulCase c, int s) => $"w_{c.Layout}_{c.K}x{c.N}" + (c.Stream > 0 ? $"_s{s}" : "");

    Linear[] Weights(MatMulCase c) => Enumerable.Range(0, Math.Max(1, c.Stream))
        .Select(s => new Linear(_file.View(WeightName(c, s)), c.InputMajor, null, c.K, c.N)).ToArray();

    /// <summary>
    /// One call of the case (the engine's MatMul or OpenBLAS), with its own input (seed 5) and output; "stream"
    /// cases move to the next weight matrix on every call.
    /// </summary>
    public Action Op(MatMulCase c, bool openBlas) => Op(c, openBlas, out _);

    Action Op(MatMulCase c, bool openBlas, out float[] y)
    {
        var w = Weights(c);
        var x = new float[c.T * c.K];
        var rng = new Random(5);
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextSingle() - 0.5f;
        var output = y = new float[c.T * c.N];
        int idx = 0;
        if (!openBlas) return () => { var lin = w[idx++ % w.Length]; _kernels.MatMul(x, c.T, lin, output); };
        return () =>
        {
            var lin = w[idx++ % w.Length];
            fixed (float* px = x, py = output) OpenBlas.MatMul(px, c.T, c.K, c.N, (float*)lin.W.Data, c.InputMajor, py);
        };
    }

    /// <summary>max |engine - OpenBLAS| / max |OpenBLAS| on the case's first weight matrix (OpenBLAS must be loaded).</summary>
    public double MaxRelDiff(MatMulCase c)
    {
        var e = Op(c, false, out var yE);
        var b = Op(c, true, out var yB);
        e(); b();
        double scale = yB.Max(v => Math.Abs(v)), diff = 0;
        for (int i = 0; i < yE.Length; i++) diff = Math.Max(diff, Math.Abs(yE[i] - yB[i]));
        return diff / Math.Max(scale, 1e-30);
    }

    /// <summary>Calls per timed run: enough for ~40 ms, measured after one warm-up call.</summary>
    public static int Calibrate(Action op)
    {
        op();
        var sw = Stopwatch.StartNew();
        int calib = 0;
        while (sw.Elapsed.TotalMilliseconds < 20) { op(); calib++; }
        return Math.Max(1, (int)(calib * 40 / sw.Elapsed.TotalMilliseconds));
    }

    /// <summary>Seconds per call over <paramref name="calls"/> calls.</summary>
    public static double Timed(Action op, int calls)
    {
        var t = Stopwatch.StartNew();
        for (int i = 0; i < calls; i++) op();
        return t.Elapsed.TotalSeconds / calls;
    }

    /// <summary>Both peers in this process (--isolation none).</summary>
    public MatMulResult Run(MatMulCase c, Harness h, bool openBlas)
    {
        double maxRel = openBlas ? MaxRelDiff(c) : double.NaN;
        var engine = Op(c, false);
        int calls = Calibrate(engine);
        var peers = new List<(string, Func<double>)> { ("engine", () => Timed(engine, calls)) };
        if (openBlas) { var blas = Op(c, true); peers.Add(("openblas", () => Timed(blas, calls))); }
        return new MatMulResult(c, h.Measure("matmul", c.T, peers), maxRel);
    }

    /// <summary>Each peer in its own worker process (<c>matmul-engine</c> / <c>matmul-openblas</c> over <see cref="FilePath"/>).</summary>
    public MatMulResult Run(MatMulCase c, Harness h, bool openBlas, ChildProcess engine, ChildProcess? blas)
    {
        int index = Cases.ToList().IndexOf(c);
        double maxRel = openBlas ? MaxRelDiff(c) : double.NaN;
        int calls = int.Parse(engine.Call($"calibrate {index}"));
        var peers = new List<(string, Func<double>)> { ("engine", () => engine.CallSeconds($"matmul {index} {calls}")) };
        if (openBlas && blas != null) peers.Add(("openblas", () => blas.CallSeconds($"matmul {index} {calls}")));
        return new MatMulResult(c, h.Measure("matmul", c.T, peers), maxRel);
    }

    public void Dispose() => _file.Dispose();
}
