namespace Engine.Peers;

/// <summary>One timed figure of several peers: runs per peer, interleaved round by round.</summary>
public sealed class Figure
{
    public required string Kind { get; init; }             // "prefill" | "decode" | "matmul"
    public required int Tokens { get; init; }
    public Dictionary<string, List<double>> Runs { get; } = [];
    /// <summary>Cores used by other processes during each kept round.</summary>
    public List<double> RoundNoise { get; } = [];
    public int RoundsRun { get; set; }
    public int RoundsDiscarded { get; set; }
    public bool Noisy { get; set; }
    /// <summary>Seconds spent waiting for a quiet machine before the first round.</summary>
    public double WaitedSeconds { get; set; }

    public double Median(string peer) => Stats.Median(Runs[peer]);

    /// <summary>Median over rounds of (peer seconds / reference seconds) = reference speed / peer speed.</summary>
    public double PairedRatio(string reference, string peer)
    {
        var a = Runs[reference]; var b = Runs[peer];
        return Stats.Median(Enumerable.Range(0, Math.Min(a.Count, b.Count)).Select(i => b[i] / a[i]).ToList());
    }
}

public static class Stats
{
    public static double Median(IReadOnlyList<double> xs)
    {
        if (xs.Count == 0) return double.NaN;
        var s = xs.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}

/// <summary>
/// Interleaved timing: warm-up runs of every peer, then rounds in which every peer runs once (the order rotates from
/// round to round), with a pause between peers so that one library's spinning worker threads (OpenMP in llama.cpp,
/// ONNX Runtime's and OpenBLAS's pools) have gone to sleep before the next one starts. A round during which other
/// processes used more than <see cref="NoiseLimit"/> cores is discarded and run again (at most <see cref="MaxExtraRounds"/>
/// times per figure); when too many are noisy the figure keeps them and is flagged.
/// </summary>
public sealed class Harness(TextWriter log)
{
    public int Repeat { get; init; } = 5;
    public double NoiseLimit { get; init; } = 0.3;
    public int MaxExtraRounds { get; init; } = 10;
    public int PauseMs { get; init; } = 150;
    /// <summary>A timed run shorter than this (seconds) is run again right away and the second time kept.</summary>
    public double RepeatShorterThan { get; init; } = 0.5;
    public int WarmupRuns { get; init; } = 2;
    public double WarmupSeconds { get; init; } = 0.5;
    const int MaxWarmupRuns = 50;
    public double QuietWaitSeconds { get; init; } = 30;

    public Figure Measure(string kind, int tokens, IReadOnlyList<(string Peer, Func<double> Run)> peers)
    {
        var fig = new Figure { Kind = kind, Tokens = tokens };
        if (QuietWaitSeconds > 0)
        {
            var q = Noise.WaitQuiet(NoiseLimit, QuietWaitSeconds);
            fig.WaitedSeconds = q.Waited;
            if (!q.Quiet) log.Write('!');
        }
        // Warm-up: every peer runs at least WarmupRuns times and for WarmupSeconds of its own time (first-touch page
        // faults of weights and buffers, JIT tiers, library thread pools); a single run left the first figure of a
        // process 15-40% low (measured: the engine's 16-token prefill 361 → 431 tokens/s between the first figure and
        // the same figure measured again later in the same process).
        foreach (var (peer, run) in peers)
        {
            fig.Runs[peer] = [];
            Thread.Sleep(PauseMs);
            double spent = 0;
            for (int i = 0; i < MaxWarmupRuns && (i < WarmupRuns || spent < WarmupSeconds); i++) spent += run();
        }
        var noisy = new List<(double Noise, double[] Times)>();
        int round = 0;
        while (fig.RoundNoise.Count < Repeat && round < Repeat + MaxExtraRounds)
        {
            var times = new double[peers.Count];
            var a = Noise.Now();
            for (int j = 0; j < peers.Count; j++)
            {
                int p = (j + round) % peers.Count;
                Thread.Sleep(PauseMs);
                // After the pause the machine is cold again (this VM clocks down when idle: the from-memory
                // matrix-vector case measured 10-20 GB/s right after a 150 ms pause against 37-42 with none), so a
                // short run is timed a second time, back to back, as llama-bench repeats its runs.
                double t = peers[p].Run();
                if (t < RepeatShorterThan) t = peers[p].Run();
                times[p] = t;
            }
            double others = Noise.OthersCores(a, Noise.Now());
            round++;
            if (others > NoiseLimit)
            {
                noisy.Add((others, times)); fig.RoundsDiscarded++; log.Write('~');
                if (QuietWaitSeconds > 0) fig.WaitedSeconds += Noise.WaitQuiet(NoiseLimit, Math.Min(10, QuietWaitSeconds)).Waited;
                continue;
            }
            log.Write('.');
            fig.RoundNoise.Add(others);
            for (int p = 0; p < peers.Count; p++) fig.Runs[peers[p].Peer].Add(times[p]);
        }
        if (fig.RoundNoise.Count < Repeat)
        {
            // Not enough quiet rounds: fill up with the least noisy of the discarded ones, and say so.
            fig.Noisy = true;
            foreach (var (n, times) in noisy.OrderBy(x => x.Noise).Take(Repeat - fig.RoundNoise.Count))
            {
                fig.RoundNoise.Add(n);
                fig.RoundsDiscarded--;
                for (int p = 0; p < peers.Count; p++) fig.Runs[peers[p].Peer].Add(times[p]);
            }
        }
        fig.RoundsRun = round;
        return fig;
    }
}
