using System.Diagnostics;
using Engine.Kernels;
using Engine.Runtime;

namespace Engine.Peers.Peers;

/// <summary>
/// One inference engine timed end to end on the same weights. Prefill: a fresh sequence of T tokens, logits of the last
/// position only (llama-bench's ppN). Decode: a 16-token prompt, then <c>steps</c> single-token forwards through the KV
/// cache, each feeding the argmax of the previous logits (llama-bench's tgN after a short prompt).
/// </summary>
public interface IEndToEndPeer : IDisposable
{
    string Name { get; }
    /// <summary>Settings that matter for the figures (threads, cache types, ...), for the JSON.</summary>
    IReadOnlyDictionary<string, string> Settings { get; }
    bool CanDecode { get; }
    /// <summary>Seconds for one prefill of <paramref name="tokens"/>.</summary>
    double Prefill(int[] tokens);
    /// <summary>Seconds for <paramref name="steps"/> decode steps after <paramref name="prompt"/> (prompt not timed).</summary>
    double Decode(int[] prompt, int steps);
    /// <summary>Logits [T, V] for every position of <paramref name="tokens"/> (or [1, V]: the last position only).</summary>
    float[] Logits(int[] tokens, out bool allPositions);
}

public static class Argmax
{
    public static int Of(ReadOnlySpan<float> x)
    {
        int best = 0;
        float bv = float.NegativeInfinity;
        for (int i = 0; i < x.Length; i++) if (x[i] > bv) { bv = x[i]; best = i; }
        return best;
    }
}

/// <summary>
/// The engine itself, in process, the way `engine bench` runs it (backend "cpu", last-position logits; with
/// skipUnusedRows the last layer runs past its K/V for the last row only, as `engine generate` and llama.cpp do; without
/// it every row runs through every layer, the work of the ONNX graph).
/// </summary>
public sealed class EnginePeer : IEndToEndPeer
{
    readonly Model _model;
    readonly Session _session;
    readonly string _backend;

    public EnginePeer(Model model, int capacity, string backend = "cpu", bool skipUnusedRows = true)
    {
        _model = model;
        _backend = backend;
        _session = new Session(model, new SessionOptions { Backend = backend, Capacity = capacity, AllLogits = false, SkipUnusedRows = skipUnusedRows });
    }

    public string Name => "engine";
    public bool CanDecode => true;
    public IReadOnlyDictionary<string, string> Settings => new Dictionary<string, string>
    {
        ["backend"] = _backend,
        ["threads"] = Engine.Kernels.Threading.WorkerPool.Shared.Threads.ToString(),
        ["kv_cache"] = "f32",
        ["last_layer_rows"] = _session.SkipUnusedRows ? "last only (no hooks)" : "all",
        ["weights"] = string.Join("+", _model.ParameterCounts.OrderByDescending(kv => kv.Value).Select(kv => kv.Key.ToString())),
    };

    public double Prefill(int[] tokens)
    {
        var sw = Stopwatch.StartNew();
        _session.Run(tokens);
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int[] prompt, int steps)
    {
        int V = _model.Config.VocabSize;
        _session.Run(prompt);
        int next = Argmax.Of(_session.LastLogits[^V..]);
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++)
        {
            var logits = _session.Forward([next]);
            next = Argmax.Of(logits[^V..]);
        }
        return sw.Elapsed.TotalSeconds;
    }

    public float[] Logits(int[] tokens, out bool allPositions)
    {
        using var s = new Session(_model, new SessionOptions { Backend = _backend, Capacity = tokens.Length, AllLogits = true });
        allPositions = true;
        return s.Run(tokens).ToArray();
    }

    /// <summary>
    /// Logits with ggml's CPU GELU emulated through the engine's hooks: every mlp.post is replaced by
    /// f16(gelu(f16(mlp.pre))) (ggml's F32 GELU reads a table indexed by the F16 input, GGML_GELU_FP16). Shows that the
    /// remaining difference to llama.cpp on GPT-2 comes from that table, not from the converted weights.
    /// </summary>
    public float[] LogitsWithGgmlGelu(int[] tokens)
    {
        using var s = new Session(_model, new SessionOptions { Backend = _backend, Capacity = tokens.Length, AllLogits = true });
        float[] pre = [];
        var hooks = new List<IDisposable>();
        for (int l = 0; l < _model.Config.NLayers; l++)
        {
            hooks.Add(s.Hooks.Add(HookKind.MlpPre, l, tap =>
            {
                if (pre.Length < tap.Data.Length) pre = new float[tap.Data.Length];
                tap.Data.CopyTo(pre);
            }));
            hooks.Add(s.Hooks.Add(HookKind.MlpPost, l, tap =>
            {
                var d = tap.Data;
                for (int i = 0; i < d.Length; i++)
                {
                    float x = pre[i];
                    d[i] = x <= -10f ? 0f : x >= 10f ? x : (float)(Half)GeluTanh((float)(Half)x);
                }
            }));
        }
        var logits = s.Run(tokens).ToArray();
        foreach (var h in hooks) h.Dispose();
        return logits;
    }

    static float GeluTanh(float x) => 0.5f * x * (1f + MathF.Tanh(0.7978845608028654f * x * (1f + 0.044715f * x * x)));

    public void Dispose() => _session.Dispose();
}
