namespace Engine.Kernels.Profiling;

/// <summary>One row of a profile table: an op at a shape (or the unaccounted remainder) with its rates and roofline.</summary>
public sealed record ProfileRow(
    string Op, string? Role, string Shape, long Calls, double Seconds, double Share, double Flops, double Bytes,
    double FlopsPerSecond, double BytesPerSecond, double? RooflineFraction, string? Bound)
{
    public const string OtherName = "other (hooks, host)";
}

/// <summary>The table of one phase: its wall time, the ops' rows sorted by time, and the remainder.</summary>
public sealed record PhaseReport(string Phase, int Passes, int Tokens, double WallSeconds, double OpSeconds, IReadOnlyList<ProfileRow> Rows, ProfileRow Other)
{
    /// <summary>Sum of the ops' times over the wall time (1 when everything is accounted for).</summary>
    public double Coverage => WallSeconds > 0 ? OpSeconds / WallSeconds : 0;
}

/// <summary>
/// Turns an <see cref="OpProfile"/> into per-phase tables against a roofline: for each (op, shape), GFLOP/s, GB/s and
/// the fraction of what the machine allows for the op's arithmetic intensity, min(peak FLOP/s, intensity x bandwidth)
/// (ops without FLOPs: the fraction of the bandwidth).
/// </summary>
public static class ProfileReport
{
    /// <param name="profile">The recorded profile (passes marked with <see cref="OpProfile.Pass"/>).</param>
    /// <param name="peakFlops">Peak FLOP/s for the threads the backend used (null: no roofline, e.g. a GPU).</param>
    /// <param name="peakBytes">Read bandwidth for those threads, bytes/s.</param>
    public static IReadOnlyList<PhaseReport> Build(OpProfile profile, double? peakFlops, double? peakBytes)
    {
        var phases = new List<PhaseReport>();
        foreach (string phase in profile.Passes.Select(p => p.Phase).Distinct())
        {
            double wall = profile.WallSeconds(phase);
            var rows = profile.Stats.Where(s => s.Phase == phase)
                .Select(s => Row(s.Op, s.Role, s.Shape, s.Calls, s.Seconds, s.Flops, s.Bytes, wall, peakFlops, peakBytes))
                .OrderByDescending(r => r.Seconds).ThenBy(r => r.Op, StringComparer.Ordinal).ThenBy(r => r.Shape, StringComparer.Ordinal).ToList();
            double ops = rows.Sum(r => r.Seconds);
            var passes = profile.Passes.Where(p => p.Phase == phase).ToList();
            var other = new ProfileRow(ProfileRow.OtherName, null, "", passes.Count, wall - ops, wall > 0 ? (wall - ops) / wall : 0, 0, 0, 0, 0, null, null);
            phases.Add(new PhaseReport(phase, passes.Count, passes.Sum(p => p.Tokens), wall, ops, rows, other));
        }
        return phases;
    }

    static ProfileRow Row(string op, string? role, string shape, long calls, double seconds, double flops, double bytes, double wall,
        double? peakFlops, double? peakBytes)
    {
        double fps = seconds > 0 ? flops / seconds : 0, bps = seconds > 0 ? bytes / seconds : 0;
        double? fraction = null;
        string? bound = null;
        if (peakFlops is double pf && peakBytes is double pb && pf > 0 && pb > 0 && seconds > 0)
        {
            if (flops > 0 && bytes > 0)
            {
                double attainable = Math.Min(pf, flops / bytes * pb);
                fraction = fps / attainable;
                bound = pf <= flops / bytes * pb ? "compute" : "memory";
            }
            else if (bytes > 0) { fraction = bps / pb; bound = "memory"; }
            else if (flops > 0) { fraction = fps / pf; bound = "compute"; }
        }
        return new ProfileRow(op, role, shape, calls, seconds, wall > 0 ? seconds / wall : 0, flops, bytes, fps, bps, fraction, bound);
    }
}
