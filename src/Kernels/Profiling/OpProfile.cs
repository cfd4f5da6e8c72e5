using System.Diagnostics;
using System.Text.Json;
using Engine.Loader;

namespace Engine.Kernels.Profiling;

/// <summary>The ops a profile tells apart (the ops of <see cref="IBackend"/>, plus its copies and synchronisation).</summary>
public enum OpKind : byte
{
    Embedding, TableRows, MatMul, LayerNorm, RmsNorm, Rope, SplitQkv,
    AttentionScores, AttentionSoftmax, AttentionMix, Attention,
    Activation, GatedActivation, Add, Scale, Copy, Upload, Download, Synchronize,
}

/// <summary>
/// One op call as a value: its kind and up to six integers that fix its shape (no strings, no allocation per call).
/// MatMul: A rows, B in, C out, D dtype, E input-major, F weight role. Attention ops: A rows, B keys, C heads, D kv
/// heads, E head size. Norms: A rows, B dim. Rope: A rows, B heads, C head size, D rotary dim. Activations: A length,
/// D activation kind. Copies, add, scale: A floats. Embedding, table rows: A rows, B width, D dtype.
/// </summary>
public readonly record struct OpCall(OpKind Kind, int A = 0, int B = 0, int C = 0, int D = 0, int E = 0, int F = 0)
{
    public bool IsAttention => Kind is OpKind.AttentionScores or OpKind.AttentionSoftmax or OpKind.AttentionMix or OpKind.Attention;

    public string Name => Kind switch
    {
        OpKind.Embedding => "embedding",
        OpKind.TableRows => "pos_embedding",
        OpKind.MatMul => "matmul",
        OpKind.LayerNorm => "layernorm",
        OpKind.RmsNorm => "rmsnorm",
        OpKind.Rope => "rope",
        OpKind.SplitQkv => "split_qkv",
        OpKind.AttentionScores => "attn.scores",
        OpKind.AttentionSoftmax => "attn.softmax",
        OpKind.AttentionMix => "attn.mix",
        OpKind.Attention => "attention",
        OpKind.Activation => "act." + (ActivationKind)D,
        OpKind.GatedActivation => "gated." + (ActivationKind)D,
        OpKind.Add => "add",
        OpKind.Scale => "scale",
        OpKind.Copy => "copy",
        OpKind.Upload => "upload",
        OpKind.Download => "download",
        _ => "synchronize",
    };

    /// <summary>The shape as text; <paramref name="keysTo"/> &gt; B gives attention a range of key counts (decode steps).</summary>
    public string Shape(int keysTo = 0) => Kind switch
    {
        OpKind.MatMul => $"[{A}x{B}]x[{B}x{C}] {((DType)D).Name()}{(E != 0 ? " in-major" : "")}",
        _ when IsAttention => $"T={A} Tk={B}{(keysTo > B ? ".." + keysTo : "")} H={C}/{D} d={E}",
        OpKind.LayerNorm or OpKind.RmsNorm => $"[{A}x{B}]",
        OpKind.Rope => $"[{A}x{B}x{C}] rot={D}",
        OpKind.SplitQkv => $"[{A}x{B}] H={C}/{D} d={E}",
        OpKind.Embedding or OpKind.TableRows => $"[{A}x{B}] {((DType)D).Name()}",
        OpKind.Synchronize => "",
        _ => $"[{A}]",
    };

    static double AttnFlops(double rows, double keys, double heads, double d) =>
        2.0 * heads * d * (rows * (keys - rows) + rows * (rows + 1) / 2.0);   // causal: row t sees pos0 + t + 1 keys

    /// <summary>Floating-point operations of the call (multiply-add = 2).</summary>
    public double Flops => Kind switch
    {
        OpKind.MatMul => 2.0 * A * B * C,
        OpKind.LayerNorm => 7.0 * A * B,
        OpKind.RmsNorm => 4.0 * A * B,
        OpKind.Rope => 3.0 * A * B * D,
        OpKind.AttentionScores or OpKind.AttentionMix => AttnFlops(A, B, C, E),
        OpKind.Attention => 2 * AttnFlops(A, B, C, E),
        OpKind.AttentionSoftmax => 3.0 * C * A * B,
        OpKind.Activation => 8.0 * A,
        OpKind.GatedActivation => 9.0 * A,
        OpKind.Add or OpKind.Scale => A,
        _ => 0,
    };

    /// <summary>Bytes the call must move at least (weights in their stored dtype, activations as float32).</summary>
    public double Bytes => Kind switch
    {
        OpKind.MatMul => (double)B * C * ((DType)D).Size() + 4.0 * A * (B + C),
        OpKind.LayerNorm or OpKind.RmsNorm => 8.0 * A * B,
        OpKind.Rope => 8.0 * A * B * C,
        OpKind.SplitQkv => 8.0 * A * B,
        OpKind.AttentionScores => 4.0 * (A * C * E + (double)B * D * E + (double)C * A * B),
        OpKind.AttentionSoftmax => 8.0 * C * A * B,
        OpKind.AttentionMix => 4.0 * ((double)C * A * B + (double)B * D * E + A * C * E),
        OpKind.Attention => 4.0 * (2.0 * A * C * E + 2.0 * B * D * E),
        OpKind.Activation => 8.0 * A,
        OpKind.GatedActivation => 12.0 * A,
        OpKind.Add => 12.0 * A,
        OpKind.Scale or OpKind.Copy => 8.0 * A,
        OpKind.Upload or OpKind.Download => 4.0 * A,
        OpKind.Embedding or OpKind.TableRows => A * (double)B * (4 + ((DType)D).Size()),
        _ => 0,
    };

    public static OpCall MatMul(int rows, Linear w, int role) => new(OpKind.MatMul, rows, w.In, w.Out, (int)w.DType, w.InputMajor ? 1 : 0, role);
    public static OpCall Attn(OpKind kind, in AttentionShape s) => new(kind, s.Rows, s.Keys, s.Heads, s.KvHeads, s.HeadDim);
}

/// <summary>One line of a profile: an op at one shape in one phase, its calls, time, FLOPs and bytes.</summary>
public sealed class OpStat
{
    public required string Phase { get; init; }
    public required string Op { get; init; }
    /// <summary>What the op works on, where known: the weight's name with layer numbers as '*' for a matmul.</summary>
    public string? Role { get; init; }
    public required OpCall Call { get; init; }
    public long Calls;
    public long Ticks;
    public double Flops;
    public double Bytes;
    /// <summary>Largest key count seen (attention in decode: one line covers every step's cache length).</summary>
    public int KeysTo;
    public string Shape => Call.Shape(KeysTo);
    public double Seconds => Ticks / (double)Stopwatch.Frequency;
}

/// <summary>A timed span on the trace's pass thread (a prefill, one decode step).</summary>
public readonly record struct PassSpan(string Name, string Phase, long StartTicks, long EndTicks, int Tokens);

/// <summary>A recorded op call of the trace.</summary>
public readonly record struct OpEvent(OpCall Call, int Phase, int Detail, long StartTicks, long EndTicks);

/// <summary>
/// What a profiling decorator records: per (phase, op, shape) totals and, with <see cref="Trace"/> on, every call as a
/// trace event. Recording a call costs two timestamps and one dictionary update on a struct key (no allocation once a
/// shape has been seen); the first call of each shape allocates its line.
/// </summary>
public sealed class OpProfile
{
    readonly Dictionary<(int Phase, OpCall Call), OpStat> _stats = new();
    readonly List<string> _phases = [""];
    readonly List<string> _details = [""];
    readonly Dictionary<object, (int, int)> _detailOf = new(ReferenceEqualityComparer.Instance);
    readonly List<string> _roles = [""];
    readonly Dictionary<string, int> _roleOf = new(StringComparer.Ordinal);
    int _phase;

    public bool Trace { get; set; }
    public List<OpEvent> Events { get; } = [];
    public List<PassSpan> Passes { get; } = [];
    /// <summary>Timestamp origin of the trace (set by <see cref="Clear"/>).</summary>
    public long OriginTicks { get; private set; } = Stopwatch.GetTimestamp();

    /// <summary>The phase calls are attributed to ("prefill", "decode", ...).</summary>
    public string Phase
    {
        get => _phases[_phase];
        set
        {
            int i = _phases.IndexOf(value);
            if (i < 0) { _phases.Add(value); i = _phases.Count - 1; }
            _phase = i;
        }
    }

    public IReadOnlyCollection<OpStat> Stats => _stats.Values;
    public IReadOnlyList<string> Phases => _phases;
    public string Detail(int i) => _details[i];

    public void Clear()
    {
        _stats.Clear(); Events.Clear(); Passes.Clear();
        OriginTicks = Stopwatch.GetTimestamp();
    }

    /// <summary>
    /// Small integers for a weight: its name (for trace events) and its role, the name with layer numbers replaced by
    /// '*' (all layers' q/k/v on one line). Looked up by reference, computed once per weight.
    /// </summary>
    public (int Detail, int Role) WeightIds(object weight, Func<object, string> name)
    {
        if (_detailOf.TryGetValue(weight, out var ids)) return ids;
        string n = name(weight);
        _details.Add(n);
        string role = LayerWildcard(n);
        if (!_roleOf.TryGetValue(role, out int r))
        {
            _roles.Add(role);
            _roleOf[role] = r = _roles.Count - 1;
        }
        return _detailOf[weight] = (_details.Count - 1, r);
    }

    static string LayerWildcard(string name)
    {
        var parts = name.Split('.');
        for (int i = 0; i < parts.Length; i++) if (parts[i].Length > 0 && parts[i].All(char.IsAsciiDigit)) parts[i] = "*";
        return string.Join('.', parts);
    }

    public void Record(in OpCall call, int detail, long t0, long t1)
    {
        // attention in decode: one line per (op, rows, heads, d), the key count ranges over the steps
        var key = call.IsAttention ? call with { B = 0 } : call;
        if (!_stats.TryGetValue((_phase, key), out var s))
        {
            s = new OpStat { Phase = _phases[_phase], Op = call.Name, Call = call, Role = call.F > 0 ? _roles[call.F] : null };
            _stats[(_phase, key)] = s;
        }
        s.Calls++; s.Ticks += t1 - t0; s.Flops += call.Flops; s.Bytes += call.Bytes;
        if (call.IsAttention && call.B > s.KeysTo) s.KeysTo = call.B;
        if (Trace) Events.Add(new OpEvent(call, _phase, detail, t0, t1));
    }

    /// <summary>Marks a timed pass (its wall time is what the ops of its phase are compared with).</summary>
    public void Pass(string name, long t0, long t1, int tokens) => Passes.Add(new PassSpan(name, Phase, t0, t1, tokens));

    /// <summary>Sum of the passes' wall times of one phase, in seconds.</summary>
    public double WallSeconds(string phase) => Passes.Where(p => p.Phase == phase).Sum(p => (double)(p.EndTicks - p.StartTicks)) / Stopwatch.Frequency;

    /// <summary>Sum of the ops' times of one phase, in seconds.</summary>
    public double OpSeconds(string phase) => _stats.Values.Where(s => s.Phase == phase).Sum(s => s.Seconds);

    double Micros(long ticks) => Math.Round((ticks - OriginTicks) * 1e6 / Stopwatch.Frequency, 3);

    /// <summary>
    /// Writes the Chrome / Perfetto trace-event JSON (object form): complete events ("ph": "X", ts and dur in
    /// microseconds). Thread 1 holds the passes (prefill, decode steps), thread 2 the ops, which never overlap on it;
    /// an op's args carry its shape, phase, FLOPs and bytes.
    /// </summary>
    public void WriteTrace(Utf8JsonWriter w, string processName, IReadOnlyDictionary<string, string>? metadata = null)
    {
        const int pid = 1, passTid = 1, opTid = 2;
        w.WriteStartObject();
        w.WriteString("displayTimeUnit", "ms");
        if (metadata != null)
        {
            w.WriteStartObject("otherData");
            foreach (var (k, v) in metadata) w.WriteString(k, v);
            w.WriteEndObject();
        }
        w.WriteStartArray("traceEvents");
        void Meta(string name, int tid, string value)
        {
            w.WriteStartObject();
            w.WriteString("name", name); w.WriteString("ph", "M"); w.WriteNumber("pid", pid); w.WriteNumber("tid", tid);
            w.WriteStartObject("args"); w.WriteString("name", value); w.WriteEndObject();
            w.WriteEndObject();
        }
        Meta("process_name", 0, processName);
        Meta("thread_name", passTid, "passes");
        Meta("thread_name", opTid, "ops");
        // rounded ends never pass the next start: ts = round(start), dur = round(end) - round(start)
        foreach (var p in Passes)
        {
            double ts = Micros(p.StartTicks), end = Micros(p.EndTicks);
            w.WriteStartObject();
            w.WriteString("name", p.Name); w.WriteString("cat", p.Phase); w.WriteString("ph", "X");
            w.WriteNumber("ts", ts); w.WriteNumber("dur", Math.Round(end - ts, 3));
            w.WriteNumber("pid", pid); w.WriteNumber("tid", passTid);
            w.WriteStartObject("args"); w.WriteNumber("tokens", p.Tokens); w.WriteEndObject();
            w.WriteEndObject();
        }
        foreach (var e in Events)
        {
            double ts = Micros(e.StartTicks), end = Micros(e.EndTicks);
            w.WriteStartObject();
            w.WriteString("name", e.Call.Name); w.WriteString("cat", _phases[e.Phase]); w.WriteString("ph", "X");
            w.WriteNumber("ts", ts); w.WriteNumber("dur", Math.Round(end - ts, 3));
            w.WriteNumber("pid", pid); w.WriteNumber("tid", opTid);
            w.WriteStartObject("args");
            w.WriteString("shape", e.Call.Shape());
            if (e.Detail > 0) w.WriteString("tensor", _details[e.Detail]);
            w.WriteString("phase", _phases[e.Phase]);
            w.WriteNumber("flops", e.Call.Flops);
            w.WriteNumber("bytes", e.Call.Bytes);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
