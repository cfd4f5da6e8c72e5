using System.Text;
using System.Text.Json.Nodes;
using Engine.Loader;
using Engine.Tests.Support;
using Xunit.Abstractions;

namespace Engine.Tests.Robustness;

/// <summary>
/// Outcome bookkeeping of a fuzz run: every case must either succeed or end in an accepted exception (an
/// <see cref="EngineException"/> subclass with a one-line message); anything else is recorded as a failure with the
/// case that caused it. The counts are printed to the test output and appended to <see cref="FuzzLog.File"/>.
/// </summary>
internal sealed class FuzzOutcomes(string parser)
{
    public string Parser { get; } = parser;
    public int Cases { get; private set; }
    public int Succeeded { get; private set; }
    public int Rejected { get; private set; }
    public readonly Dictionary<string, int> ByType = [];
    public readonly List<string> Failures = [];
    TimeSpan _acceptedTime, _rejectedTime;

    /// <summary>Runs one case; <paramref name="describe"/> is only called when the case fails.</summary>
    public void Run(Func<string> describe, Action action, Func<Exception, string?>? check = null)
    {
        Cases++;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            action();
            Succeeded++;
            _acceptedTime += System.Diagnostics.Stopwatch.GetElapsedTime(t0);
        }
        catch (Exception e)
        {
            string? why = e is EngineException ? check?.Invoke(e) ?? OneLine(e) : $"unexpected {e.GetType().Name}: {e.Message}";
            if (why != null)
            {
                if (Failures.Count < 20) Failures.Add($"{why}\n    case: {Short(describe())}\n    {e.GetType().Name}: {Short(e.ToString())}");
                return;
            }
            Rejected++;
            _rejectedTime += System.Diagnostics.Stopwatch.GetElapsedTime(t0);
            string key = e.GetType().Name;
            ByType[key] = ByType.GetValueOrDefault(key) + 1;
        }
    }

    /// <summary>Null when the message is one line naming something; else why not.</summary>
    public static string? OneLine(Exception e)
    {
        if (string.IsNullOrWhiteSpace(e.Message)) return "empty message";
        if (e.Message.Contains('\n') || e.Message.Contains('\r')) return "message is not one line";
        return null;
    }

    static string Short(string s) => s.Length <= 600 ? s : s[..600] + "...";

    public string Summary() =>
        $"{Parser}: {Cases} cases, {Succeeded} accepted, {Rejected} rejected with a typed error ({string.Join(", ", ByType.OrderBy(k => k.Key).Select(k => $"{k.Key} {k.Value}"))}), {Failures.Count} failures; {_acceptedTime.TotalSeconds:F1} s in accepted cases, {_rejectedTime.TotalSeconds:F1} s in rejected ones";

    /// <summary>Prints the counts and fails the test if any case failed.</summary>
    public void Report(ITestOutputHelper output, int minimumCases)
    {
        string s = Summary();
        output.WriteLine(s);
        FuzzLog.Append(s);
        if (Failures.Count > 0) throw new Xunit.Sdk.XunitException(s + "\n" + string.Join("\n", Failures));
        if (Cases < minimumCases) throw new Xunit.Sdk.XunitException($"{Parser}: only {Cases} cases run (at least {minimumCases} expected)");
    }
}

/// <summary>The fuzz counts of the last test run: TestResults/fuzz-counts.txt at the repository root (printed by .ci/run).</summary>
internal static class FuzzLog
{
    static readonly object Gate = new();
    static bool _started;
    public static string File => Path.Combine(TestPaths.RepoRoot, "TestResults", "fuzz-counts.txt");

    /// <summary>ENGINE_FUZZ_SCALE (default 1) multiplies every fuzz test's case count: 10 for a longer local run.</summary>
    public static double Scale =>
        double.TryParse(Environment.GetEnvironmentVariable("ENGINE_FUZZ_SCALE"), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var s) && s > 0 ? s : 1;

    public static int Scaled(int cases) => Math.Max(1, (int)(cases * Scale));

    public static void Append(string line)
    {
        lock (Gate)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(File)!);
            if (!_started) { System.IO.File.WriteAllText(File, $"# fuzz cases of the test run started {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss}Z\n"); _started = true; }
            System.IO.File.AppendAllText(File, line + "\n");
        }
    }
}

/// <summary>Mutations of bytes, text and JSON, driven by a seeded <see cref="Random"/> (the same cases every run).</summary>
internal static class Mutate
{
    static readonly byte[] Interesting = [0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0xC0, 0xED, (byte)'"', (byte)'{', (byte)'}', (byte)'[', (byte)']', (byte)',', (byte)':', (byte)'-', (byte)'9', (byte)'e', (byte)'\\', (byte)' '];

    /// <summary>One to four byte-level mutations: bit flips, interesting bytes, insertions, deletions, truncation, duplication.</summary>
    public static byte[] Bytes(byte[] data, Random r)
    {
        var d = new List<byte>(data);
        int n = 1 + r.Next(4);
        for (int k = 0; k < n; k++)
        {
            int len = d.Count;
            switch (r.Next(8))
            {
                case 0 when len > 0: { int i = r.Next(len); d[i] ^= (byte)(1 << r.Next(8)); break; }
                case 1 when len > 0: d[r.Next(len)] = Interesting[r.Next(Interesting.Length)]; break;
                case 2: { int i = r.Next(len + 1); int m = 1 + r.Next(8); for (int j = 0; j < m; j++) d.Insert(i, r.Next(3) == 0 ? Interesting[r.Next(Interesting.Length)] : (byte)r.Next(256)); break; }
                case 3 when len > 0: { int i = r.Next(len); d.RemoveRange(i, Math.Min(len - i, 1 + r.Next(16))); break; }
                case 4 when len > 0: { int i = r.Next(len); d.RemoveRange(i, len - i); break; }
                case 5 when len > 1: { int i = r.Next(len), m = Math.Min(len - i, 1 + r.Next(32)); d.InsertRange(r.Next(len), d.GetRange(i, m)); break; }
                case 6 when len > 0: { int i = r.Next(len); d[i] = (byte)(d[i] + r.Next(-3, 4)); break; }
                default: if (len > 0) d[r.Next(len)] = (byte)r.Next(256); break;
            }
        }
        return d.ToArray();
    }

    /// <summary>A random JSON value of the kinds that break typed readers.</summary>
    public static JsonNode? Value(Random r, int depth = 0)
    {
        switch (r.Next(depth > 2 ? 12 : 15))
        {
            case 0: return JsonValue.Create(r.Next(-5, 5));
            case 1: return JsonValue.Create(int.MaxValue);
            case 2: return JsonValue.Create(long.MaxValue);
            case 3: return JsonNode.Parse("1e308");
            case 4: return JsonNode.Parse("18446744073709551616");
            case 5: return JsonValue.Create(-1);
            case 6: return JsonValue.Create(r.NextDouble() * 10 - 5);
            case 7: return JsonValue.Create(Text(r));
            case 8: return null;
            case 9: return JsonValue.Create(r.Next(2) == 0);
            case 10: return JsonValue.Create(r.Next(0, 100_000));
            case 11: return JsonNode.Parse("-0.0");
            case 12: { var a = new JsonArray(); int n = r.Next(4); for (int i = 0; i < n; i++) a.Add(Value(r, depth + 1)); return a; }
            case 13: { var o = new JsonObject(); int n = r.Next(3); for (int i = 0; i < n; i++) o[Text(r) + i] = Value(r, depth + 1); return o; }
            default: return JsonValue.Create(1 << r.Next(31));
        }
    }

    /// <summary>Short random text: ASCII, unicode, control characters, lone surrogates.</summary>
    public static string Text(Random r)
    {
        int n = r.Next(8);
        var sb = new StringBuilder();
        for (int i = 0; i < n; i++)
            sb.Append(r.Next(10) switch
            {
                0 => '\0', 1 => '\uD800', 2 => 'é', 3 => '▁', 4 => ' ', 5 => '"', 6 => '\n', _ => (char)('a' + r.Next(26)),
            });
        return sb.ToString();
    }

    /// <summary>A structural mutation of a JSON document: replace, delete or add members and elements at any depth.</summary>
    public static string Json(string json, Random r)
    {
        var root = JsonNode.Parse(json)!;
        int n = 1 + r.Next(3);
        for (int k = 0; k < n; k++)
        {
            var all = new List<JsonNode>();
            Collect(root, all);
            var target = all[r.Next(all.Count)];
            switch (target)
            {
                case JsonObject o when o.Count > 0 && r.Next(3) == 0:
                    o.Remove(o.ElementAt(r.Next(o.Count)).Key);
                    break;
                case JsonObject o when r.Next(2) == 0 && o.Count > 0:
                {
                    string key = o.ElementAt(r.Next(o.Count)).Key;
                    o[key] = Value(r);
                    break;
                }
                case JsonObject o:
                    o["k" + r.Next(1000)] = Value(r);
                    break;
                case JsonArray a when a.Count > 0 && r.Next(2) == 0:
                    a[r.Next(a.Count)] = Value(r);
                    break;
                case JsonArray a when a.Count > 0 && r.Next(2) == 0:
                    a.RemoveAt(r.Next(a.Count));
                    break;
                case JsonArray a:
                    a.Add(Value(r));
                    break;
                default:
                {
                    var parent = target.Parent;
                    if (parent is JsonObject po) po[target.GetPropertyName()] = Value(r);
                    else if (parent is JsonArray pa) pa[target.GetElementIndex()] = Value(r);
                    break;
                }
            }
        }
        return root.ToJsonString();
    }

    static void Collect(JsonNode? n, List<JsonNode> all)
    {
        if (n == null) return;
        all.Add(n);
        if (n is JsonObject o) foreach (var kv in o) Collect(kv.Value, all);
        else if (n is JsonArray a) foreach (var x in a) Collect(x, all);
    }

    /// <summary>Nested arrays or objects deeper than any parser limit.</summary>
    public static string Deep(Random r, int depth)
    {
        bool obj = r.Next(2) == 0;
        var sb = new StringBuilder();
        for (int i = 0; i < depth; i++) sb.Append(obj ? "{\"a\":" : "[");
        sb.Append('1');
        for (int i = 0; i < depth; i++) sb.Append(obj ? '}' : ']');
        return sb.ToString();
    }
}
