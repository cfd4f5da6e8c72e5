using System.Text;
using System.Text.Json;
using Engine.Kernels;
using Engine.Kernels.Profiling;
using Engine.Kernels.Threading;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>
/// engine profile: where the time of a forward pass goes. Per (op, shape) calls, time, share of the wall time,
/// GFLOP/s, GB/s and the fraction of the machine's roofline (engine sysinfo), for the prefill and for decode steps;
/// the time outside the backend's ops is its own row. With --trace, a Chrome / Perfetto trace-event file.
/// </summary>
public static class ProfileCommand
{
    public static CommandSpec Spec { get; } = new("profile", "per-op time, GFLOP/s, GB/s and roofline fraction of prefill and decode; Chrome/Perfetto trace",
        "engine profile --model M (--prompt TEXT | --tokens IDS | --length N) [--decode N] [--backend B] [--trace FILE.json] [--json]",
        [Common.ModelOption, .. Common.InputOptions,
         new("--length", "profile a prompt of N random token ids (seeded) instead of --prompt / --tokens", ValueName: "N"),
         new("--decode", "greedy decode steps to profile after the prompt", ValueName: "N", Default: "16"),
         new("--warmup", "unrecorded rounds first (kernel compilation, weight upload)", ValueName: "N", Default: "1"),
         new("--all-logits", "compute logits for every prompt position (default: the last one, as generation does)", IsFlag: true),
         new("--trace", "write a Chrome / Perfetto trace-event JSON of the recorded round (open in ui.perfetto.dev or chrome://tracing)", ValueName: "FILE"),
         new("--top", "table rows per phase (the rest are summed into one row)", ValueName: "N", Default: "25"),
         Common.ForceOption, Common.BackendOption, Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        int decode = a.Int("--decode", 16, 0, 100_000);
        int warmup = a.Int("--warmup", 1, 0, 100);
        int top = a.Int("--top", 25, 1, 10_000);
        string? tracePath = a.Has("--trace") ? Common.OutputPath(a, "--trace") : null;
        string backendName = a.Get("--backend") ?? KernelRegistry.Default;
        using var model = Common.LoadModel(a);
        int[] tokens;
        if (a.Has("--length"))
        {
            if (a.Has("--prompt") || a.Has("--tokens")) throw new UsageException("engine profile: give one of --prompt, --tokens or --length");
            int n = a.Int("--length", null, 1, model.Config.ContextLength);
            var rng = new Random(7);
            tokens = Enumerable.Range(0, n).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        }
        else tokens = Common.InputTokens(a, model);
        if (tokens.Length + decode > model.Config.ContextLength)
            throw new UsageException($"--decode: {tokens.Length} prompt tokens + {decode} steps exceed the model's context of {model.Config.ContextLength}");

        using var backend = KernelRegistry.CreateBackend(backendName);
        var profile = Profiler.Run(model, backend, tokens, decode, warmup, trace: tracePath != null, allLogits: a.Flag("--all-logits"));

        // the roofline: the CPU's measured peaks for the threads this backend runs on (none for a GPU)
        bool cpu = !backendName.Contains("cuda", StringComparison.Ordinal);
        int threads = backendName == "cpu-ref" ? 1 : backendName == "cpu" ? WorkerPool.Shared.Threads : Environment.ProcessorCount;
        (MachinePeak Peak, string File, bool FromCache)? roof = cpu ? MachinePeak.Load() : null;
        var phases = ProfileReport.Build(profile, roof?.Peak.Flops(threads), roof?.Peak.Bandwidth(threads));
        bool sync = !backend.IsHost;

        if (tracePath != null)
        {
            using var fs = File.Create(tracePath);
            using var w = new Utf8JsonWriter(fs);
            profile.WriteTrace(w, $"engine profile {Path.GetFileName(model.Folder.TrimEnd('/'))} ({backendName})", new Dictionary<string, string>
            {
                ["model"] = model.Folder, ["backend"] = backendName, ["tokens"] = tokens.Length.ToString(), ["decode"] = decode.ToString(),
                ["synchronized"] = sync ? "after every op" : "no (host backend: ops are synchronous)",
            });
        }

        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("profile", model, backendName);
                w.WriteNumber("prompt_tokens", tokens.Length);
                w.WriteNumber("decode_steps", decode);
                w.WriteNumber("warmup", warmup);
                w.WriteBoolean("all_logits", a.Flag("--all-logits"));
                w.WriteBoolean("skip_unused_rows", !a.Flag("--all-logits"));
                w.WriteNumber("threads", threads);
                w.WriteBoolean("synchronized", sync);
                if (roof is var (peak, file, fromCache))
                {
                    w.WriteStartObject("roofline");
                    w.WriteNumber("flops_per_second", peak.Flops(threads));
                    w.WriteNumber("bytes_per_second", peak.Bandwidth(threads));
                    w.WriteNumber("threads", threads);
                    w.WriteString("cpu_model", peak.CpuModel);
                    w.WriteBoolean("quick", peak.Quick);
                    w.WriteString("cache_file", file);
                    w.WriteBoolean("from_cache", fromCache);
                    w.WriteEndObject();
                }
                else w.WriteNull("roofline");
                if (tracePath != null) w.WriteString("trace", tracePath);
                w.WriteStartArray("phases");
                foreach (var p in phases)
                {
                    w.WriteStartObject();
                    w.WriteString("phase", p.Phase);
                    w.WriteNumber("passes", p.Passes);
                    w.WriteNumber("tokens", p.Tokens);
                    w.WriteNumber("wall_seconds", p.WallSeconds);
                    w.WriteNumber("ops_seconds", p.OpSeconds);
                    w.WriteNumber("other_seconds", p.Other.Seconds);
                    w.WriteNumber("coverage", p.Coverage);
                    w.WriteNumber("tokens_per_second", p.WallSeconds > 0 ? p.Tokens / p.WallSeconds : 0);
                    w.WriteStartArray("ops");
                    foreach (var r in p.Rows) RowJson(w, r);
                    w.WriteEndArray();
                    w.WritePropertyName("other");
                    RowJson(w, p.Other);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            });
            return 0;
        }

        var o = a.Out;
        o.WriteLine($"{model.Folder}: {model.Config.ModelType}, backend {backendName}" + (backendName == "cpu" ? $", {threads} threads" : "")
                    + (sync ? ", device synchronised after every op" : ""));
        if (roof is var (pk, pf, _))
            o.WriteLine($"roofline ({threads} thread{(threads == 1 ? "" : "s")}): {pk.Flops(threads) / 1e9:F1} GFLOP/s, {pk.Bandwidth(threads) / 1e9:F1} GB/s"
                        + $" ({pk.Isa}{(pk.Quick ? ", quick measurement" : "")}; engine sysinfo, {pf})");
        else o.WriteLine("roofline: none (not a CPU backend)");
        foreach (var p in phases)
        {
            o.WriteLine();
            o.WriteLine($"{p.Phase}: {p.Tokens} token{(p.Tokens == 1 ? "" : "s")} in {p.Passes} pass{(p.Passes == 1 ? "" : "es")}, wall {p.WallSeconds * 1e3:F2} ms"
                        + $" ({(p.WallSeconds > 0 ? p.Tokens / p.WallSeconds : 0):F1} tokens/s); ops {p.OpSeconds * 1e3:F2} ms = {p.Coverage * 100:F1}% of wall");
            o.WriteLine(Table(p, top));
        }
        if (tracePath != null) o.WriteLine($"trace: {tracePath}");
        return 0;
    }

    static void RowJson(Utf8JsonWriter w, ProfileRow r)
    {
        w.WriteStartObject();
        w.WriteString("op", r.Op);
        if (r.Role != null) w.WriteString("role", r.Role);
        w.WriteString("shape", r.Shape);
        w.WriteNumber("calls", r.Calls);
        w.WriteNumber("seconds", r.Seconds);
        w.WriteNumber("share", r.Share);
        w.WriteNumber("flops", r.Flops);
        w.WriteNumber("bytes", r.Bytes);
        w.WriteNumber("gflops_per_second", r.FlopsPerSecond / 1e9);
        w.WriteNumber("gbytes_per_second", r.BytesPerSecond / 1e9);
        if (r.RooflineFraction is double f) w.WriteNumber("roofline_fraction", f); else w.WriteNull("roofline_fraction");
        if (r.Bound != null) w.WriteString("bound", r.Bound);
        w.WriteEndObject();
    }

    static string Table(PhaseReport p, int top)
    {
        var sb = new StringBuilder();
        string Line(string op, string shape, string calls, string ms, string share, string gf, string gb, string peak) =>
            $"  {op,-26} {shape,-34} {calls,7} {ms,10} {share,6} {gf,8} {gb,8} {peak,9}";
        sb.AppendLine(Line("op", "shape", "calls", "total ms", "share", "GFLOP/s", "GB/s", "roofline"));
        var rows = p.Rows.Take(top).ToList();
        foreach (var r in rows)
        {
            string op = r.Role != null ? $"{r.Op} {Short(r.Role)}" : r.Op;
            string peak = r.RooflineFraction is double f ? $"{f * 100:F0}% {(r.Bound == "compute" ? "C" : "M")}" : "-";
            sb.AppendLine(Line(Clip(op, 26), Clip(r.Shape, 34), r.Calls.ToString(), (r.Seconds * 1e3).ToString("F3"), $"{r.Share * 100:F1}%",
                r.Flops > 0 ? (r.FlopsPerSecond / 1e9).ToString("F1") : "-", (r.BytesPerSecond / 1e9).ToString("F1"), peak));
        }
        var rest = p.Rows.Skip(top).ToList();
        if (rest.Count > 0)
            sb.AppendLine(Line($"({rest.Count} more rows)", "", rest.Sum(r => r.Calls).ToString(), (rest.Sum(r => r.Seconds) * 1e3).ToString("F3"),
                $"{rest.Sum(r => r.Share) * 100:F1}%", "", "", ""));
        sb.AppendLine(Line(ProfileRow.OtherName, "", "", (p.Other.Seconds * 1e3).ToString("F3"), $"{p.Other.Share * 100:F1}%", "", "", ""));
        sb.Append(Line("wall", "", p.Passes.ToString(), (p.WallSeconds * 1e3).ToString("F3"), "100%", "", "", ""));
        sb.AppendLine();
        sb.Append("  (roofline: achieved / min(peak FLOP/s, intensity x bandwidth); C compute-bound, M memory-bound at the op's intensity)");
        return sb.ToString();
    }

    /// <summary>A weight role without its usual prefixes ("transformer.h.*.attn.c_attn.weight" -> "attn.c_attn").</summary>
    static string Short(string role)
    {
        string s = role;
        foreach (var prefix in new[] { "transformer.", "model.", "gpt_neox." })
            if (s.StartsWith(prefix, StringComparison.Ordinal)) s = s[prefix.Length..];
        foreach (var prefix in new[] { "h.*.", "layers.*.", "blocks.*." })
            if (s.StartsWith(prefix, StringComparison.Ordinal)) s = s[prefix.Length..];
        if (s.EndsWith(".weight", StringComparison.Ordinal)) s = s[..^7];
        return s;
    }

    static string Clip(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "…";
}
