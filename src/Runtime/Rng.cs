namespace Engine.Runtime;

/// <summary>
/// SplitMix64 with Box–Muller normals: the same numbers on every machine and .NET version, so a recipe and a seed give
/// the same data and the same initial weights everywhere.
/// </summary>
public sealed class Rng(ulong seed)
{
    ulong _state = seed;
    double? _spare;

    public ulong NextUInt64()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in (0, 1).</summary>
    public double Uniform() => ((NextUInt64() >> 11) + 0.5) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, n).</summary>
    public int Next(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        return (int)((NextUInt64() >> 1) % (ulong)n);
    }

    /// <summary>Uniform integer in [lo, hi].</summary>
    public int Between(int lo, int hi) => lo + Next(hi - lo + 1);

    public double Normal()
    {
        if (_spare is double s) { _spare = null; return s; }
        double u = Uniform(), v = Uniform();
        double r = Math.Sqrt(-2 * Math.Log(u));
        _spare = r * Math.Sin(2 * Math.PI * v);
        return r * Math.Cos(2 * Math.PI * v);
    }

    /// <summary>Fisher–Yates shuffle in place.</summary>
    public void Shuffle<T>(IList<T> list)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }

    /// <summary>A derived generator (independent stream) for a named purpose.</summary>
    public static Rng Derive(ulong seed, string purpose)
    {
        ulong h = 1469598103934665603UL;
        foreach (char c in purpose) { h ^= c; h *= 1099511628211UL; }
        return new Rng(seed * 0x9E3779B97F4A7C15UL ^ h);
    }
}
