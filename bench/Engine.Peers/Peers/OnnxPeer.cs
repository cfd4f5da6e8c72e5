using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;

namespace Engine.Peers.Peers;

/// <summary>ONNX Runtime (CPU execution provider) on the GPT-2 graph of <see cref="Onnx.Gpt2Onnx"/>: prefill only.</summary>
public sealed class OnnxPeer : IEndToEndPeer
{
    readonly InferenceSession _session;
    readonly string _path;
    readonly int _threads;
    readonly RunOptions _run = new();

    public OnnxPeer(string onnxPath, int threads)
    {
        _path = onnxPath; _threads = threads;
        var so = new SessionOptions
        {
            IntraOpNumThreads = threads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
        };
        _session = new InferenceSession(onnxPath, so);
    }

    public string Name => "onnxruntime";
    public bool CanDecode => false;
    public IReadOnlyDictionary<string, string> Settings => new Dictionary<string, string>
    {
        ["library"] = "Microsoft.ML.OnnxRuntime 1.31.1 (CPU execution provider)",
        ["onnx"] = _path,
        ["opset"] = Onnx.Gpt2Onnx.Opset.ToString(),
        ["intra_op_threads"] = _threads.ToString(),
        ["graph_optimization"] = "ORT_ENABLE_ALL",
        ["weights"] = "F32",
    };

    float[] RunOnce(int[] tokens)
    {
        var ids = tokens.Select(t => (long)t).ToArray();
        using var input = OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using var outputs = _session.Run(_run, ["input_ids"], [input], ["logits"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    public double Prefill(int[] tokens)
    {
        var sw = Stopwatch.StartNew();
        RunOnce(tokens);
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int[] prompt, int steps) => throw new NotSupportedException("the ONNX peer has no KV cache (prefill only)");

    public float[] Logits(int[] tokens, out bool allPositions)
    {
        allPositions = false;
        return RunOnce(tokens);
    }

    public void Dispose()
    {
        _session.Dispose();
        _run.Dispose();
    }
}
