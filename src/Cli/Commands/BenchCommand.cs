using System.Diagnostics;
using System.Runtime.Intrinsics;
using Engine.Kernels.Threading;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>
/// engine bench: end-to-end speed. Prefill tokens/s at several prompt lengths and decode tokens/s through the KV cache,
/// each without hooks and with a full activation cache registered (every tap copied into preallocated buffers).
/// Medians of several runs after a warm-up.
/// </summary>
public static class BenchCommand
{
    public static CommandSpec Spec { get; } = new("bench", "measure prefill and decode tokens/s, with and without a full activation cache",
        "engine bench (--model M | --shape gpt2-small|smollm2-135m [--dtype f32|bf16|f16]) [--prefill 16,128,512] [--decode 128] [--repeat N] [--json]",
        [Common.ModelOption,
         new("--shape", $"make (once, under weights/) a random-weight model of this shape: {string.Join(", ", RandomModelShape.Presets.Keys)}", ValueName: "S"),
         new("--preset", "same as --shape", ValueName: "S"),
         new("--dtype", "weight dtype of a --shape model", ValueName: "f32|bf16|f16", Default: "f32"),
         new("--prefill", "prompt lengths to time", ValueName: "N,N,...", Default: "16,128,512"),
         new("--decode", "new tokens to time through the KV cache (after a 16-token prompt)", ValueName: "N", Default: "128"),
         new("--repeat", "timed runs per figure (the median is reported)", ValueName: "N", Default: "3"),
         new("--no-cache-runs", "skip the runs with a full activation cache registered", IsFlag: true),
         new("--all-logits", "compute logits for every prompt position (default: the last one, as llama-bench and ONNX peers do)", IsFlag: true),
         new("--peers", "JSON written by bench/Engine.Peers: adds the peers' figures for this model and engine/peer ratios", ValueName: "FILE"),
         Common.BackendOption, Common.JsonOption], Run);

    /// <summary>The --shape (or its alias --preset) of a random-weight model, or null when neither is given.</summary>
    public static (string Name, RandomModelShape Shape)? Shape(CliArgs a)
    {
        if (a.Has("--shape") && a.Has("--preset")) throw new UsageException("--preset is an alias of --shape; give one of them");
        string option = a.Has("--shape") ? "--shape" : "--preset";
        string? name = a.Get(option);
        if (name == null) return null;
        if (!RandomModelShape.Presets.TryGetValue(name, out var shape)) throw new UsageException($"{option}: '{name}' is not one of {string.Join(", ", RandomModelShape.Presets.Keys)}");
        return (name, shape);
    }

    public static string PresetFolder(string preset, DType dtype) => Path.Combine("weights", $"bench-{preset}-{dtype.Name().ToLowerInvariant()}");

    static int Run(CliArgs a)
    {
        var prefill = CliArgs.ParseIntList("--prefill", a.Get("--prefill")!);
        if (prefill.Any(p => p < 1)) throw new UsageException("--prefill: lengths must be positive");
        int decode = a.Int("--decode", 128, 0, 100_000);
        int repeat = a.Int("--repeat", 3, 1, 1000);
        string folder;
        if (Shape(a) is var (preset, shape))
        {
            if (a.Has("--model")) throw new UsageException("engine bench: give --model or --shape, not both");
            var dtype = a.Choice("--dtype", "f32", "bf16", "f16") switch { "bf16" => DType.BF16, "f16" => DType.F16, _ => DType.F32 };
            folder = PresetFolder(preset, dtype);
            if (!File.Exists(Path.Combine(folder, "model.safetensors")))
            {
                a.Err.WriteLine($"writing a random-weight {preset} model ({dtype.Name()}) to {folder} ...");
                RandomModel.Create(folder, shape, dtype);
            }
        }
        else folder = a.Require("--model");

        using var model = Model.Load(folder);
        int capacity = Math.Min(model.Config.ContextLength, Math.Max(prefill.Max(), 16 + decode));
        if (prefill.Max() > model.Config.ContextLength) throw new UsageException($"--prefill: {prefill.Max()} is longer than the model's context of {model.Config.ContextLength}");
        bool allLogits = a.Flag("--all-logits");
        using var session = Common.OpenSession(a, model, capacity, allLogits, skipUnusedRows: !allLogits);
        var rng = new Random(7);
        int[] Tokens(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();

        var results = new List<(string Kind, int Tokens, bool Cache, double Median, double[] Runs)>();
        void Measure(bool cache)
        {
            using var tap = cache ? FullCache(session) : null;
            foreach (int n in prefill)
            {
                var tokens = Tokens(n);
                session.Run(tokens);                                   // warm-up
                var runs = new double[repeat];
                for (int r = 0; r < repeat; r++)
                {
                    var sw = Stopwatch.StartNew();
                    session.Run(tokens);
                    runs[r] = sw.Elapsed.TotalSeconds;
                }
                results.Add(("prefill", n, cache, Median(runs), runs));
                a.Err.WriteLine($"prefill {n,4}{(cache ? " +cache" : "       ")}: {n / Median(runs),9:F1} tokens/s");
            }
            if (decode > 0)
            {
                var prompt = Tokens(16);
                var runs = new double[repeat];
                int steps = Math.Min(decode, capacity - 16);
                for (int r = -1; r < repeat; r++)                      // r = -1: warm-up
                {
                    session.Run(prompt);
                    int next = Session.ArgMax(session.LastLogits[^model.Config.VocabSize..]);
                    var sw = Stopwatch.StartNew();
                    for (int s = 0; s < steps; s++)
                    {
                        var logits = session.Forward([next]);
                        next = Session.ArgMax(logits[^model.Config.VocabSize..]);
                    }
                    if (r >= 0) runs[r] = sw.Elapsed.TotalSeconds;
                }
                results.Add(("decode", steps, cache, Median(runs), runs));
                a.Err.WriteLine($"decode  {steps,4}{(cache ? " +cache" : "       ")}: {steps / Median(runs),9:F1} tokens/s");
            }
        }
        Measure(false);
        if (!a.Flag("--no-cache-runs")) Measure(true);

        var dtypes = model.ParameterCounts.OrderByDescending(kv => kv.Value).Select(kv => kv.Key.Name()).ToArray();
        var peers = a.Has("--peers") ? PeerFigures.Load(a.Get("--peers")!, model.Folder) : null;
        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("bench", model, session.Kernels.Name);
                w.WriteString("weights_dtype", string.Join("+", dtypes));
                w.WriteNumber("parameters", model.ParameterCount);
                w.WriteNumber("threads", WorkerPool.Shared.Threads);
                w.WriteString("isa", Vector512.IsHardwareAccelerated ? "avx512" : Vector256.IsHardwareAccelerated ? "avx2" : Vector128.IsHardwareAccelerated ? "sse/neon" : "scalar");
                w.WriteNumber("processors", Environment.ProcessorCount);
                w.WriteBoolean("all_logits", allLogits);
                w.WriteBoolean("skip_unused_rows", session.SkipUnusedRows);
                w.WriteNumber("repeat", repeat);
                if (peers != null)
                {
                    w.WriteStartObject("peers");
                    w.WriteString("source", peers.Source);
                    if (peers.Date != null) w.WriteString("measured_utc", peers.Date);
                    w.WriteString("note", "peer figures were measured by bench/Engine.Peers in one interleaved run (engine included); ratios here divide this run's engine figures by them");
                    w.WriteStartArray("figures");
                    foreach (var f in peers.Figures)
                    {
                        w.WriteStartObject();
                        w.WriteString("peer", f.Peer); w.WriteString("kind", f.Kind); w.WriteNumber("tokens", f.Tokens); w.WriteNumber("tokens_per_second", f.TokensPerSecond);
                        w.WriteEndObject();
                    }
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteStartArray("results");
                foreach (var r in results)
                {
                    w.WriteStartObject();
                    w.WriteString("kind", r.Kind);
                    w.WriteNumber("tokens", r.Tokens);
                    w.WriteBoolean("activation_cache", r.Cache);
                    w.WriteNumber("median_seconds", r.Median);
                    w.WriteNumber("tokens_per_second", r.Tokens / r.Median);
                    if (peers != null && !r.Cache)
                    {
                        w.WriteStartObject("engine_over_peer");
                        foreach (var f in peers.Figures.Where(f => f.Kind == r.Kind && f.Tokens == r.Tokens && f.Peer != "engine"))
                            w.WriteNumber(f.Peer, r.Tokens / r.Median / f.TokensPerSecond);
                        w.WriteEndObject();
                    }
                    w.WriteStartArray("runs_seconds");
                    foreach (var x in r.Runs) w.WriteNumberValue(x);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            });
        }
        else
        {
            a.Out.WriteLine($"{model.Folder}: {model.Config.ModelType}, {model.ParameterCount:N0} parameters ({string.Join("+", dtypes)}), backend {session.Kernels.Name}, {WorkerPool.Shared.Threads} threads");
            a.Out.WriteLine("  kind      tokens   no hooks tok/s   full cache tok/s");
            foreach (var g in results.GroupBy(r => (r.Kind, r.Tokens)))
            {
                var plain = g.FirstOrDefault(r => !r.Cache);
                var cached = g.FirstOrDefault(r => r.Cache);
                a.Out.WriteLine($"  {g.Key.Kind,-8} {g.Key.Tokens,6}   {plain.Tokens / plain.Median,14:F1}   {(cached.Runs != null ? (cached.Tokens / cached.Median).ToString("F1") : "-"),16}");
            }
        }
        return 0;
    }

    /// <summary>The figures bench/Engine.Peers measured for one model folder.</summary>
    sealed record PeerFigures(string Source, string? Date, List<(string Peer, string Kind, int Tokens, double TokensPerSecond)> Figures)
    {
        public static PeerFigures Load(string path, string modelFolder)
        {
            if (!File.Exists(path)) throw new UsageException($"--peers: '{path}' not found");
            System.Text.Json.JsonDocument doc;
            try { doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(path)); }
            catch (System.Text.Json.JsonException e) { throw new UsageException($"--peers: '{path}' is not valid JSON ({e.Message.Split('\n')[0]})"); }
            using (doc)
            {
                var root = doc.RootElement;
                if (root.ValueKind != System.Text.Json.JsonValueKind.Object || !root.TryGetProperty("models", out var models) || models.ValueKind != System.Text.Json.JsonValueKind.Array)
                    throw new UsageException($"--peers: '{path}' has no 'models' array (expected the JSON of bench/Engine.Peers)");
                string want = Path.GetFullPath(modelFolder).TrimEnd('/');
                foreach (var m in models.EnumerateArray())
                {
                    if (!m.TryGetProperty("model", out var mp) || mp.ValueKind != System.Text.Json.JsonValueKind.String) continue;
                    string got = Path.GetFullPath(mp.GetString()!).TrimEnd('/');
                    if (got != want && Path.GetFileName(got) != Path.GetFileName(want)) continue;
                    var figures = new List<(string, string, int, double)>();
                    if (m.TryGetProperty("results", out var results))
                        foreach (var r in results.EnumerateArray())
                        {
                            string kind = r.GetProperty("kind").GetString()!;
                            int tokens = r.GetProperty("tokens").GetInt32();
                            foreach (var peer in r.GetProperty("peers").EnumerateObject())
                                if (peer.Value.TryGetProperty("tokens_per_second", out var tps) && tps.ValueKind == System.Text.Json.JsonValueKind.Number)
                                    figures.Add((peer.Name, kind, tokens, tps.GetDouble()));
                        }
                    string? date = root.TryGetProperty("date_utc", out var d) && d.ValueKind == System.Text.Json.JsonValueKind.String ? d.GetString() : null;
                    return new PeerFigures(path, date, figures);
                }
                throw new UsageException($"--peers: '{path}' has no figures for model '{modelFolder}'");
            }
        }
    }

    static double Median(double[] xs)
    {
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    /// <summary>Registers a hook on every tap that copies it into a buffer allocated once (a cache that allocates nothing per run).</summary>
    static IDisposable FullCache(Session session)
    {
        var buffers = new Dictionary<string, float[]>();
        return session.Hooks.AddWhere(_ => true, tap =>
        {
            if (!buffers.TryGetValue(tap.Name, out var buf) || buf.Length < tap.Data.Length)
                buffers[tap.Name] = buf = new float[tap.Data.Length];
            tap.Data.CopyTo(buf);
        });
    }
}
