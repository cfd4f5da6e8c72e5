using Engine.Kernels.Profiling;

namespace Engine.Cli.Commands;

/// <summary>
/// engine sysinfo: the machine's measured peak FP32 FLOP/s and memory read bandwidth (one core, all cores), the
/// roofline of engine profile. Measured once (about two seconds) and cached under the user's cache folder.
/// </summary>
public static class SysinfoCommand
{
    public static CommandSpec Spec { get; } = new("sysinfo", "measured peak FLOP/s and memory bandwidth of this machine (cached; the roofline of engine profile)",
        "engine sysinfo [--refresh] [--quick] [--json]",
        [new("--refresh", "measure again and rewrite the cache file", IsFlag: true),
         new("--quick", "a short measurement (milliseconds; for tests, not for figures), cached apart from the full one (also ENGINE_SYSINFO_QUICK=1)", IsFlag: true),
         Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        bool quick = a.Flag("--quick") || MachinePeak.QuickFromEnvironment;
        var (peak, file, fromCache) = MachinePeak.Load(refresh: a.Flag("--refresh"), quick: quick);
        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.WriteNumber("schema_version", 1);
                w.WriteString("command", "sysinfo");
                peak.WriteFields(w);
                w.WriteString("cache_file", file);
                w.WriteBoolean("from_cache", fromCache);
                w.WriteEndObject();
            });
            return 0;
        }
        var o = a.Out;
        o.WriteLine($"cpu: {peak.CpuModel}, {peak.Cores} cores, {peak.Isa} ({peak.VectorBits}-bit FMA){(peak.Quick ? ", QUICK measurement" : "")}");
        o.WriteLine($"peak FP32 FMA:      {peak.FlopsPerCore / 1e9,8:F1} GFLOP/s per core   {peak.FlopsAllCores / 1e9,8:F1} GFLOP/s all cores");
        o.WriteLine($"memory read:        {peak.ReadBytesPerCore / 1e9,8:F1} GB/s per core      {peak.ReadBytesAllCores / 1e9,8:F1} GB/s all cores"
                    + $"   (buffer {peak.BufferBytes >> 20} MiB, last-level cache {(peak.CacheBytes > 0 ? (peak.CacheBytes >> 20) + " MiB" : "unknown")})");
        if (peak.Cores > 1 && peak.FlopsAllCores < 1.5 * peak.FlopsPerCore)
            o.WriteLine("note: all cores gave less than 1.5x one core: other processes were probably running (engine sysinfo --refresh on a quiet machine)");
        o.WriteLine($"{(fromCache ? "cached" : "measured")} {peak.MeasuredUtc} in {peak.MeasureSeconds:F2} s: {file}{(fromCache ? " (--refresh measures again)" : "")}");
        return 0;
    }
}
