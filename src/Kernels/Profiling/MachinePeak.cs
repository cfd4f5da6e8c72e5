using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text;
using System.Text.Json;

namespace Engine.Kernels.Profiling;

/// <summary>
/// The machine's measured limits, the roofline of a profile: peak FP32 FMA throughput (one core, all cores) from a
/// register-only FMA loop on the widest accelerated vectors, and memory read bandwidth (one core, all cores) from a
/// streaming sum over a buffer several times larger than the last-level cache. Measured once and cached in a JSON file
/// keyed by CPU model, core count and vector width (<see cref="Load"/>).
/// </summary>
public sealed record MachinePeak
{
    public required string CpuModel { get; init; }
    public required int Cores { get; init; }
    /// <summary>"avx512", "avx2", "neon", "sse" or "scalar": the vectors the FMA loop ran on.</summary>
    public required string Isa { get; init; }
    public required int VectorBits { get; init; }
    public required double FlopsPerCore { get; init; }
    public required double FlopsAllCores { get; init; }
    public required double ReadBytesPerCore { get; init; }
    public required double ReadBytesAllCores { get; init; }
    /// <summary>Size of the buffer the bandwidth was read from.</summary>
    public required long BufferBytes { get; init; }
    /// <summary>Last-level cache size seen (0 when unknown).</summary>
    public required long CacheBytes { get; init; }
    /// <summary>A short measurement (milliseconds; a buffer that may fit the cache): for tests, not for figures.</summary>
    public required bool Quick { get; init; }
    public required string MeasuredUtc { get; init; }
    public required double MeasureSeconds { get; init; }

    /// <summary>Peak FLOP/s of <paramref name="threads"/> threads (per-core peak times threads, at most the all-core figure).</summary>
    public double Flops(int threads) => threads >= Cores ? FlopsAllCores : Math.Min(FlopsAllCores, FlopsPerCore * Math.Max(1, threads));

    /// <summary>Read bandwidth of <paramref name="threads"/> threads, bytes/s.</summary>
    public double Bandwidth(int threads) => threads >= Cores ? ReadBytesAllCores : Math.Min(ReadBytesAllCores, ReadBytesPerCore * Math.Max(1, threads));

    // ---------------------------------------------------------------- identity of the machine and the cache file

    /// <summary>The CPU's model name (Linux: /proc/cpuinfo), or the architecture where it cannot be read.</summary>
    public static string CpuModelName()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int i and > 0)
                        return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }

    /// <summary>The vectors the FMA loop uses here: (isa name, bits).</summary>
    public static (string Isa, int Bits) VectorIsa() =>
        Vector512.IsHardwareAccelerated && Avx512F.IsSupported ? ("avx512", 512)
        : Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported ? ("avx2", 256)
        : Vector128.IsHardwareAccelerated && System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? ("neon", 128)
        : Vector128.IsHardwareAccelerated ? ("sse", 128) : ("scalar", 32);

    /// <summary>
    /// Where the cache file lives: $ENGINE_CACHE_DIR, else $XDG_CACHE_HOME/engine, else ~/.cache/engine.
    /// </summary>
    public static string DefaultCacheFolder()
    {
        string? own = Environment.GetEnvironmentVariable("ENGINE_CACHE_DIR");
        if (!string.IsNullOrEmpty(own)) return own;
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (!string.IsNullOrEmpty(xdg) && Path.IsPathRooted(xdg)) return Path.Combine(xdg, "engine");
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (string.IsNullOrEmpty(home)) home = Path.GetTempPath();
        return Path.Combine(home, ".cache", "engine");
    }

    /// <summary>True when ENGINE_SYSINFO_QUICK=1 asks every measurement to be a quick one (tests, fuzzing).</summary>
    public static bool QuickFromEnvironment => Environment.GetEnvironmentVariable("ENGINE_SYSINFO_QUICK") == "1";

    /// <summary>The cache file of this machine: sysinfo-{cpu model}-{cores}c-{isa}[-quick].json.</summary>
    public static string CacheFile(string folder, bool quick)
    {
        var slug = new StringBuilder();
        foreach (char ch in CpuModelName().ToLowerInvariant())
            slug.Append(char.IsAsciiLetterOrDigit(ch) ? ch : '-');
        string s = string.Join('-', slug.ToString().Split('-', StringSplitOptions.RemoveEmptyEntries));
        if (s.Length > 80) s = s[..80];
        return Path.Combine(folder, $"sysinfo-{s}-{Environment.ProcessorCount}c-{VectorIsa().Isa}{(quick ? "-quick" : "")}.json");
    }

    /// <summary>
    /// The cached figures of this machine, or a new measurement (written to the cache) when there are none, the file
    /// does not parse or does not match this machine, or <paramref name="refresh"/> is set.
    /// </summary>
    public static (MachinePeak Peak, string File, bool FromCache) Load(string? folder = null, bool refresh = false, bool? quick = null)
    {
        bool q = quick ?? QuickFromEnvironment;
        folder ??= DefaultCacheFolder();
        string file = CacheFile(folder, q);
        if (!refresh && TryRead(file) is { } cached) return (cached, file, true);
        var peak = Measure(q);
        try
        {
            Directory.CreateDirectory(folder);
            string tmp = file + "." + Environment.ProcessId + ".tmp";
            File.WriteAllText(tmp, peak.ToJson());
            File.Move(tmp, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // an unwritable cache folder costs a re-measurement next time, nothing else
        }
        return (peak, file, false);
    }

    /// <summary>The figures of a cache file, or null when it is missing, malformed or from another machine.</summary>
    public static MachinePeak? TryRead(string file)
    {
        try
        {
            if (!File.Exists(file)) return null;
            using var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            var r = doc.RootElement;
            var p = new MachinePeak
            {
                CpuModel = r.GetProperty("cpu_model").GetString()!,
                Cores = r.GetProperty("cores").GetInt32(),
                Isa = r.GetProperty("isa").GetString()!,
                VectorBits = r.GetProperty("vector_bits").GetInt32(),
                FlopsPerCore = r.GetProperty("flops_per_second_per_core").GetDouble(),
                FlopsAllCores = r.GetProperty("flops_per_second_all_cores").GetDouble(),
                ReadBytesPerCore = r.GetProperty("read_bytes_per_second_per_core").GetDouble(),
                ReadBytesAllCores = r.GetProperty("read_bytes_per_second_all_cores").GetDouble(),
                BufferBytes = r.GetProperty("buffer_bytes").GetInt64(),
                CacheBytes = r.GetProperty("cache_bytes").GetInt64(),
                Quick = r.GetProperty("quick").GetBoolean(),
                MeasuredUtc = r.GetProperty("measured_utc").GetString()!,
                MeasureSeconds = r.GetProperty("measure_seconds").GetDouble(),
            };
            bool sane = p.FlopsPerCore > 0 && p.FlopsAllCores > 0 && p.ReadBytesPerCore > 0 && p.ReadBytesAllCores > 0
                        && double.IsFinite(p.FlopsAllCores) && double.IsFinite(p.ReadBytesAllCores);
            return sane && p.CpuModel == CpuModelName() && p.Cores == Environment.ProcessorCount && p.Isa == VectorIsa().Isa ? p : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null;
        }
    }

    public string ToJson()
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            WriteFields(w);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>The figures as JSON fields (the cache file's and `engine sysinfo --json`'s).</summary>
    public void WriteFields(Utf8JsonWriter w)
    {
        w.WriteString("cpu_model", CpuModel);
        w.WriteNumber("cores", Cores);
        w.WriteString("isa", Isa);
        w.WriteNumber("vector_bits", VectorBits);
        w.WriteNumber("flops_per_second_per_core", FlopsPerCore);
        w.WriteNumber("flops_per_second_all_cores", FlopsAllCores);
        w.WriteNumber("read_bytes_per_second_per_core", ReadBytesPerCore);
        w.WriteNumber("read_bytes_per_second_all_cores", ReadBytesAllCores);
        w.WriteNumber("buffer_bytes", BufferBytes);
        w.WriteNumber("cache_bytes", CacheBytes);
        w.WriteBoolean("quick", Quick);
        w.WriteString("measured_utc", MeasuredUtc);
        w.WriteNumber("measure_seconds", MeasureSeconds);
    }

    // ---------------------------------------------------------------- measurement

    /// <summary>
    /// Measures now. Full: FMA rounds of ~20 ms (best of 12, one core and all cores), a buffer of 4x the last-level
    /// cache (256 MiB .. 2 GiB, at most a quarter of the available memory) read 12 times. Quick: ~0.5 ms rounds and an
    /// 8 MiB buffer (a few milliseconds in all; its bandwidth is likely the cache's).
    /// </summary>
    public static MachinePeak Measure(bool quick = false)
    {
        long start = Stopwatch.GetTimestamp();
        int cores = Environment.ProcessorCount;
        var (isa, bits) = VectorIsa();
        // many short rounds, best one: on a shared machine some round usually runs undisturbed
        int rounds = quick ? 2 : 12;
        double roundSeconds = quick ? 0.0005 : 0.02;

        long iters = CalibrateFma(roundSeconds);
        double flopsPerIter = FmaFlopsPerIteration(bits);
        double best1 = BestSeconds(1, rounds, _ => Fma(iters));
        double bestN = BestSeconds(cores, rounds, _ => Fma(iters));

        long llc = LastLevelCacheBytes();
        long bytes = quick ? 8L << 20 : Math.Clamp(4 * llc, 256L << 20, 2L << 30);
        long avail = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (!quick && avail > 0) bytes = Math.Max(64L << 20, Math.Min(bytes, avail / 4));
        bytes -= bytes % ((long)cores * 256);
        double bw1, bwN;
        unsafe
        {
            float* buf = (float*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            if (buf == null) throw new OutOfMemoryException($"sysinfo: cannot allocate {bytes} bytes for the bandwidth test");
            try
            {
                long floats = bytes / sizeof(float);
                long slice = floats / cores;
                BestSeconds(cores, 1, id => Fill(buf + id * slice, slice));                       // touch every page
                Read(buf, floats);                                                                  // warm the TLB
                bw1 = bytes / BestSeconds(1, rounds, _ => Read(buf, floats));
                bwN = bytes / BestSeconds(cores, rounds, id => Read(buf + id * slice, slice));
            }
            finally { NativeMemory.AlignedFree(buf); }
        }
        return new MachinePeak
        {
            CpuModel = CpuModelName(), Cores = cores, Isa = isa, VectorBits = bits,
            FlopsPerCore = iters * flopsPerIter / best1,
            FlopsAllCores = cores * iters * flopsPerIter / bestN,
            ReadBytesPerCore = bw1, ReadBytesAllCores = bwN,
            BufferBytes = bytes, CacheBytes = llc, Quick = quick,
            MeasuredUtc = DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ"),
            MeasureSeconds = Stopwatch.GetElapsedTime(start).TotalSeconds,
        };
    }

    /// <summary>Largest cache the OS reports (Linux sysfs), in bytes; 0 when unknown.</summary>
    static long LastLevelCacheBytes()
    {
        long best = 0;
        try
        {
            const string dir = "/sys/devices/system/cpu/cpu0/cache";
            if (!Directory.Exists(dir)) return 0;
            foreach (var index in Directory.GetDirectories(dir, "index*"))
            {
                string f = Path.Combine(index, "size");
                if (!File.Exists(f)) continue;
                string s = File.ReadAllText(f).Trim();
                long mult = s.EndsWith('K') ? 1024 : s.EndsWith('M') ? 1024 * 1024 : s.EndsWith('G') ? 1L << 30 : 1;
                if (long.TryParse(s.TrimEnd('K', 'M', 'G'), out long v)) best = Math.Max(best, v * mult);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return best;
    }

    /// <summary>
    /// Runs <paramref name="body"/>(thread id) on <paramref name="threads"/> threads at once, <paramref name="rounds"/>
    /// times; the shortest round's wall time. The calling thread is thread 0, so no thread only waits.
    /// </summary>
    static double BestSeconds(int threads, int rounds, Action<long> body)
    {
        double best = double.MaxValue;
        if (threads == 1)
        {
            for (int r = 0; r < rounds; r++)
            {
                long t0 = Stopwatch.GetTimestamp();
                body(0);
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return best;
        }
        using var barrier = new Barrier(threads);
        var workers = new Thread[threads - 1];
        for (int i = 0; i < workers.Length; i++)
        {
            long id = i + 1;
            workers[i] = new Thread(() =>
            {
                for (int r = 0; r < rounds; r++) { barrier.SignalAndWait(); body(id); barrier.SignalAndWait(); }
            }) { IsBackground = true, Name = "sysinfo" };
            workers[i].Start();
        }
        for (int r = 0; r < rounds; r++)
        {
            barrier.SignalAndWait();
            long t0 = Stopwatch.GetTimestamp();
            body(0);
            barrier.SignalAndWait();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        foreach (var t in workers) t.Join();
        return best;
    }

    const int Chains = 12;   // independent FMA chains: enough to hide a 4-cycle latency on two FMA ports

    static double FmaFlopsPerIteration(int bits) => 2.0 * Chains * (bits / 32);

    /// <summary>Iterations of <see cref="Fma"/> that take about <paramref name="seconds"/> on one core.</summary>
    static long CalibrateFma(double seconds)
    {
        long n = 1024;
        while (true)
        {
            long t0 = Stopwatch.GetTimestamp();
            Fma(n);
            double s = Stopwatch.GetElapsedTime(t0).TotalSeconds;
            if (s >= seconds / 4 || n > 1L << 34) return Math.Max(1024, (long)(n * seconds / Math.Max(s, 1e-9)));
            n *= 4;
        }
    }

    static float _sink;

    /// <summary><paramref name="n"/> iterations of <see cref="Chains"/> independent FMAs on the widest vectors.</summary>
    static void Fma(long n)
    {
        float r = VectorIsa().Bits switch { 512 => Fma512(n), 256 => Fma256(n), 128 => Fma128(n), _ => FmaScalar(n) };
        _sink += r;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Fma512(long n)
    {
        var a = Vector512.Create(0.9999999f); var b = Vector512.Create(1e-7f);
        Vector512<float> x0 = Vector512.Create(1.0f), x1 = Vector512.Create(1.1f), x2 = Vector512.Create(1.2f), x3 = Vector512.Create(1.3f),
            x4 = Vector512.Create(1.4f), x5 = Vector512.Create(1.5f), x6 = Vector512.Create(1.6f), x7 = Vector512.Create(1.7f),
            x8 = Vector512.Create(1.8f), x9 = Vector512.Create(1.9f), x10 = Vector512.Create(2.0f), x11 = Vector512.Create(2.1f);
        for (long i = 0; i < n; i++)
        {
            x0 = Vector512.FusedMultiplyAdd(x0, a, b); x1 = Vector512.FusedMultiplyAdd(x1, a, b); x2 = Vector512.FusedMultiplyAdd(x2, a, b);
            x3 = Vector512.FusedMultiplyAdd(x3, a, b); x4 = Vector512.FusedMultiplyAdd(x4, a, b); x5 = Vector512.FusedMultiplyAdd(x5, a, b);
            x6 = Vector512.FusedMultiplyAdd(x6, a, b); x7 = Vector512.FusedMultiplyAdd(x7, a, b); x8 = Vector512.FusedMultiplyAdd(x8, a, b);
            x9 = Vector512.FusedMultiplyAdd(x9, a, b); x10 = Vector512.FusedMultiplyAdd(x10, a, b); x11 = Vector512.FusedMultiplyAdd(x11, a, b);
        }
        return Vector512.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Fma256(long n)
    {
        var a = Vector256.Create(0.9999999f); var b = Vector256.Create(1e-7f);
        Vector256<float> x0 = Vector256.Create(1.0f), x1 = Vector256.Create(1.1f), x2 = Vector256.Create(1.2f), x3 = Vector256.Create(1.3f),
            x4 = Vector256.Create(1.4f), x5 = Vector256.Create(1.5f), x6 = Vector256.Create(1.6f), x7 = Vector256.Create(1.7f),
            x8 = Vector256.Create(1.8f), x9 = Vector256.Create(1.9f), x10 = Vector256.Create(2.0f), x11 = Vector256.Create(2.1f);
        for (long i = 0; i < n; i++)
        {
            x0 = Vector256.FusedMultiplyAdd(x0, a, b); x1 = Vector256.FusedMultiplyAdd(x1, a, b); x2 = Vector256.FusedMultiplyAdd(x2, a, b);
            x3 = Vector256.FusedMultiplyAdd(x3, a, b); x4 = Vector256.FusedMultiplyAdd(x4, a, b); x5 = Vector256.FusedMultiplyAdd(x5, a, b);
            x6 = Vector256.FusedMultiplyAdd(x6, a, b); x7 = Vector256.FusedMultiplyAdd(x7, a, b); x8 = Vector256.FusedMultiplyAdd(x8, a, b);
            x9 = Vector256.FusedMultiplyAdd(x9, a, b); x10 = Vector256.FusedMultiplyAdd(x10, a, b); x11 = Vector256.FusedMultiplyAdd(x11, a, b);
        }
        return Vector256.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Fma128(long n)
    {
        // without hardware FMA (SSE only) the multiply and add are separate instructions: still 2 FLOPs per lane
        var a = Vector128.Create(0.9999999f); var b = Vector128.Create(1e-7f);
        Vector128<float> x0 = Vector128.Create(1.0f), x1 = Vector128.Create(1.1f), x2 = Vector128.Create(1.2f), x3 = Vector128.Create(1.3f),
            x4 = Vector128.Create(1.4f), x5 = Vector128.Create(1.5f), x6 = Vector128.Create(1.6f), x7 = Vector128.Create(1.7f),
            x8 = Vector128.Create(1.8f), x9 = Vector128.Create(1.9f), x10 = Vector128.Create(2.0f), x11 = Vector128.Create(2.1f);
        bool fma = System.Runtime.Intrinsics.X86.Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported;
        for (long i = 0; i < n; i++)
        {
            if (fma)
            {
                x0 = Vector128.FusedMultiplyAdd(x0, a, b); x1 = Vector128.FusedMultiplyAdd(x1, a, b); x2 = Vector128.FusedMultiplyAdd(x2, a, b);
                x3 = Vector128.FusedMultiplyAdd(x3, a, b); x4 = Vector128.FusedMultiplyAdd(x4, a, b); x5 = Vector128.FusedMultiplyAdd(x5, a, b);
                x6 = Vector128.FusedMultiplyAdd(x6, a, b); x7 = Vector128.FusedMultiplyAdd(x7, a, b); x8 = Vector128.FusedMultiplyAdd(x8, a, b);
                x9 = Vector128.FusedMultiplyAdd(x9, a, b); x10 = Vector128.FusedMultiplyAdd(x10, a, b); x11 = Vector128.FusedMultiplyAdd(x11, a, b);
            }
            else
            {
                x0 = x0 * a + b; x1 = x1 * a + b; x2 = x2 * a + b; x3 = x3 * a + b; x4 = x4 * a + b; x5 = x5 * a + b;
                x6 = x6 * a + b; x7 = x7 * a + b; x8 = x8 * a + b; x9 = x9 * a + b; x10 = x10 * a + b; x11 = x11 * a + b;
            }
        }
        return Vector128.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float FmaScalar(long n)
    {
        float a = 0.9999999f, b = 1e-7f;
        float x0 = 1.0f, x1 = 1.1f, x2 = 1.2f, x3 = 1.3f, x4 = 1.4f, x5 = 1.5f, x6 = 1.6f, x7 = 1.7f, x8 = 1.8f, x9 = 1.9f, x10 = 2.0f, x11 = 2.1f;
        for (long i = 0; i < n; i++)
        {
            x0 = x0 * a + b; x1 = x1 * a + b; x2 = x2 * a + b; x3 = x3 * a + b; x4 = x4 * a + b; x5 = x5 * a + b;
            x6 = x6 * a + b; x7 = x7 * a + b; x8 = x8 * a + b; x9 = x9 * a + b; x10 = x10 * a + b; x11 = x11 * a + b;
        }
        return x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11;
    }

    static unsafe void Fill(float* p, long n)
    {
        for (long i = 0; i < n; i += int.MaxValue / 2)
            new Span<float>(p + i, (int)Math.Min(int.MaxValue / 2, n - i)).Fill(1f);
    }

    /// <summary>A streaming sum of <paramref name="n"/> floats (a multiple of 64) with four vector accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void Read(float* p, long n)
    {
        float r;
        if (Vector512.IsHardwareAccelerated)
        {
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (long i = 0; i + 64 <= n; i += 64)
            {
                s0 += Vector512.LoadAligned(p + i); s1 += Vector512.LoadAligned(p + i + 16);
                s2 += Vector512.LoadAligned(p + i + 32); s3 += Vector512.LoadAligned(p + i + 48);
            }
            r = Vector512.Sum(s0 + s1 + s2 + s3);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (long i = 0; i + 32 <= n; i += 32)
            {
                s0 += Vector256.LoadAligned(p + i); s1 += Vector256.LoadAligned(p + i + 8);
                s2 += Vector256.LoadAligned(p + i + 16); s3 += Vector256.LoadAligned(p + i + 24);
            }
            r = Vector256.Sum(s0 + s1 + s2 + s3);
        }
        else
        {
            Vector128<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (long i = 0; i + 16 <= n; i += 16)
            {
                s0 += Vector128.Load(p + i); s1 += Vector128.Load(p + i + 4);
                s2 += Vector128.Load(p + i + 8); s3 += Vector128.Load(p + i + 12);
            }
            r = Vector128.Sum(s0 + s1 + s2 + s3);
        }
        _sink += r;
    }
}
