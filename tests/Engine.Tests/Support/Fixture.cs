using System.Text.Json;
using Engine.Loader;

namespace Engine.Tests.Support;

/// <summary>A reference fixture: model folder + expected.json + activations.safetensors (+ noise.safetensors).</summary>
public sealed class Fixture : IDisposable
{
    public string Name { get; }
    public string Folder { get; }
    public JsonElement Expected { get; }
    readonly JsonDocument _doc;
    readonly SafeTensorFile _acts;

    public Fixture(string name)
    {
        Name = name;
        Folder = TestPaths.Fixture(name);
        _doc = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(Folder, "expected.json")));
        Expected = _doc.RootElement;
        _acts = SafeTensorFile.Open(Path.Combine(Folder, "activations.safetensors"));
    }

    public IEnumerable<JsonElement> Prompts => Expected.GetProperty("prompts").EnumerateArray();
    public JsonElement Interp => Expected.GetProperty("interp");

    public bool HasActivation(string key) => _acts.Contains(key);
    public IEnumerable<string> ActivationKeys => _acts.Tensors.Keys;

    public (float[] Data, long[] Shape) Activation(string key)
    {
        var v = _acts.View(key);
        return (v.ToFloatArray(), v.Shape);
    }

    public static int[] Ints(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt32()).ToArray();
    public static double[] Doubles(JsonElement e) => Flatten(e).ToArray();

    public static IEnumerable<double> Flatten(JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.Array) { foreach (var x in e.EnumerateArray()) foreach (var y in Flatten(x)) yield return y; }
        else yield return e.ValueKind == JsonValueKind.String ? double.Parse(e.GetString()!, System.Globalization.CultureInfo.InvariantCulture) : e.GetDouble();
    }

    public void Dispose()
    {
        _acts.Dispose();
        _doc.Dispose();
    }
}

public static class Compare
{
    /// <summary>Largest |a - b| over finite pairs; a non-finite value must be matched exactly (NaN with NaN, -inf with -inf).</summary>
    public static double MaxAbsDiff(ReadOnlySpan<float> got, ReadOnlySpan<double> want, out int worst)
    {
        if (got.Length != want.Length) throw new Xunit.Sdk.XunitException($"length {got.Length} != expected {want.Length}");
        double max = 0; worst = -1;
        for (int i = 0; i < got.Length; i++)
        {
            double g = got[i], w = want[i];
            if (!double.IsFinite(w) || !double.IsFinite(g))
            {
                if (!(g.Equals(w))) { worst = i; return double.PositiveInfinity; }
                continue;
            }
            double d = Math.Abs(g - w);
            if (d > max) { max = d; worst = i; }
        }
        return max;
    }

    public static double MaxAbsDiff(ReadOnlySpan<float> got, ReadOnlySpan<float> want, out int worst)
    {
        var w = new double[want.Length];
        for (int i = 0; i < w.Length; i++) w[i] = want[i];
        return MaxAbsDiff(got, w, out worst);
    }

    public static double MaxAbs(ReadOnlySpan<double> x)
    {
        double m = 0;
        foreach (var v in x) if (double.IsFinite(v)) m = Math.Max(m, Math.Abs(v));
        return m;
    }

    /// <summary>Asserts got ≈ want within atol * max(1, max|want| / scaleRef): absolute for ordinary magnitudes, relative for large ones.</summary>
    public static void Close(ReadOnlySpan<float> got, ReadOnlySpan<double> want, double atol, string what, double scaleRef = 10)
    {
        double tol = atol * Math.Max(1, MaxAbs(want) / scaleRef);
        double d = MaxAbsDiff(got, want, out int i);
        if (!(d <= tol))
            throw new Xunit.Sdk.XunitException($"{what}: max |diff| {d:E3} > {tol:E1} at index {i} (got {(i >= 0 ? got[i] : float.NaN)}, want {(i >= 0 ? want[i] : double.NaN)})");
    }

    public static void Close(ReadOnlySpan<float> got, ReadOnlySpan<float> want, double atol, string what, double scaleRef = 10)
    {
        var w = new double[want.Length];
        for (int i = 0; i < w.Length; i++) w[i] = want[i];
        Close(got, w, atol, what, scaleRef);
    }
}
