using System.Globalization;

namespace Engine.Runtime;

/// <summary>
/// Where a running model's memory is: the weights mapped from their files (counted once, shared with the page cache),
/// the session's arena (activations and KV cache), the managed heap, and what the OS counts as resident (Linux
/// /proc/self/status: RssFile = file pages touched, i.e. the mapped weights that were read; RssAnon = private memory,
/// i.e. arena, heap and runtime). With zero-copy loading RssFile ≈ mapped weights and RssAnon ≈ arena + runtime; a
/// copy of the weights would show up in RssAnon and the managed heap.
/// </summary>
public sealed record MemoryReport(long MappedWeightBytes, long ArenaBytes, long ManagedHeapBytes, long? ResidentBytes, long? ResidentFileBytes, long? ResidentAnonBytes)
{
    /// <summary>Reads the figures now (after a run, so that the weights have been touched).</summary>
    public static MemoryReport Measure(Model model, Session session)
    {
        var (rss, file, anon) = ReadProcStatus();
        return new MemoryReport(model.MappedBytes, session.ArenaBytes, GC.GetTotalMemory(false), rss, file, anon);
    }

    static (long?, long?, long?) ReadProcStatus()
    {
        const string path = "/proc/self/status";
        if (!File.Exists(path)) return (null, null, null);
        long? rss = null, file = null, anon = null;
        foreach (var line in File.ReadLines(path))
        {
            static long? Kb(string l)
            {
                var parts = l.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return parts.Length >= 2 && long.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) ? v * 1024 : null;
            }
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kb(line);
            else if (line.StartsWith("RssFile:", StringComparison.Ordinal)) file = Kb(line);
            else if (line.StartsWith("RssAnon:", StringComparison.Ordinal)) anon = Kb(line);
        }
        return (rss, file, anon);
    }

    /// <summary>Lines for a person: "name  MiB".</summary>
    public IEnumerable<string> Lines()
    {
        static string Mib(long? b) => b is long v ? string.Create(CultureInfo.InvariantCulture, $"{v / 1048576.0,9:F1} MiB") : "      n/a";
        yield return $"mapped weights   {Mib(MappedWeightBytes)}";
        yield return $"arena + KV cache {Mib(ArenaBytes)}";
        yield return $"managed heap     {Mib(ManagedHeapBytes)}";
        yield return $"resident (RSS)   {Mib(ResidentBytes)}  = file-backed {Mib(ResidentFileBytes).Trim()} (the mapped weights read) + private {Mib(ResidentAnonBytes).Trim()} (arena, heap, runtime)";
    }
}
