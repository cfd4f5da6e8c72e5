using System.Diagnostics;

namespace Engine.Peers;

/// <summary>
/// How busy the rest of the machine is: CPU time used by other processes (total busy time from /proc/stat minus this
/// process's time from /proc/self/stat and its watched worker processes' from /proc/PID/stat), in cores, over an interval. On a 2-core machine a run measured while another
/// process took most of a core is not comparable; the harness records this figure per run and retries noisy rounds.
/// </summary>
public static class Noise
{
    public readonly record struct Mark(long TotalBusyTicks, long SelfTicks, long Timestamp);

    static readonly double TicksPerSecond = 100.0;   // USER_HZ on Linux

    public static bool Available { get; } = File.Exists("/proc/stat") && File.Exists("/proc/self/stat");

    static readonly List<int> s_watched = [];

    /// <summary>Counts a worker process (<see cref="Peers.ChildProcess"/>) as part of this run, not as another process.</summary>
    public static void Watch(int pid) { lock (s_watched) s_watched.Add(pid); }
    public static void Unwatch(int pid) { lock (s_watched) s_watched.Remove(pid); }

    /// <summary>utime + stime (fields 14, 15) of /proc/PID/stat; 0 when the process is gone.</summary>
    static long ProcessTicks(string statPath)
    {
        string s;
        try { s = File.ReadAllText(statPath); }
        catch (IOException) { return 0; }
        var rest = s[(s.LastIndexOf(')') + 2)..].Split(' ');
        return long.Parse(rest[11]) + long.Parse(rest[12]);
    }

    public static Mark Now()
    {
        if (!Available) return new Mark(0, 0, Stopwatch.GetTimestamp());
        long busy = 0;
        using (var r = new StreamReader("/proc/stat"))
        {
            var line = r.ReadLine()!;                                   // cpu user nice system idle iowait irq softirq steal ...
            var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            for (int i = 1; i < f.Length && i <= 8; i++)
                if (i != 4 && i != 5) busy += long.Parse(f[i]);           // everything but idle and iowait
        }
        long self = ProcessTicks("/proc/self/stat");
        lock (s_watched) foreach (int pid in s_watched) self += ProcessTicks($"/proc/{pid}/stat");
        return new Mark(busy, self, Stopwatch.GetTimestamp());
    }

    /// <summary>Cores used by other processes between two marks (0 when /proc is missing or the interval is too short).</summary>
    public static double OthersCores(Mark a, Mark b)
    {
        double secs = (b.Timestamp - a.Timestamp) / (double)Stopwatch.Frequency;
        if (!Available || secs < 0.02) return 0;
        double others = (b.TotalBusyTicks - a.TotalBusyTicks - (b.SelfTicks - a.SelfTicks)) / TicksPerSecond;
        return Math.Max(0, others / secs);
    }

    /// <summary>Waits (at most <paramref name="maxSeconds"/>) until other processes use under <paramref name="cores"/> cores over 0.5 s.</summary>
    public static (bool Quiet, double Waited, double Last) WaitQuiet(double cores, double maxSeconds)
    {
        var sw = Stopwatch.StartNew();
        double last = 0;
        while (true)
        {
            var a = Now();
            Thread.Sleep(500);
            last = OthersCores(a, Now());
            if (last < cores) return (true, sw.Elapsed.TotalSeconds, last);
            if (sw.Elapsed.TotalSeconds >= maxSeconds) return (false, sw.Elapsed.TotalSeconds, last);
        }
    }
}
