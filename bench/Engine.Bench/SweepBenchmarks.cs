using System.Diagnostics;
using System.Globalization;
using System.Runtime.Intrinsics;
using System.Text;
using System.Text.Json;
using Engine.Interp;
using Engine.Interp.Sweeps;
using Engine.Kernels.Threading;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Bench;

/// <summary>
/// Sweep speed: each interpretability sweep in its fast mode (cached states, restarts at the patched layer and position,
/// batched lanes) and in its naive mode (one full forward pass per cell), interleaved round by round on the same
/// session, with the results compared (max |fast − naive|). Not BenchmarkDotNet: one naive causal trace is minutes.
///   dotnet run -c Release --project bench/Engine.Bench -- sweeps [--model DIR] [--tokens 16] [--rounds 3]
///       [--sweeps trace,resid_pre,z,z_pos,ablate] [--samples 10] [--window 10] [--max-rows 512] [--no-naive] [--no-write]
/// Writes bench/results/DATE-sweeps.md and .json (unless --no-write). Per round and run it records the CPU time other
/// processes used (cores, from /proc/stat), since the machine is shared.
/// </summary>
public static class SweepBenchmarks
{
    sealed record Sweep(string Name, string What, int Cells, int Runs, Func<SweepOptions, Grid[]> Run);

    sealed class Row
    {
        public required Sweep Sweep;
        public List<double> Fast = [], Naive = [], FastNoise = [], NaiveNoise = [];
        public double MaxDiff;
    }

    public static int Run(string[] args)
    {
        string Arg(string name, string def)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : def;
        }
        bool Flag(string name) => args.Contains(name);
        string folder = Arg("--model", Path.Combine("weights", "bench-gpt2-small-f32"));
        int nTokens = int.Parse(Arg("--tokens", "16"), CultureInfo.InvariantCulture);
        int rounds = int.Parse(Arg("--rounds", "3"), CultureInfo.InvariantCulture);
        int samples = int.Parse(Arg("--samples", "10"), CultureInfo.InvariantCulture);
        int window = int.Parse(Arg("--window", "10"), CultureInfo.InvariantCulture);
        int maxRows = int.Parse(Arg("--max-rows", SweepOptions.Default.MaxRows.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
        var which = Arg("--sweeps", "trace,resid_pre,z,z_pos,ablate").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
        bool naive = !Flag("--no-naive");
        var log = Console.Error;

        if (!File.Exists(Path.Combine(folder, "model.safetensors")))
        {
            if (!folder.Contains("gpt2-small")) throw new FileNotFoundException($"{folder}: no model");
            log.WriteLine($"writing a random-weight gpt2-small model to {folder} ...");
            RandomModel.Create(folder, RandomModelShape.Presets["gpt2-small"], DType.F32);
        }
        using var model = Model.Load(folder);
        var c = model.Config;
        using var session = new Session(model, new SessionOptions { Capacity = nTokens, AllLogits = false });
        var rng = new Random(7);
        int[] tokens = Enumerable.Range(0, nTokens).Select(_ => rng.Next(c.VocabSize)).ToArray();
        int[] subject = [2, 3, 4];
        int[] corrupt = (int[])tokens.Clone();
        foreach (int p in subject) corrupt[p] = rng.Next(c.VocabSize);
        var noise = TraceNoise.Generate(model, subject.Length, subject.Select(p => tokens[p]).ToArray(), samples, 3, 1);
        int L = c.NLayers, T = nTokens, H = c.NHeads;

        var sweeps = new List<Sweep>();
        if (which.Contains("trace"))
            sweeps.Add(new Sweep("trace", $"causal tracing, 3 kinds, W = {window}, S = {samples}, {subject.Length} subject tokens", 3 * L * T, samples * (1 + 3 * L * T), o =>
            {
                var r = CausalTrace.Run(session, tokens, subject, noise, null, new Engine.Interp.TraceOptions { Window = window, Sweep = o });
                return [r.Resid!, r.Mlp!, r.Attn!, new Grid([2], [r.CleanProb, r.CorruptProb])];
            }));
        Grid[] Patch(SweepOptions o, PatchActivation act, bool perPos)
        {
            var r = ActivationPatching.Run(session, tokens, corrupt, null, null, new PatchOptions { Activation = act, PerPosition = perPos, Sweep = o });
            return [r.Patched];
        }
        if (which.Contains("resid_pre"))
            sweeps.Add(new Sweep("resid_pre", "activation patching of resid_pre per (layer, position)", L * T, 2 + L * T, o => Patch(o, PatchActivation.ResidPre, false)));
        if (which.Contains("z"))
            sweeps.Add(new Sweep("z", "activation patching of z per (layer, head), all positions", L * H, 2 + L * H, o => Patch(o, PatchActivation.Z, false)));
        if (which.Contains("z_pos"))
            sweeps.Add(new Sweep("z_pos", "activation patching of z per (layer, position, head)", L * T * H, 2 + L * T * H, o => Patch(o, PatchActivation.Z, true)));
        if (which.Contains("ablate"))
            sweeps.Add(new Sweep("ablate", "zero-ablation of every head", L * H, 1 + L * H, o =>
            {
                var r = HeadAblation.Run(session, tokens, null, new AblationOptions { Sweep = o });
                return [r.Delta!];
            }));

        // Plain forward pass of the prompt (last-position logits), the unit of the naive mode.
        var fwd = new List<double>();
        for (int i = 0; i < 3; i++) session.Run(tokens);
        for (int i = 0; i < 9; i++) { var sw = Stopwatch.StartNew(); session.Run(tokens); fwd.Add(sw.Elapsed.TotalSeconds); }
        double forward = Median(fwd);
        log.WriteLine($"{folder}: {c.ModelType}, {L} layers, d {c.DModel}; {T} tokens; one forward pass {forward * 1e3:F1} ms (median of 9)");

        if (Flag("--probe-lanes"))
        {
            // Per-lane cost of B unpatched lanes of the whole prompt in one pass against one plain forward pass.
            var Bs = Arg("--probe-lanes", "1,2,4,8,16,32").Split(',').Select(x => int.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            using var b = session.CaptureBase(tokens);
            var per = Bs.ToDictionary(x => x, _ => new List<double>());
            var plain = new List<double>();
            SweepLane[] Lanes(int n) => Enumerable.Range(0, n).Select(_ => new SweepLane(b, 0, 0)).ToArray();
            foreach (var n in Bs) session.RunLanes(Lanes(n));
            for (int r = 0; r < rounds; r++)
            {
                var t = Stopwatch.StartNew(); session.Run(tokens); plain.Add(t.Elapsed.TotalMilliseconds);
                foreach (var n in Bs) { var lanes = Lanes(n); t.Restart(); session.RunLanes(lanes); per[n].Add(t.Elapsed.TotalMilliseconds / n); }
            }
            Console.WriteLine($"plain forward of {T} rows: median {Median(plain):F1} ms (min {plain.Min():F1})");
            foreach (var n in Bs) Console.WriteLine($"{n,3} lanes x {T} rows: per lane median {Median(per[n]):F1} ms (min {per[n].Min():F1})");
            return 0;
        }

        var fastOptions = new SweepOptions { MaxRows = maxRows };
        var rows = new List<Row>();
        foreach (var sw in sweeps)
        {
            var row = new Row { Sweep = sw };
            log.Write($"{sw.Name,-10} {sw.Cells} cells, {sw.Runs} runs naive: warm-up");
            var reference = sw.Run(fastOptions);                         // warm-up (JIT, workspace)
            for (int r = 0; r < rounds; r++)
            {
                // alternate which mode goes first
                foreach (bool fastTurn in r % 2 == 0 ? new[] { true, false } : [false, true])
                {
                    if (!fastTurn && !naive) continue;
                    var a = SweepNoise.Now();
                    var t0 = Stopwatch.GetTimestamp();
                    var got = sw.Run(fastTurn ? fastOptions : SweepOptions.NaiveMode);
                    double secs = Stopwatch.GetElapsedTime(t0).TotalSeconds;
                    double others = SweepNoise.OthersCores(a, SweepNoise.Now());
                    (fastTurn ? row.Fast : row.Naive).Add(secs);
                    (fastTurn ? row.FastNoise : row.NaiveNoise).Add(others);
                    if (!fastTurn) row.MaxDiff = Math.Max(row.MaxDiff, MaxDiff(got, reference));
                    log.Write($" {(fastTurn ? "fast" : "naive")} {secs:F2}s{(others > 0.3 ? $"(~{others:F1})" : "")}");
                }
            }
            log.WriteLine();
            rows.Add(row);
        }

        // ---- report
        var table = new StringBuilder();
        table.AppendLine("| sweep | cells | naive runs | naive s (median) | fast s (median) | speed-up (ratio of medians) | paired ratio (median, min–max) | max abs diff fast vs naive | others' cores (median, max) |");
        table.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var r in rows)
        {
            var paired = Enumerable.Range(0, Math.Min(r.Fast.Count, r.Naive.Count)).Select(i => r.Naive[i] / r.Fast[i]).ToList();
            var noiseAll = r.FastNoise.Concat(r.NaiveNoise).ToList();
            table.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Sweep.Name}: {r.Sweep.What} | {r.Sweep.Cells} | {r.Sweep.Runs} | {(r.Naive.Count > 0 ? Median(r.Naive).ToString("F2", CultureInfo.InvariantCulture) : "–")} | {Median(r.Fast):F3} | " +
                $"{(r.Naive.Count > 0 ? (Median(r.Naive) / Median(r.Fast)).ToString("F1", CultureInfo.InvariantCulture) + "×" : "–")} | " +
                $"{(paired.Count > 0 ? $"{Median(paired):F1}× ({paired.Min():F1}–{paired.Max():F1})" : "–")} | {(r.Naive.Count > 0 ? r.MaxDiff.ToString("E1", CultureInfo.InvariantCulture) : "–")} | {Median(noiseAll):F2}, {noiseAll.Max():F2} |"));
        }
        Console.Out.Write(table);
        if (Flag("--no-write")) return 0;

        string date = DateTime.Now.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
        string dir = Path.Combine("bench", "results");
        Directory.CreateDirectory(dir);
        string isa = Vector512.IsHardwareAccelerated ? "avx512" : Vector256.IsHardwareAccelerated ? "avx2" : "other";
        string cpu = CpuName();
        string command = "dotnet run -c Release --project bench/Engine.Bench -- sweeps " + string.Join(' ', args);
        var md = new StringBuilder();
        md.AppendLine($"# Sweep speed: fast vs naive — {date}");
        md.AppendLine();
        md.AppendLine($"`{command}`");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"Model `{folder}` ({c.ModelType}, {L} layers, d_model {c.DModel}, {H} heads, vocab {c.VocabSize}, random F32 weights), {T}-token prompt, backend `cpu`, " +
            $"{WorkerPool.Shared.Threads} worker threads, {isa}; machine: {cpu}, {Environment.ProcessorCount} logical CPUs. One plain forward pass of the prompt: {forward * 1e3:F1} ms (median of 9)."));
        md.AppendLine();
        md.AppendLine($"Fast = cached base states, restart at the patched layer and position, lanes batched into passes of ≤ {maxRows} rows (default `SweepOptions`); naive = one full forward pass per cell (`--naive`). " +
            $"{rounds} interleaved rounds (the mode that goes first alternates), after one warm-up run of the fast mode; medians. " +
            "'others' cores' = CPU time used by other processes during each timed run (the machine is shared; 2 cores).");
        md.AppendLine();
        md.Append(table);
        md.AppendLine();
        md.AppendLine("All runs per sweep (seconds):");
        md.AppendLine();
        foreach (var r in rows)
            md.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"- {r.Sweep.Name}: fast [{string.Join(", ", r.Fast.Select(x => x.ToString("F3", CultureInfo.InvariantCulture)))}], naive [{string.Join(", ", r.Naive.Select(x => x.ToString("F2", CultureInfo.InvariantCulture)))}]"));
        // Never overwrite an earlier result of the day: DATE-sweeps, DATE-sweeps-2, ...
        string stem = $"{date}-sweeps";
        for (int n = 2; File.Exists(Path.Combine(dir, stem + ".md")) || File.Exists(Path.Combine(dir, stem + ".json")); n++) stem = $"{date}-sweeps-{n}";
        File.WriteAllText(Path.Combine(dir, stem + ".md"), md.ToString());

        using (var fs = File.Create(Path.Combine(dir, stem + ".json")))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("command", command);
            w.WriteString("date", date);
            w.WriteString("model", folder);
            w.WriteNumber("tokens", T);
            w.WriteString("cpu", cpu);
            w.WriteNumber("processors", Environment.ProcessorCount);
            w.WriteNumber("threads", WorkerPool.Shared.Threads);
            w.WriteString("isa", isa);
            w.WriteNumber("max_rows", maxRows);
            w.WriteNumber("forward_seconds", forward);
            w.WriteStartArray("sweeps");
            foreach (var r in rows)
            {
                w.WriteStartObject();
                w.WriteString("name", r.Sweep.Name);
                w.WriteString("what", r.Sweep.What);
                w.WriteNumber("cells", r.Sweep.Cells);
                w.WriteNumber("naive_runs", r.Sweep.Runs);
                void Arr(string name, List<double> xs) { w.WriteStartArray(name); foreach (var x in xs) w.WriteNumberValue(x); w.WriteEndArray(); }
                Arr("fast_seconds", r.Fast); Arr("naive_seconds", r.Naive); Arr("fast_others_cores", r.FastNoise); Arr("naive_others_cores", r.NaiveNoise);
                w.WriteNumber("fast_median_seconds", Median(r.Fast));
                if (r.Naive.Count > 0)
                {
                    w.WriteNumber("naive_median_seconds", Median(r.Naive));
                    w.WriteNumber("speedup", Median(r.Naive) / Median(r.Fast));
                    w.WriteNumber("max_abs_diff", r.MaxDiff);
                }
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        log.WriteLine($"wrote {Path.Combine(dir, stem + ".md")} and .json");
        return 0;
    }

    static double MaxDiff(Grid[] a, Grid[] b)
    {
        double m = 0;
        for (int g = 0; g < a.Length; g++)
            for (int i = 0; i < a[g].Data.Length; i++)
            {
                double x = a[g].Data[i], y = b[g].Data[i];
                if (double.IsNaN(x) && double.IsNaN(y)) continue;
                m = Math.Max(m, double.IsNaN(x - y) ? double.PositiveInfinity : Math.Abs(x - y));
            }
        return m;
    }

    internal static double Median(IReadOnlyList<double> xs)
    {
        if (xs.Count == 0) return double.NaN;
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    static string CpuName()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return "unknown CPU";
    }
}

/// <summary>CPU time used by other processes (/proc/stat total busy minus this process), in cores, over an interval.</summary>
static class SweepNoise
{
    public readonly record struct Mark(long Busy, long Self, long Timestamp);
    static bool Available => File.Exists("/proc/stat") && File.Exists("/proc/self/stat");

    public static Mark Now()
    {
        if (!Available) return new Mark(0, 0, Stopwatch.GetTimestamp());
        long busy = 0;
        using (var r = new StreamReader("/proc/stat"))
        {
            var f = r.ReadLine()!.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            for (int i = 1; i < f.Length && i <= 8; i++)
                if (i != 4 && i != 5) busy += long.Parse(f[i], CultureInfo.InvariantCulture);
        }
        var s = File.ReadAllText("/proc/self/stat");
        var rest = s[(s.LastIndexOf(')') + 2)..].Split(' ');
        return new Mark(busy, long.Parse(rest[11], CultureInfo.InvariantCulture) + long.Parse(rest[12], CultureInfo.InvariantCulture), Stopwatch.GetTimestamp());
    }

    public static double OthersCores(Mark a, Mark b)
    {
        double secs = (b.Timestamp - a.Timestamp) / (double)Stopwatch.Frequency;
        if (!Available || secs < 0.02) return 0;
        return Math.Max(0, (b.Busy - a.Busy - (b.Self - a.Self)) / 100.0 / secs);
    }
}
