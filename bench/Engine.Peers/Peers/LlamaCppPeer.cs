using System.Diagnostics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Engine.Peers.Peers;

/// <summary>
/// llama.cpp through LLamaSharp (the native CPU backend of LLamaSharp.Backend.Cpu), on a GGUF file written from the same
/// weights. Timing context: llama.cpp's defaults for everything but threads (2), n_batch = n_ubatch = 512 (a 512-token
/// prompt in one ubatch, as llama-bench); the KV cache type follows <c>kvType</c> (llama.cpp's default is F16).
/// </summary>
public sealed class LlamaCppPeer : IEndToEndPeer
{
    static bool s_logHooked;
    static readonly List<string> s_log = [];

    readonly LLamaWeights _weights;
    readonly LLamaContext _ctx;
    readonly LLamaBatch _batch = new();
    readonly string _gguf;
    readonly string _ggufType;
    readonly string _kv;
    readonly int _threads;
    readonly string _flash;

    /// <summary>The library's log lines (warnings and errors), for diagnostics.</summary>
    public static IReadOnlyList<string> Log => s_log;

    public static void HookLog(bool verbose)
    {
        if (s_logHooked) return;
        s_logHooked = true;
        NativeLibraryConfig.All.WithLogCallback((level, message) =>
        {
            if (level is LLamaLogLevel.Error or LLamaLogLevel.Warning || verbose)
                lock (s_log) s_log.Add($"[{level}] {message.TrimEnd()}");
        });
    }

    public LlamaCppPeer(string ggufPath, string ggufType, int contextSize, int threads, string kvType = "f16", string flash = "auto")
    {
        _gguf = ggufPath; _ggufType = ggufType; _kv = kvType; _threads = threads; _flash = flash;
        var kv = kvType == "f32" ? GGMLType.GGML_TYPE_F32 : GGMLType.GGML_TYPE_F16;
        var p = new ModelParams(ggufPath)
        {
            ContextSize = (uint)contextSize,
            BatchSize = 512,
            UBatchSize = 512,
            Threads = threads,
            BatchThreads = threads,
            GpuLayerCount = 0,
            TypeK = kv,
            TypeV = kv,
            FlashAttention = flash switch { "on" => true, "off" => false, _ => null },   // null: llama.cpp decides (auto)
        };
        _weights = LLamaWeights.LoadFromFile(p);
        _ctx = _weights.CreateContext(p);
    }

    public string Name => "llama.cpp";
    public bool CanDecode => true;
    public IReadOnlyDictionary<string, string> Settings => new Dictionary<string, string>
    {
        ["library"] = "LLamaSharp 0.30.0 + LLamaSharp.Backend.Cpu 0.30.0",
        ["gguf"] = _gguf,
        ["gguf_type"] = _ggufType,
        ["threads"] = _threads.ToString(),
        ["kv_cache"] = _kv,
        ["flash_attention"] = _flash,
        ["n_batch"] = "512",
        ["n_ubatch"] = "512",
        ["system_info"] = SystemInfo,
    };

    /// <summary>llama.cpp's own system line (which CPU features its loaded native build uses).</summary>
    public static string SystemInfo
    {
        get
        {
            try
            {
                object r = NativeApi.llama_print_system_info();
                return (r is nint p ? System.Runtime.InteropServices.Marshal.PtrToStringUTF8(p) : r?.ToString())?.Trim() ?? "?";
            }
            catch (Exception e) { return $"? ({e.GetType().Name})"; }
        }
    }

    SafeLLamaContextHandle H => _ctx.NativeHandle;

    void Submit(ReadOnlySpan<int> tokens, int pos0, bool allLogits)
    {
        _batch.Clear();
        for (int i = 0; i < tokens.Length; i++)
            _batch.Add(tokens[i], pos0 + i, LLamaSeqId.Zero, allLogits || i == tokens.Length - 1);
        var r = H.Decode(_batch);
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}");
    }

    public double Prefill(int[] tokens)
    {
        H.MemoryClear(true);
        var sw = Stopwatch.StartNew();
        Submit(tokens, 0, false);
        H.Synchronize();
        return sw.Elapsed.TotalSeconds;
    }

    public double Decode(int[] prompt, int steps)
    {
        H.MemoryClear(true);
        Submit(prompt, 0, false);
        int next = Argmax.Of(H.GetLogitsIth(prompt.Length - 1));
        var sw = Stopwatch.StartNew();
        for (int s = 0; s < steps; s++)
        {
            Submit([next], prompt.Length + s, false);
            next = Argmax.Of(H.GetLogitsIth(0));
        }
        return sw.Elapsed.TotalSeconds;
    }

    public float[] Logits(int[] tokens, out bool allPositions)
    {
        H.MemoryClear(true);
        Submit(tokens, 0, true);
        int V = _weights.Vocab.Count;
        var all = new float[tokens.Length * V];
        for (int i = 0; i < tokens.Length; i++) H.GetLogitsIth(i).CopyTo(all.AsSpan(i * V, V));
        allPositions = true;
        return all;
    }

    public void Dispose()
    {
        _ctx.Dispose();
        _weights.Dispose();
    }
}
