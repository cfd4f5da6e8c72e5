using BenchmarkDotNet.Attributes;
using Engine.Kernels;
using Engine.Kernels.Simd;
using Engine.Loader;

namespace Engine.Bench;

/// <summary>Matrix multiply on GPT-2-small shapes, both weight layouts, F32/BF16/F16, decode to prefill row counts.</summary>
public class MatMulBenchmarks : IOpSize, IDisposable
{
    /// <summary>"KxN/layout": c_fc 768x3072 (GPT-2 Conv1D, input-major), c_proj 3072x768, the same as nn.Linear (out-major), and the LM head.</summary>
    [Params("768x3072/in", "3072x768/in", "768x3072/out", "3072x768/out", "768x2304/in", "768x50257/out")]
    public string Shape { get; set; } = "768x3072/in";

    [Params(1, 16, 128, 512)]
    public int Rows { get; set; } = 1;

    [Params(DType.F32, DType.BF16, DType.F16)]
    public DType DType { get; set; } = DType.F32;

    int K => int.Parse(Shape.Split('/')[0].Split('x')[0]);
    int N => int.Parse(Shape.Split('/')[0].Split('x')[1]);
    bool InMajor => Shape.EndsWith("/in");

    public double Flops => 2.0 * Rows * K * N;
    public double Bytes => (double)K * N * DType.Size() + 4.0 * Rows * (K + N);

    string? _dir;
    SafeTensorFile? _file;
    Linear? _w;
    float[] _x = [], _y = [];
    readonly IKernels _kernels = new SimdKernels();

    [GlobalSetup]
    public void Setup()
    {
        if (Shape.StartsWith("768x50257") && Rows > 16) throw new InvalidOperationException("LM head benchmarked for decode-sized row counts only");
        _dir = Path.Combine(Path.GetTempPath(), "engine-bench-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
        var rng = new Random(1);
        var w = new float[(long)K * N];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() - 0.5) * 0.1f;
        string file = Path.Combine(_dir, "w.safetensors");
        SafeTensorWriter.Write(file, [SafeTensorWriter.Convert("w", InMajor ? [K, N] : [N, K], w, DType)]);
        _file = SafeTensorFile.Open(file);
        _w = new Linear(_file.View("w"), InMajor, null, K, N);
        _x = new float[Rows * K];
        for (int i = 0; i < _x.Length; i++) _x[i] = (float)(rng.NextDouble() - 0.5);
        _y = new float[Rows * N];
    }

    [Benchmark]
    public void MatMul() => _kernels.MatMul(_x, Rows, _w!, _y);

    [GlobalCleanup]
    public void Dispose()
    {
        _file?.Dispose();
        if (_dir != null) try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}

/// <summary>Causal attention (fused) for prefill and decode, GPT-2-small and SmolLM2 head layouts.</summary>
public class AttentionBenchmarks : IOpSize
{
    [Params("12/12/64", "9/3/64")]
    public string Heads { get; set; } = "12/12/64";

    /// <summary>"rows@pos0": prefill of 128 or 512 rows, or one decode row after 511 cached positions.</summary>
    [Params("128@0", "512@0", "1@511")]
    public string Rows { get; set; } = "128@0";

    int H => int.Parse(Heads.Split('/')[0]);
    int Kv => int.Parse(Heads.Split('/')[1]);
    int D => int.Parse(Heads.Split('/')[2]);
    int T => int.Parse(Rows.Split('@')[0]);
    int P0 => int.Parse(Rows.Split('@')[1]);
    AttentionShape S => new(T, P0, H, Kv, D, 1f / MathF.Sqrt(D));

    public double Flops => 4.0 * H * D * (T * (double)P0 + T * (T + 1) / 2.0);
    public double Bytes => 4.0 * ((double)T * H * D * 2 + (double)(P0 + T) * Kv * D * 2);

    float[] _q = [], _k = [], _v = [], _z = [];
    readonly IKernels _kernels = new SimdKernels();

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(2);
        float[] R(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5); return a; }
        _q = R(T * H * D); _k = R((P0 + T) * Kv * D); _v = R((P0 + T) * Kv * D); _z = new float[T * H * D];
    }

    [Benchmark]
    public void Attention() => _kernels.Attention(_q, _k, _v, S, _z);
}

/// <summary>Norms and elementwise ops at prefill sizes (d_model 768, d_mlp 3072).</summary>
public class ElementwiseBenchmarks : IOpSize
{
    [Params("layernorm", "rmsnorm", "gelu_tanh", "silu_gated", "add")]
    public string Op { get; set; } = "layernorm";

    [Params(1, 128, 512)]
    public int Rows { get; set; } = 128;

    int Width => Op is "gelu_tanh" or "silu_gated" ? 3072 : 768;
    public double Flops => Op switch { "layernorm" => 7.0, "rmsnorm" => 4.0, "gelu_tanh" => 10.0, "silu_gated" => 6.0, _ => 1.0 } * Rows * Width;
    public double Bytes => Op switch { "silu_gated" => 12.0, "add" => 12.0, _ => 8.0 } * Rows * Width;

    float[] _a = [], _b = [], _y = [], _w = [], _bias = [], _scale = [];
    readonly IKernels _kernels = new SimdKernels();

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(3);
        float[] R(int n) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = (float)(rng.NextDouble() - 0.5); return a; }
        _a = R(Rows * Width); _b = R(Rows * Width); _y = new float[Rows * Width]; _w = R(Width); _bias = R(Width); _scale = new float[Rows];
    }

    [Benchmark]
    public void Run()
    {
        switch (Op)
        {
            case "layernorm": _kernels.LayerNorm(_a, Rows, Width, _w, _bias, 1e-5f, _y, _scale); break;
            case "rmsnorm": _kernels.RmsNorm(_a, Rows, Width, _w, 0f, 1e-5f, _y, _scale); break;
            case "gelu_tanh": _kernels.Activation(ActivationKind.GeluTanh, _a, _y); break;
            case "silu_gated": _kernels.GatedActivation(ActivationKind.Silu, _a, _b, _y); break;
            default: _kernels.AddInPlace(_a, _y); break;
        }
    }
}
