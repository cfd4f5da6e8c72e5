// The machinery of the op grid (test-backend-ops style): deterministic inputs, fenced buffers, the error metric.
// No xunit here: tests/Engine.KernelCheck compiles this file too, to re-run the grid with instruction sets turned off.
using System.Globalization;
using System.Text;
using Engine.Kernels;

namespace Engine.Tests.Kernels;

/// <summary>What an input holds besides ordinary values.</summary>
public enum Values { Normal, Large, NonFinite }

/// <summary>Per-op error bounds: |got - ref| &lt;= Atol + Rtol |ref| per element, and NMSE = mse(got, ref) / mse(ref, 0) &lt;= MaxNmse.</summary>
public readonly record struct Tolerance(double Atol, double Rtol, double MaxNmse)
{
    public static readonly Tolerance Default = new(1e-5, 1e-5, 1e-9);
    /// <summary>Elementwise ops: NMSE is reported but not bounded (outputs near 0 make it meaningless).</summary>
    public static readonly Tolerance Elementwise = new(1e-5, 1e-5, double.PositiveInfinity);
    public static readonly Tolerance Exact = new(0, 0, 0);
}

/// <summary>SplitMix64 seeded with FNV-1a of the case name: every case gets the same inputs on every run and backend.</summary>
public sealed class CaseRandom
{
    ulong _s;

    public CaseRandom(string seed)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in seed) { h ^= c; h *= 1099511628211UL; }
        _s = h;
    }

    public ulong Next()
    {
        ulong z = _s += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));
    public int Int(int n) => (int)(Next() % (ulong)n);
    public float Uniform(float lo, float hi) => (float)(lo + (hi - lo) * NextDouble());

    public float Normal()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }

    public float[] Uniform(int n, float lo, float hi) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = Uniform(lo, hi); return a; }
    public float[] Normal(int n, float sigma = 1f, float mean = 0f) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = mean + sigma * Normal(); return a; }

    static readonly float[] LargeMagnitudes = [1e4f, 88.5f, 100f, 20f, 10f, 5f, 1e20f, 3e38f, float.MaxValue, 1e-30f, 1e-40f];

    /// <summary>Adds awkward values to a buffer: huge and tiny magnitudes (Large) or NaN/+inf/-inf (NonFinite), about every 4th element.</summary>
    public float[] Spice(float[] a, Values kind)
    {
        if (kind == Values.Normal) return a;
        for (int i = 0; i < a.Length; i++)
        {
            if (Int(4) != 0 && !(i == 0 && a.Length <= 3)) continue;   // short buffers still get one
            float sign = Int(2) == 0 ? 1f : -1f;
            a[i] = kind == Values.Large
                ? sign * LargeMagnitudes[Int(LargeMagnitudes.Length)]
                : Int(3) switch { 0 => float.NaN, 1 => float.PositiveInfinity, _ => float.NegativeInfinity };
        }
        return a;
    }
}

/// <summary>
/// A float buffer fenced by guard cells (BoundedMemory / ggml sentinels). Destinations: guards hold <see cref="Sentinel"/>
/// and are checked untouched after the op; the interior starts as a NaN <see cref="Poison"/> so an element the op forgets
/// to write fails the comparison. Inputs: guards hold NaN, so a read past either end poisons the result, and the whole
/// buffer is checked unchanged afterwards.
/// </summary>
public sealed class Buffer
{
    public const int Lead = 16, Tail = 16;
    public const float Sentinel = 12345.678f;
    public static readonly float Poison = BitConverter.Int32BitsToSingle(0x7FC0BEEF);

    readonly float[] _raw;
    readonly float[]? _snapshot;
    public string Name { get; }
    public int Length { get; }
    public bool IsInput => _snapshot != null;

    Buffer(string name, int length, float guard, ReadOnlySpan<float> init, float fill, bool input)
    {
        Name = name; Length = length;
        _raw = new float[Lead + length + Tail];
        _raw.AsSpan().Fill(guard);
        if (init.IsEmpty) Span.Fill(fill); else init.CopyTo(Span);
        if (input) _snapshot = (float[])_raw.Clone();
    }

    public static Buffer Output(string name, int length) => new(name, length, Sentinel, default, Poison, false);
    public static Buffer InPlace(string name, ReadOnlySpan<float> init) => new(name, init.Length, Sentinel, init, 0f, false);
    public static Buffer Input(string name, float[] data) => new(name, data.Length, float.NaN, data, 0f, true);

    public Span<float> Span => _raw.AsSpan(Lead, Length);

    /// <summary>Null when the guards are intact; else which guard cell was written.</summary>
    public string? GuardViolation()
    {
        int bits = BitConverter.SingleToInt32Bits(IsInput ? float.NaN : Sentinel);
        for (int i = 0; i < _raw.Length; i++)
        {
            if (i >= Lead && i < Lead + Length) continue;
            if (BitConverter.SingleToInt32Bits(_raw[i]) != bits)
                return i < Lead
                    ? $"'{Name}': lead guard written at index {i - Lead} (value {Fmt(_raw[i])})"
                    : $"'{Name}': tail guard written at index {i - Lead} = length + {i - Lead - Length} (value {Fmt(_raw[i])})";
        }
        return null;
    }

    /// <summary>Null when an input is bitwise unchanged.</summary>
    public string? InputModified()
    {
        if (_snapshot == null) return null;
        for (int i = Lead; i < Lead + Length; i++)
            if (BitConverter.SingleToInt32Bits(_raw[i]) != BitConverter.SingleToInt32Bits(_snapshot[i]))
                return $"input '{Name}' was modified at index {i - Lead} ({Fmt(_snapshot[i])} -> {Fmt(_raw[i])})";
        return GuardViolation();
    }

    public static string Fmt(float f) => f.ToString("G9", CultureInfo.InvariantCulture);
    public static string Fmt(double d) => d.ToString("G3", CultureInfo.InvariantCulture);
}

/// <summary>One prepared case: its inputs exist; Run computes the outputs on a backend into fresh fenced buffers.</summary>
public sealed class OpRun(Func<IKernels, Buffer[]> run, IReadOnlyList<Buffer> inputs, IDisposable? resources = null,
    Func<IKernels, Buffer[], string?>? invariant = null) : IDisposable
{
    public IReadOnlyList<Buffer> Inputs { get; } = inputs;
    public Buffer[] Run(IKernels k) => run(k);
    /// <summary>A backend-internal invariant (fused attention == its three steps: bitwise on the host backends, within the
    /// tolerance on ILGPU, see OpGrid.FusedAttentionIsOnline); null when it holds.</summary>
    public string? CheckInvariant(IKernels k, Buffer[] outputs) => invariant?.Invoke(k, outputs);
    public void Dispose() => resources?.Dispose();
}

/// <summary>One cell of the grid: an op with its shape, dtype and flags; ToString is its canonical name.</summary>
public abstract class OpCase
{
    public abstract string Op { get; }
    /// <summary>"rows=3,in=70,..." in a fixed order.</summary>
    public abstract string Vars { get; }
    public virtual Tolerance Tolerance => Tolerance.Default;
    /// <summary>Builds the inputs (deterministic from the name).</summary>
    public abstract OpRun Prepare();
    public sealed override string ToString() => $"{Op}({Vars})";
    protected CaseRandom Rng() => new(ToString());
    protected static string B(bool b) => b ? "true" : "false";
}

/// <summary>Compares outputs: tolerance plus NaN/inf parity (llm.c validate_result, ggml NMSE), or bitwise.</summary>
public static class Verdict
{
    public static string? Close(string what, ReadOnlySpan<float> want, ReadOnlySpan<float> got, Tolerance tol)
    {
        if (want.Length != got.Length) return $"{what}: length {got.Length} != reference {want.Length}";
        int bad = 0, maxAt = -1;
        double se = 0, sr = 0, maxErr = 0;
        var first = new StringBuilder();
        for (int i = 0; i < want.Length; i++)
        {
            float r = want[i], g = got[i];
            bool ok;
            string why = "";
            if (float.IsNaN(r)) { ok = float.IsNaN(g); why = " (NaN expected)"; }
            else if (float.IsInfinity(r)) { ok = g == r; why = " (inf sign)"; }
            else if (!float.IsFinite(g)) ok = false;
            else
            {
                double d = Math.Abs((double)g - r);
                se += d * d; sr += (double)r * r;
                if (d > maxErr) { maxErr = d; maxAt = i; }
                ok = d <= tol.Atol + tol.Rtol * Math.Abs(r);
                why = "";
            }
            if (!ok)
            {
                if (bad < 5) first.Append($" [{i}] ref={Buffer.Fmt(r)} got={Buffer.Fmt(g)}{why};");
                bad++;
            }
        }
        double nmse = sr > 0 ? se / sr : se > 0 ? double.PositiveInfinity : 0;
        if (bad == 0 && nmse <= tol.MaxNmse) return null;
        return $"{what}: {bad} of {want.Length} elements out of tolerance (atol={Buffer.Fmt(tol.Atol)}, rtol={Buffer.Fmt(tol.Rtol)}), " +
               $"max |err|={Buffer.Fmt(maxErr)} at [{maxAt}], NMSE={Buffer.Fmt(nmse)} (max {Buffer.Fmt(tol.MaxNmse)}); first mismatches:{first}";
    }

    public static string? Bitwise(string what, ReadOnlySpan<float> want, ReadOnlySpan<float> got)
    {
        if (want.Length != got.Length) return $"{what}: length {got.Length} != {want.Length}";
        int bad = 0;
        var first = new StringBuilder();
        for (int i = 0; i < want.Length; i++)
            if (BitConverter.SingleToInt32Bits(want[i]) != BitConverter.SingleToInt32Bits(got[i]))
            {
                if (bad < 5) first.Append($" [{i}] {Buffer.Fmt(want[i])} vs {Buffer.Fmt(got[i])};");
                bad++;
            }
        return bad == 0 ? null : $"{what}: {bad} of {want.Length} elements not bit-identical; first:{first}";
    }
}
