using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Engine.Loader;
using Engine.Peers;
using Engine.Peers.Gguf;
using Engine.Peers.Onnx;
using Engine.Peers.Peers;
using Engine.Runtime;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
if (args.Length > 0 && args[0] == "--worker") return Worker.Run(args[1..]);
try
{
    return new PeersTool(args).Run();
}
catch (UsageException e)
{
    Console.Error.WriteLine($"engine-peers: {e.Message}");
    return 2;
}
catch (EngineException e)
{
    Console.Error.WriteLine($"engine-peers: {e.Message}");
    return 1;
}

/// <summary>
/// engine-peers: the engine beside llama.cpp (LLamaSharp), ONNX Runtime and OpenBLAS on the same weights, in one
/// run (each peer timed in its own worker process), reported as ratios. See README.md beside this file.
/// </summary>
sealed class PeersTool
{
    const string Usage = """
        usage: dotnet run --project bench/Engine.Peers -c Release -- [options]
          --model DIR            an engine model folder (repeatable, or comma-separated); default: --preset gpt2-small:f32
          --preset P:DT,...      random-weight benchmark models (made under weights/ when missing, as `engine bench --preset`):
                                 gpt2-small|smollm2-135m with :f32|:bf16|:f16
          --peers LIST           llamacpp,onnx,openblas,engine (default: all; the engine always runs, as the reference)
          --prefill N,N,...      prompt lengths (default 16,128,512)
          --decode N             new tokens through the KV cache after a 16-token prompt (default 128; 0: none)
          --repeat N             timed rounds per figure; medians are reported (default 5)
          --isolation M          process (default): each peer is timed in its own worker process, so no library's
                                 waiting threads share a process with another's; none: all in this process
          --threads N            threads for every peer (default 2; the engine's own pool uses ENGINE_THREADS or all cores)
          --gguf-type T          auto (= the folder's dtype) | f32 | f16 | bf16 | q8_0 (default auto)
          --llama-kv T           llama.cpp KV-cache type for the timed runs: f16 (llama.cpp's default) | f32
          --llama-fa M           llama.cpp flash attention: auto (default) | on | off
          --engine-rows M        skip (default): the engine's last layer runs past its K/V for the last position only, as in
                                 `engine generate` and llama.cpp (the ONNX graph computes every position); all: every position
          --pause-ms N           pause before every timed run, so the previous peer's threads have gone to sleep (default 150)
          --stream-matrices N    distinct weight matrices rotated in the from-memory matrix-vector case (default 16)
          --noise-limit C        discard rounds during which other processes used more than C cores (default 0.3)
          --quiet-wait S         before each figure, wait up to S seconds for the machine to be quiet (default 30)
          --openblas-core C      OPENBLAS_CORETYPE for OpenBLAS (default Cooperlake, its AVX-512 kernels; overrides the
                                 environment's value; 'env': keep the environment's)
          --cache DIR            converted GGUF/ONNX files and verification models (default weights/peers)
          --json FILE            write the JSON document (schema in bench/Engine.Peers/README.md)
          --no-verify            skip the logit checks
          --keep-page-cache      do not drop the weight files' cached pages first (by default they are dropped so the engine's
                                 mapping reads them back in 2 MiB pages, whatever cached them before; see PageCache.cs)
          --verbose              llama.cpp's log on stderr
        """;

    readonly List<string> _models = [];
    readonly HashSet<string> _peers = ["llamacpp", "onnx", "openblas", "engine"];
    int[] _prefill = [16, 128, 512];
    int _decode = 128, _repeat = 5, _threads = 2, _streamMatrices = 16, _pauseMs = 150;
    string _openBlasCore = "Cooperlake";
    string _ggufType = "auto", _llamaKv = "f16", _llamaFa = "auto", _engineRows = "skip", _cache = Path.Combine("weights", "peers");
    string? _json;
    bool _verify = true, _verbose, _isolate = true, _dropPageCache = true;

    /// <summary>Drops the files' cached pages (see <see cref="PageCache"/>) and says so.</summary>
    void DropPageCache(IEnumerable<string> files)
    {
        foreach (var f in files)
        {
            bool ok = PageCache.Drop(f);
            _log.WriteLine($"page cache of {f}: {(ok ? "dropped (read back in 2 MiB pages by the engine's mapping)" : "kept (posix_fadvise unavailable)")}");
        }
    }
    double _noiseLimit = 0.3, _quietWait = 30;
    readonly TextWriter _log = Console.Error;
    readonly JsonArray _skipped = [];
    readonly JsonArray _notes = [];
    readonly Dictionary<string, bool> _tinyVerified = [];
    readonly JsonArray _tinyChecks = [];

    public PeersTool(string[] args)
    {
        var presets = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new UsageException($"{a}: missing value\n{Usage}");
            int NextInt(int min) { var s = Next(); return int.TryParse(s, out int v) && v >= min ? v : throw new UsageException($"{a}: '{s}' is not an integer >= {min}"); }
            switch (a)
            {
                case "--model": _models.AddRange(Next().Split(',', StringSplitOptions.RemoveEmptyEntries)); break;
                case "--preset": presets.AddRange(Next().Split(',', StringSplitOptions.RemoveEmptyEntries)); break;
                case "--peers":
                    _peers.Clear();
                    foreach (var p in Next().Split(',', StringSplitOptions.RemoveEmptyEntries))
                        _peers.Add(p switch
                        {
                            "llamacpp" or "llama.cpp" or "llama" => "llamacpp",
                            "onnx" or "onnxruntime" or "ort" => "onnx",
                            "openblas" or "blas" => "openblas",
                            "engine" => "engine",
                            _ => throw new UsageException($"--peers: unknown peer '{p}' (llamacpp, onnx, openblas, engine)"),
                        });
                    break;
                case "--prefill":
                    _prefill = Next().Split(',', StringSplitOptions.RemoveEmptyEntries)
                        .Select(s => int.TryParse(s, out int v) && v > 0 ? v : throw new UsageException($"--prefill: '{s}' is not a positive integer")).ToArray();
                    break;
                case "--decode": _decode = NextInt(0); break;
                case "--repeat": _repeat = NextInt(1); break;
                case "--threads": _threads = NextInt(1); break;
                case "--isolation": _isolate = Next() switch { "process" => true, "none" => false, var m => throw new UsageException($"--isolation: '{m}' is not process or none") }; break;
                case "--stream-matrices": _streamMatrices = NextInt(2); break;
                case "--pause-ms": _pauseMs = NextInt(0); break;
                case "--gguf-type": _ggufType = Next().ToLowerInvariant(); if (_ggufType != "auto") HfToGguf.ParseType(_ggufType); break;
                case "--llama-kv": _llamaKv = Next() is "f32" or "f16" ? args[i] : throw new UsageException("--llama-kv: f16 or f32"); break;
                case "--engine-rows": _engineRows = Next() is "skip" or "all" ? args[i] : throw new UsageException("--engine-rows: skip or all"); break;
                case "--llama-fa": _llamaFa = Next() is "auto" or "on" or "off" ? args[i] : throw new UsageException("--llama-fa: auto, on or off"); break;
                case "--noise-limit": _noiseLimit = double.TryParse(Next(), NumberStyles.Float, CultureInfo.InvariantCulture, out var nl) && nl > 0 ? nl : throw new UsageException("--noise-limit: a positive number of cores"); break;
                case "--quiet-wait": _quietWait = NextInt(0); break;
                case "--openblas-core": _openBlasCore = Next(); break;
                case "--cache": _cache = Next(); break;
                case "--json": _json = Next(); break;
                case "--no-verify": _verify = false; break;
                case "--keep-page-cache": _dropPageCache = false; break;
                case "--verbose": _verbose = true; break;
                case "-h" or "--help": Console.WriteLine(Usage); Environment.Exit(0); break;
                default: throw new UsageException($"unknown argument '{a}'\n{Usage}");
            }
        }
        if (_models.Count == 0 && presets.Count == 0) presets.Add("gpt2-small:f32");
        foreach (var p in presets) _models.Add(PresetFolder(p));
    }

    string PresetFolder(string spec)
    {
        var parts = spec.Split(':');
        string name = parts[0];
        string dt = parts.Length > 1 ? parts[1].ToLowerInvariant() : "f32";
        if (!RandomModelShape.Presets.TryGetValue(name, out var shape)) throw new UsageException($"--preset: '{name}' is not one of {string.Join(", ", RandomModelShape.Presets.Keys)}");
        var dtype = dt switch { "f32" => DType.F32, "bf16" => DType.BF16, "f16" => DType.F16, _ => throw new UsageException($"--preset {spec}: dtype f32, bf16 or f16") };
        string folder = Path.Combine("weights", $"bench-{name}-{dtype.Name().ToLowerInvariant()}");
        if (!File.Exists(Path.Combine(folder, "model.safetensors")))
        {
            _log.WriteLine($"writing a random-weight {name} model ({dtype.Name()}) to {folder} ...");
            RandomModel.Create(folder, shape, dtype);
        }
        return folder;
    }

    Harness NewHarness() => new(_log) { Repeat = _repeat, NoiseLimit = _noiseLimit, QuietWaitSeconds = _quietWait, PauseMs = _pauseMs };

    void Skip(string peer, string? model, string reason)
    {
        _log.WriteLine($"SKIPPED {peer}{(model != null ? $" on {model}" : "")}: {reason}");
        _skipped.Add(new JsonObject { ["peer"] = peer, ["model"] = model, ["reason"] = reason });
    }

    public int Run()
    {
        Directory.CreateDirectory(_cache);
        var doc = new JsonObject
        {
            ["schema_version"] = 1,
            ["tool"] = "engine-peers",
            ["date_utc"] = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ"),
            ["machine"] = Machine(),
            ["engine_build"] = EngineBuild(),
            ["settings"] = new JsonObject
            {
                ["threads"] = _threads,
                ["engine_threads"] = Engine.Kernels.Threading.WorkerPool.Shared.Threads,
                ["repeat"] = _repeat,
                ["pause_ms"] = _pauseMs,
                ["prefill"] = new JsonArray(_prefill.Select(p => (JsonNode)p).ToArray()),
                ["decode"] = _decode,
                ["decode_prompt"] = 16,
                ["noise_limit_cores"] = _noiseLimit,
                ["peers"] = string.Join(",", _peers.Order()),
                ["isolation"] = _isolate ? "process" : "none",
                ["drop_page_cache"] = _dropPageCache,
            },
        };
        var wait = Noise.WaitQuiet(_noiseLimit, 60);
        _log.WriteLine(wait.Quiet ? $"machine quiet after {wait.Waited:F1} s (others: {wait.Last:F2} cores)"
                                  : $"machine still busy after {wait.Waited:F0} s (others: {wait.Last:F2} cores): figures will be noisy");

        // OpenBLAS first: it must be loaded after OPENBLAS_CORETYPE is set and before anything else could load a BLAS.
        if (_peers.Contains("openblas")) doc["matmul"] = RunMatMul();

        var models = new JsonArray();
        foreach (var folder in _models) models.Add(RunModel(folder));
        doc["models"] = models;
        if (_tinyChecks.Count > 0) doc["verification_tiny_models"] = _tinyChecks;
        doc["skipped"] = _skipped;
        _notes.Add("ratios are engine speed / peer speed (> 1: the engine is faster); 'paired' = median over rounds of the per-round ratio");
        _notes.Add(_isolate
            ? "each peer is timed in its own worker process (this program with --worker) on the same weights; the logit checks run in the parent; rounds interleave the peers; medians of quiet rounds (see noise fields)"
            : "all peers run in this one process on the same weights (--isolation none); rounds interleave the peers; medians of quiet rounds (see noise fields)");
        if (_peers.Contains("llamacpp"))
            _notes.Add($"llama.cpp is LLamaSharp.Backend.Cpu 0.30.0's prebuilt native library ({LlamaCppPeer.SystemInfo}), not a build for this CPU; KV cache {_llamaKv}, flash attention {_llamaFa}");
        _notes.Add("ggml's CPU GELU uses an F16 lookup table (GGML_GELU_FP16): llama.cpp's GPT-2 logits differ from exact F32 by ~4e-4 relative; llama-family logits agree to ~1e-6");
        doc["notes"] = _notes;
        if (_json != null)
        {
            string? dir = Path.GetDirectoryName(Path.GetFullPath(_json));
            if (dir != null) Directory.CreateDirectory(dir);
            File.WriteAllText(_json, doc.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n");
            _log.WriteLine($"wrote {_json}");
        }
        bool failed = false;
        foreach (var m in models)
            foreach (var v in m!["verification"]!.AsArray())
                if (v!["pass"]!.GetValue<bool>() == false && v["strict"]!.GetValue<bool>()) failed = true;
        foreach (var v in _tinyChecks) if (v!["pass"]!.GetValue<bool>() == false && v["strict"]!.GetValue<bool>()) failed = true;
        if (failed) _log.WriteLine("a strict logit check FAILED (see 'verification')");
        return failed ? 3 : 0;
    }

    /// <summary>Which engine code ran: the repository's commit, uncommitted files under src/, and the kernel assembly's build time.</summary>
    static JsonObject EngineBuild()
    {
        string? Git(string args)
        {
            try
            {
                var psi = new ProcessStartInfo("git", args) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                using var p = Process.Start(psi)!;
                string o = p.StandardOutput.ReadToEnd();
                p.WaitForExit();
                return p.ExitCode == 0 ? o.Trim() : null;
            }
            catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException) { return null; }
        }
        var kernels = typeof(Engine.Kernels.IKernels).Assembly;
        string? dirty = Git("status --porcelain -- src");
        return new JsonObject
        {
            ["commit"] = Git("rev-parse --short HEAD"),
            ["uncommitted_src_files"] = dirty == null ? null : dirty.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length,
            ["kernels_assembly_utc"] = File.GetLastWriteTimeUtc(kernels.Location).ToString("yyyy-MM-ddTHH:mm:ssZ"),
            ["configuration"] = kernels.GetCustomAttributes(typeof(System.Reflection.AssemblyConfigurationAttribute), false)
                .OfType<System.Reflection.AssemblyConfigurationAttribute>().FirstOrDefault()?.Configuration,
        };
    }

    static JsonObject Machine()
    {
        string cpu = "?";
        try { cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"))?.Split(':', 2)[1].Trim() ?? "?"; } catch (IOException) { }
        return new JsonObject
        {
            ["cpu"] = cpu,
            ["processors"] = Environment.ProcessorCount,
            ["isa"] = Vector512.IsHardwareAccelerated ? "avx512" : Vector256.IsHardwareAccelerated ? "avx2" : "other",
            ["os"] = RuntimeInformation.OSDescription,
            ["runtime"] = RuntimeInformation.FrameworkDescription,
            ["memory_gib"] = Math.Round(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024.0 * 1024 * 1024), 1),
        };
    }

    // ------------------------------------------------------------------ matrix multiply vs OpenBLAS

    JsonNode RunMatMul()
    {
        var result = new JsonObject();
        string? envCore = Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE");
        bool blas = OpenBlas.TryLoad(_openBlasCore, _threads);
        if (!blas) { Skip("openblas", null, OpenBlas.Error!); result["openblas"] = null; result["skipped"] = OpenBlas.Error; }
        else
        {
            result["openblas"] = new JsonObject
            {
                ["library"] = OpenBlas.LoadedFrom,
                ["config"] = OpenBlas.Config,
                ["corename"] = OpenBlas.CoreName,
                ["threads"] = OpenBlas.Threads,
                ["OPENBLAS_CORETYPE"] = OpenBlas.CoreType,
                ["OPENBLAS_CORETYPE_environment"] = envCore,
            };
            _log.WriteLine($"OpenBLAS: {OpenBlas.Config}, core {OpenBlas.CoreName} (OPENBLAS_CORETYPE={OpenBlas.CoreType}" +
                (envCore != null && envCore != OpenBlas.CoreType ? $", overriding the environment's {envCore}" : "") + $"), {OpenBlas.Threads} threads");
            if (!string.Equals(OpenBlas.CoreName, OpenBlas.CoreType, StringComparison.OrdinalIgnoreCase))
                _log.WriteLine($"  note: OpenBLAS runs core {OpenBlas.CoreName}, not the requested {OpenBlas.CoreType}");
        }
        var cases = MatMulBench.DefaultCases(_streamMatrices);
        var rows = new JsonArray();
        _log.WriteLine("matrix multiply: engine (backend cpu) vs OpenBLAS, GFLOP/s (medians)");
        if (_dropPageCache) DropPageCache(MatMulBench.ExistingFile(_cache, cases));
        using (var bench = new MatMulBench(_cache, cases))
        {
            var h = NewHarness();
            string[] workerArgs = ["--file", bench.FilePath, "--stream", _streamMatrices.ToString(), "--threads", _threads.ToString(), "--openblas-core", _openBlasCore];
            using var engineWorker = _isolate ? new ChildProcess("matmul-engine", workerArgs) : null;
            using var blasWorker = _isolate && blas ? new ChildProcess("matmul-openblas", workerArgs) : null;
            foreach (var c in cases)
            {
                _log.Write($"  {c.Label,-44} {c.Layout} ");
                var r = _isolate ? bench.Run(c, h, blas, engineWorker!, blasWorker) : bench.Run(c, h, blas);
                double eg = c.Flops / r.Figure.Median("engine") / 1e9;
                var row = new JsonObject
                {
                    ["label"] = c.Label, ["t"] = c.T, ["k"] = c.K, ["n"] = c.N,
                    ["layout"] = c.InputMajor ? "kn (weights [K, N], GPT-2 Conv1D)" : "nk (weights [N, K], nn.Linear)",
                    ["stream_matrices"] = c.Stream,
                    ["engine"] = MatMulPeer(r.Figure, "engine", c),
                };
                string line = $" engine {eg,7:F1}";
                if (blas)
                {
                    row["openblas"] = MatMulPeer(r.Figure, "openblas", c);
                    double bg = c.Flops / r.Figure.Median("openblas") / 1e9;
                    double ratio = r.Figure.Median("openblas") / r.Figure.Median("engine");
                    row["ratio_engine_over_openblas"] = Num(ratio);
                    row["paired_ratio_engine_over_openblas"] = Num(r.Figure.PairedRatio("engine", "openblas"));
                    row["max_rel_diff"] = Num(r.MaxRelDiff);
                    line += $"  openblas {bg,7:F1}  engine/openblas {ratio,5:F2}";
                }
                if (c.T == 1) line += $"  (engine {c.WeightBytes / r.Figure.Median("engine") / 1e9:F1} GB/s)";
                AddNoise(row, r.Figure);
                rows.Add(row);
                _log.WriteLine(line + (r.Figure.Noisy ? "  [noisy]" : ""));
            }
        }
        result["results"] = rows;
        return result;
    }

    static JsonObject MatMulPeer(Figure f, string peer, MatMulCase c)
    {
        double med = f.Median(peer);
        var o = new JsonObject
        {
            ["median_seconds"] = Num(med),
            ["gflops"] = Num(c.Flops / med / 1e9),
            ["runs_seconds"] = new JsonArray(f.Runs[peer].Select(x => (JsonNode)Num(x)!).ToArray()),
        };
        if (c.T == 1) o["weight_gb_per_s"] = Num(c.WeightBytes / med / 1e9);
        return o;
    }

    static void AddNoise(JsonObject o, Figure f)
    {
        o["rounds_run"] = f.RoundsRun;
        o["waited_for_quiet_seconds"] = Math.Round(f.WaitedSeconds, 1);
        o["rounds_discarded_noisy"] = f.RoundsDiscarded;
        o["noisy"] = f.Noisy;
        o["others_cores_per_round"] = new JsonArray(f.RoundNoise.Select(x => (JsonNode)Math.Round(x, 3)).ToArray());
    }

    static JsonNode? Num(double x) => double.IsFinite(x) ? JsonValue.Create(x) : JsonValue.Create(double.IsNaN(x) ? "NaN" : x > 0 ? "Infinity" : "-Infinity");

    // ------------------------------------------------------------------ end to end

    /// <summary>Converts (once; cached by source size and time) the folder's weights to GGUF.</summary>
    string EnsureGguf(Model model, GgmlType type, out double seconds)
    {
        string src = Path.Combine(model.Folder, "model.safetensors");
        var fi = new FileInfo(File.Exists(src) ? src : Path.Combine(model.Folder, "config.json"));
        string name = Path.GetFileName(Path.GetFullPath(model.Folder).TrimEnd('/'));
        string path = Path.Combine(_cache, $"{name}.{type.ToString().ToLowerInvariant()}.gguf");
        string stamp = $"v1 {fi.Length} {fi.LastWriteTimeUtc.Ticks}";
        seconds = 0;
        if (File.Exists(path) && File.Exists(path + ".stamp") && File.ReadAllText(path + ".stamp") == stamp) return path;
        var sw = Stopwatch.StartNew();
        _log.WriteLine($"writing {path} ...");
        HfToGguf.Convert(model, type, path);
        File.WriteAllText(path + ".stamp", stamp);
        seconds = sw.Elapsed.TotalSeconds;
        return path;
    }

    string EnsureOnnx(Model model, out double seconds)
    {
        string src = Path.Combine(model.Folder, "model.safetensors");
        var fi = new FileInfo(src);
        string name = Path.GetFileName(Path.GetFullPath(model.Folder).TrimEnd('/'));
        string path = Path.Combine(_cache, $"{name}.onnx");
        string stamp = $"v1 {fi.Length} {fi.LastWriteTimeUtc.Ticks}";
        seconds = 0;
        if (File.Exists(path) && File.Exists(path + ".stamp") && File.ReadAllText(path + ".stamp") == stamp) return path;
        var sw = Stopwatch.StartNew();
        _log.WriteLine($"writing {path} ...");
        Gpt2Onnx.Build(model, path);
        File.WriteAllText(path + ".stamp", stamp);
        seconds = sw.Elapsed.TotalSeconds;
        return path;
    }

    JsonObject VerificationJson(Verification v, bool strict) => new()
    {
        ["peer"] = v.Peer, ["model"] = v.Model, ["settings"] = v.Settings, ["tokens"] = v.Tokens,
        ["positions_compared"] = v.Positions, ["max_abs_diff"] = Num(v.MaxAbsDiff), ["max_abs_logit"] = Num(v.MaxAbsLogit),
        ["argmax_agree"] = v.ArgmaxAgree, ["tolerance"] = v.Tolerance, ["pass"] = v.Pass, ["strict"] = strict,
    };

    void Report(Verification v, bool strict)
    {
        _log.WriteLine($"  check {v.Peer,-12} {v.Settings,-34} {v.Positions,3} positions: max |diff| {v.MaxAbsDiff:E2} (logits up to {v.MaxAbsLogit:F2}), " +
                       $"argmax {v.ArgmaxAgree}/{v.Positions}: {(v.Pass ? "ok" : strict ? "FAIL" : "over tolerance (informational)")} (tol {v.Tolerance:G2})");
    }

    /// <summary>
    /// F32 logit tolerance against llama.cpp. ggml's CPU GELU (GPT-2's MLP) rounds its input to F16 and reads a table
    /// (GGML_GELU_FP16 in ggml-cpu/vec.h), a relative error of up to ~5e-4 per activation: for gpt2 the tolerance is
    /// 1e-3 relative to the logits' scale. SiLU (llama) is computed in F32: 1e-3 absolute.
    /// </summary>
    static Tolerance LlamaTolerance(string family) => family == "gpt2" ? new Tolerance(1e-3, true) : new Tolerance(1e-3, false);

    /// <summary>Once per family: the converters on a small model whose every parameter (norms, biases) is random.</summary>
    void VerifyTiny(string family, string peer, int threads)
    {
        string key = family + "/" + peer;
        if (!_verify || _tinyVerified.ContainsKey(key)) return;
        _tinyVerified[key] = true;
        if (peer == "onnx" && family != "gpt2") return;
        string folder = Verify.EnsureTinyModel(_cache, family);
        using var m = Model.Load(folder);
        using var eng = new EnginePeer(m, m.Config.ContextLength);
        var tokens = Verify.Tokens(32, m.Config.VocabSize, 3);
        Verification v;
        if (peer == "llamacpp")
        {
            string gguf = EnsureGguf(m, GgmlType.F32, out _);
            using var p = new LlamaCppPeer(gguf, "f32", 128, threads, "f32", "off");
            v = Verify.Compare("llama.cpp", folder, "gguf f32, kv f32, fa off", eng, p, tokens, m.Config.VocabSize, LlamaTolerance(family));
            if (family == "gpt2")
            {
                Report(v, true);
                _tinyChecks.Add(VerificationJson(v, true));
                v = Verify.Compare("llama.cpp", folder, "gguf f32, kv f32, fa off; engine with ggml's F16 GELU table", eng, p, tokens,
                    m.Config.VocabSize, new Tolerance(1e-3, true), eng.LogitsWithGgmlGelu(tokens));
                Report(v, false);
                _tinyChecks.Add(VerificationJson(v, false));
                return;
            }
        }
        else
        {
            string onnx = EnsureOnnx(m, out _);
            using var p = new OnnxPeer(onnx, threads);
            v = Verify.Compare("onnxruntime", folder, "f32", eng, p, tokens, m.Config.VocabSize, new Tolerance(1e-3, false));
        }
        Report(v, true);
        _tinyChecks.Add(VerificationJson(v, true));
    }

    JsonObject RunModel(string folder)
    {
        if (_dropPageCache) DropPageCache(Directory.GetFiles(folder, "*.safetensors"));
        using var model = Model.Load(folder);
        var c = model.Config;
        var dtypes = model.ParameterCounts.OrderByDescending(kv => kv.Value).Select(kv => kv.Key).ToArray();
        var mainDType = dtypes[0];
        _log.WriteLine($"\n== {folder}: {c.ModelType}, {model.ParameterCount:N0} parameters ({string.Join("+", dtypes.Select(d => d.Name()))})");
        var mj = new JsonObject
        {
            ["model"] = folder,
            ["model_type"] = c.ModelType,
            ["weights_dtype"] = string.Join("+", dtypes.Select(d => d.Name())),
            ["parameters"] = model.ParameterCount,
            ["layers"] = c.NLayers, ["d_model"] = c.DModel, ["vocab"] = c.VocabSize,
        };
        var verification = new JsonArray();
        var conversions = new JsonObject();
        int maxPrefill = _prefill.Max();
        if (maxPrefill > c.ContextLength) throw new UsageException($"--prefill: {maxPrefill} is longer than {folder}'s context of {c.ContextLength}");
        int capacity = Math.Min(c.ContextLength, Math.Max(maxPrefill, 16 + _decode));
        int decodeSteps = Math.Min(_decode, capacity - 16);

        // peers: what is timed, the engine first; in process isolation the in-process engine only serves the logit checks.
        var peers = new List<IEndToEndPeer>();
        var timed = new List<IEndToEndPeer>();
        EnginePeer? engine = null;
        try
        {
            engine = new EnginePeer(model, capacity, skipUnusedRows: _engineRows == "skip");
            if (_isolate) peers.Add(new ChildPeer("engine", true, "engine", ["--model", folder, "--capacity", capacity.ToString(), "--engine-rows", _engineRows]));
            else peers.Add(engine);
            var verifyTokens = Verify.Tokens(16, c.VocabSize, 42);

            if (_peers.Contains("llamacpp"))
            {
                try
                {
                    LlamaCppPeer.HookLog(_verbose);
                    if (c.ModelType is not ("gpt2" or "llama")) throw new NotSupportedException($"no GGUF conversion for model_type '{c.ModelType}'");
                    VerifyTiny(c.ModelType, "llamacpp", _threads);
                    var type = _ggufType == "auto" ? HfToGguf.FromDType(mainDType) : HfToGguf.ParseType(_ggufType);
                    string gguf = EnsureGguf(model, type, out double secs);
                    conversions["gguf"] = new JsonObject { ["path"] = gguf, ["type"] = type.ToString(), ["bytes"] = new FileInfo(gguf).Length, ["seconds"] = secs > 0 ? secs : null };
                    string typeName = type.ToString().ToLowerInvariant();
                    if (_verify)
                    {
                        // Tight check: F32 KV cache, no flash attention; the weights are exactly the engine's when the type matches.
                        bool exact = type == GgmlType.F32;
                        using (var strictPeer = new LlamaCppPeer(gguf, typeName, 128, _threads, "f32", "off"))
                        {
                            var v = Verify.Compare("llama.cpp", folder, $"gguf {typeName}, kv f32, fa off", engine, strictPeer, verifyTokens, c.VocabSize, exact ? LlamaTolerance(c.ModelType) : new Tolerance(5e-2, true));
                            Report(v, exact); verification.Add(VerificationJson(v, exact));
                            if (exact && c.ModelType == "gpt2")
                            {
                                v = Verify.Compare("llama.cpp", folder, "gguf f32, kv f32, fa off; engine with ggml's F16 GELU table", engine, strictPeer,
                                    verifyTokens, c.VocabSize, new Tolerance(1e-3, true), engine.LogitsWithGgmlGelu(verifyTokens));
                                Report(v, false); verification.Add(VerificationJson(v, false));
                            }
                        }
                    }
                    var lp = new LlamaCppPeer(gguf, typeName, capacity, _threads, _llamaKv, _llamaFa);
                    if (_verify)
                    {
                        var v = Verify.Compare("llama.cpp", folder, $"gguf {typeName}, kv {_llamaKv}, fa {_llamaFa} (timed)", engine, lp, verifyTokens, c.VocabSize, new Tolerance(5e-2, true));
                        Report(v, false); verification.Add(VerificationJson(v, false));
                    }
                    if (_isolate)
                    {
                        lp.Dispose();
                        var args = new List<string> { "--gguf", gguf, "--gguf-type", typeName, "--capacity", capacity.ToString(), "--threads", _threads.ToString(), "--kv", _llamaKv, "--fa", _llamaFa };
                        if (_verbose) args.AddRange(["--verbose", "1"]);
                        timed.Add(new ChildPeer("llama.cpp", true, "llamacpp", args));
                    }
                    else timed.Add(lp);
                }
                catch (Exception e) when (e is not UsageException)
                {
                    Skip("llama.cpp", folder, $"{e.GetType().Name}: {e.Message}" + LlamaLogTail());
                }
            }
            if (_peers.Contains("onnx"))
            {
                if (c.ModelType != "gpt2") Skip("onnxruntime", folder, "the ONNX graph builder covers GPT-2 only");
                else if (mainDType != DType.F32) Skip("onnxruntime", folder, $"ONNX peer runs F32 weights only (this folder is {mainDType.Name()})");
                else
                {
                    try
                    {
                        VerifyTiny("gpt2", "onnx", _threads);
                        string onnx = EnsureOnnx(model, out double secs);
                        conversions["onnx"] = new JsonObject { ["path"] = onnx, ["opset"] = Gpt2Onnx.Opset, ["bytes"] = new FileInfo(onnx).Length, ["seconds"] = secs > 0 ? secs : null };
                        var op = new OnnxPeer(onnx, _threads);
                        if (_verify)
                        {
                            var v = Verify.Compare("onnxruntime", folder, "f32", engine, op, verifyTokens, c.VocabSize, new Tolerance(1e-3, false));
                            Report(v, true); verification.Add(VerificationJson(v, true));
                        }
                        if (_isolate)
                        {
                            op.Dispose();
                            timed.Add(new ChildPeer("onnxruntime", false, "onnx", ["--onnx", onnx, "--threads", _threads.ToString()]));
                        }
                        else timed.Add(op);
                    }
                    catch (Exception e) when (e is not UsageException)
                    {
                        Skip("onnxruntime", folder, $"{e.GetType().Name}: {e.Message}");
                    }
                }
            }

            peers.AddRange(timed);
            timed.Clear();
            if (_isolate) { engine.Dispose(); engine = null; }
            mj["conversions"] = conversions;
            mj["verification"] = verification;
            var settings = new JsonObject();
            foreach (var p in peers) settings[p.Name] = new JsonObject(p.Settings.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
            mj["peers"] = settings;

            // ---- timing, interleaved
            var h = NewHarness();
            var figures = new List<Figure>();
            var rng = new Random(7);
            foreach (int n in _prefill)
            {
                var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(c.VocabSize)).ToArray();
                _log.Write($"  prefill {n,4} ");
                var f = h.Measure("prefill", n, peers.Select(p => (p.Name, (Func<double>)(() => p.Prefill(tokens)))).ToList());
                _log.WriteLine(Line(f, peers));
                figures.Add(f);
            }
            if (decodeSteps > 0)
            {
                var prompt = Enumerable.Range(0, 16).Select(_ => rng.Next(c.VocabSize)).ToArray();
                var dec = peers.Where(p => p.CanDecode).ToList();
                _log.Write($"  decode  {decodeSteps,4} ");
                var f = h.Measure("decode", decodeSteps, dec.Select(p => (p.Name, (Func<double>)(() => p.Decode(prompt, decodeSteps)))).ToList());
                _log.WriteLine(Line(f, dec));
                figures.Add(f);
            }
            mj["results"] = new JsonArray(figures.Select(f => (JsonNode)FigureJson(f)).ToArray());
            PrintTable(folder, c, figures, peers.Select(p => p.Name).ToList());
        }
        finally
        {
            foreach (var p in peers.Concat(timed)) p.Dispose();
            if (_isolate) engine?.Dispose();
        }
        return mj;
    }

    static string LlamaLogTail()
    {
        var errors = LlamaCppPeer.Log.Where(l => l.StartsWith("[Error]")).TakeLast(3).ToList();
        return errors.Count == 0 ? "" : " | llama.cpp: " + string.Join(" | ", errors);
    }

    static string Line(Figure f, IReadOnlyList<IEndToEndPeer> peers) =>
        string.Join("  ", peers.Select(p => $"{p.Name} {f.Tokens / f.Median(p.Name),8:F1} tok/s")) + (f.Noisy ? "  [noisy]" : "");

    static JsonObject FigureJson(Figure f)
    {
        var peers = new JsonObject();
        foreach (var (name, runs) in f.Runs)
        {
            double med = Stats.Median(runs);
            peers[name] = new JsonObject
            {
                ["median_seconds"] = Num(med),
                ["tokens_per_second"] = Num(f.Tokens / med),
                ["runs_seconds"] = new JsonArray(runs.Select(x => (JsonNode)Num(x)!).ToArray()),
            };
        }
        var ratios = new JsonObject();
        foreach (var name in f.Runs.Keys.Where(k => k != "engine"))
            ratios[$"engine/{name}"] = new JsonObject
            {
                ["ratio_of_medians"] = Num(f.Median(name) / f.Median("engine")),
                ["median_of_paired_ratios"] = Num(f.PairedRatio("engine", name)),
            };
        var o = new JsonObject { ["kind"] = f.Kind, ["tokens"] = f.Tokens, ["peers"] = peers, ["ratios"] = ratios };
        AddNoise(o, f);
        return o;
    }

    void PrintTable(string folder, ModelConfig c, List<Figure> figures, List<string> names)
    {
        var others = names.Where(n => n != "engine").ToList();
        Console.WriteLine();
        Console.WriteLine($"{folder} ({c.ModelType}), {_threads} threads, tokens/s, medians of {_repeat} interleaved rounds; ratio = engine / peer (paired median)");
        var header = $"{"kind",-8} {"tokens",6} {"engine",10}" + string.Concat(others.Select(o => $" {o,12}")) + string.Concat(others.Select(o => $" {"engine/" + o,24}"));
        Console.WriteLine(header);
        foreach (var f in figures)
        {
            var line = $"{f.Kind,-8} {f.Tokens,6} {f.Tokens / f.Median("engine"),10:F1}";
            foreach (var o in others) line += f.Runs.ContainsKey(o) ? $" {f.Tokens / f.Median(o),12:F1}" : $" {"-",12}";
            foreach (var o in others)
                line += f.Runs.ContainsKey(o) ? $" {$"{f.Median(o) / f.Median("engine"):F2} ({f.PairedRatio("engine", o):F2})",24}" : $" {"-",24}";
            if (f.Noisy) line += "  [noisy]";
            Console.WriteLine(line);
        }
    }
}
