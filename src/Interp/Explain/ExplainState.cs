using System.Text.Json;
using Engine.Loader;

namespace Engine.Interp.Explain;

/// <summary>
/// The resumable state of a corpus pass: windows done, each feature's top list and statistics. Saved as JSON with
/// round-trip numbers (floats as float, sums as double), so a resumed run continues exactly where the saved one was.
/// </summary>
internal sealed class ExplainState
{
    internal sealed record Entry(int Window, int MaxPosition, float Value, float[] Activations);

    public string Fingerprint { get; }
    public int WindowsDone { get; set; }
    public List<Entry>[] Top { get; }
    readonly long[] _positions, _positive;
    readonly double[] _sum, _sumSq;
    readonly float[] _max, _min;

    public ExplainState(string fingerprint, int features)
    {
        Fingerprint = fingerprint;
        Top = Enumerable.Range(0, features).Select(_ => new List<Entry>()).ToArray();
        _positions = new long[features]; _positive = new long[features];
        _sum = new double[features]; _sumSq = new double[features];
        _max = Enumerable.Repeat(float.NegativeInfinity, features).ToArray();
        _min = Enumerable.Repeat(float.PositiveInfinity, features).ToArray();
    }

    public FeatureStats Stats(int i) => new(_positions[i], _sum[i], _sumSq[i], _positive[i], _max[i], _min[i]);

    /// <summary>Adds one window's activations of feature i (positions from t0 on; before t0: an added BOS).</summary>
    public void Add(int i, int window, ReadOnlySpan<float> acts, int t0, int top)
    {
        int best = -1;
        float bestValue = float.NegativeInfinity;
        for (int t = t0; t < acts.Length; t++)
        {
            float a = acts[t];
            if (float.IsNaN(a)) continue;
            _positions[i]++;
            _sum[i] += a;
            _sumSq[i] += (double)a * a;
            if (a > 0) _positive[i]++;
            if (a > _max[i]) _max[i] = a;
            if (a < _min[i]) _min[i] = a;
            if (best < 0 || a > bestValue) { best = t; bestValue = a; }
        }
        if (best < 0) return;
        var list = Top[i];
        // order: value descending, then window ascending (windows arrive in ascending order, so a tie never displaces)
        if (list.Count == top && !(bestValue > list[^1].Value)) return;
        var acts2 = acts.ToArray();
        for (int t = 0; t < t0; t++) acts2[t] = float.NaN;
        var e = new Entry(window, best, bestValue, acts2);
        int at = list.Count;
        while (at > 0 && bestValue > list[at - 1].Value) at--;
        list.Insert(at, e);
        if (list.Count > top) list.RemoveAt(list.Count - 1);
    }

    public void Save(string path)
    {
        AtomicFile.Write(path, stream =>
        {
            using var w = new Utf8JsonWriter(stream);
            w.WriteStartObject();
            w.WriteNumber("state_version", 1);
            w.WriteString("fingerprint", Fingerprint);
            w.WriteNumber("windows_done", WindowsDone);
            w.WriteStartArray("features");
            for (int i = 0; i < Top.Length; i++)
            {
                w.WriteStartObject();
                w.WriteNumber("positions", _positions[i]);
                w.WriteNumber("positive", _positive[i]);
                Num(w, "sum", _sum[i]);
                Num(w, "sum_squares", _sumSq[i]);
                Num(w, "max", _max[i]);
                Num(w, "min", _min[i]);
                w.WriteStartArray("top");
                foreach (var e in Top[i])
                {
                    w.WriteStartObject();
                    w.WriteNumber("window", e.Window);
                    w.WriteNumber("max_position", e.MaxPosition);
                    Num(w, "value", e.Value);
                    w.WriteStartArray("activations");
                    foreach (var a in e.Activations) NumValue(w, a);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        });
    }

    static void Num(Utf8JsonWriter w, string name, double v) { w.WritePropertyName(name); NumValue(w, v); }
    static void Num(Utf8JsonWriter w, string name, float v) { w.WritePropertyName(name); NumValue(w, v); }

    static void NumValue(Utf8JsonWriter w, double v)
    {
        if (double.IsFinite(v)) w.WriteNumberValue(v);
        else w.WriteStringValue(double.IsNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    }

    static void NumValue(Utf8JsonWriter w, float v)
    {
        if (float.IsFinite(v)) w.WriteNumberValue(v);
        else w.WriteStringValue(float.IsNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    }

    static double D(JsonElement e) => e.ValueKind == JsonValueKind.String
        ? e.GetString() switch { "NaN" => double.NaN, "Infinity" => double.PositiveInfinity, "-Infinity" => double.NegativeInfinity, var s => throw new FormatException(s) }
        : e.GetDouble();

    static float F(JsonElement e) => e.ValueKind == JsonValueKind.String ? (float)D(e) : e.GetSingle();

    public static ExplainState Load(string path, string fingerprint, int features)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            if (root.GetProperty("state_version").GetInt32() != 1) throw new UsageException($"--resume: '{path}' has an unknown state version");
            if (root.GetProperty("fingerprint").GetString() != fingerprint)
                throw new UsageException($"--resume: '{path}' was written for a different run (model, backend, corpus, --context, --top or features differ)");
            var s = new ExplainState(fingerprint, features) { WindowsDone = root.GetProperty("windows_done").GetInt32() };
            var fs = root.GetProperty("features");
            if (fs.GetArrayLength() != features) throw new UsageException($"--resume: '{path}' has {fs.GetArrayLength()} features, not {features}");
            int i = 0;
            foreach (var f in fs.EnumerateArray())
            {
                s._positions[i] = f.GetProperty("positions").GetInt64();
                s._positive[i] = f.GetProperty("positive").GetInt64();
                s._sum[i] = D(f.GetProperty("sum"));
                s._sumSq[i] = D(f.GetProperty("sum_squares"));
                s._max[i] = F(f.GetProperty("max"));
                s._min[i] = F(f.GetProperty("min"));
                foreach (var e in f.GetProperty("top").EnumerateArray())
                    s.Top[i].Add(new Entry(e.GetProperty("window").GetInt32(), e.GetProperty("max_position").GetInt32(), F(e.GetProperty("value")),
                        e.GetProperty("activations").EnumerateArray().Select(F).ToArray()));
                i++;
            }
            return s;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new UsageException($"--resume: '{path}' is not a readable explain state ({e.Message})");
        }
    }
}
