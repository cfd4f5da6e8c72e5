using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// An edit of the forward pass at one tap, registered on a session as a scoped hook (<see cref="Register"/> returns the
/// handle; dispose it to remove the edit). Works for full runs and for generation through the KV cache: positions are
/// absolute (tap.Pos0 + row). Positions below <see cref="PromptLength"/> are the prompt; later ones are generated tokens,
/// edited only with <see cref="AlsoGenerated"/>. <see cref="Positions"/> null = every prompt position.
/// <para>
/// An edit with a device form (<see cref="HasDeviceForm"/>: scale/set, steering) registers as an intervention resolved
/// per call (<see cref="Blocks"/>), so on a GPU backend it runs as a kernel and its tap is not copied to the host; on
/// the CPU backends it is the same float arithmetic as its host hook. Others (the direction edit, which needs a per-row
/// dot product) register as host hooks.
/// </para>
/// </summary>
public abstract class Intervention
{
    public required HookKind Kind { get; init; }
    public required int Layer { get; init; }
    /// <summary>Absolute positions to edit (null: all prompt positions).</summary>
    public IReadOnlyCollection<int>? Positions { get; init; }
    /// <summary>Length of the prompt; null: every position counts as a prompt position.</summary>
    public int? PromptLength { get; init; }
    /// <summary>Keep editing the positions of generated tokens.</summary>
    public bool AlsoGenerated { get; init; }

    public string HookName => HookPoints.Name(Kind, Layer);

    /// <summary>Whether the edit applies at absolute position p.</summary>
    public bool AppliesAt(int p)
    {
        bool generated = PromptLength is int n && p >= n;
        if (generated) return AlsoGenerated;
        return Positions == null || Positions.Contains(p);
    }

    /// <summary>Registers the edit on the session; dispose the handle to remove it.</summary>
    public IDisposable Register(Session session)
    {
        Validate(session.Config);
        return HasDeviceForm ? session.Hooks.AddIntervention(Kind, Layer, Blocks) : session.Hooks.Add(Kind, Layer, Apply);
    }

    /// <summary>Whether the edit is a set of <see cref="DeviceIntervention"/> blocks per call (<see cref="Blocks"/>).</summary>
    public virtual bool HasDeviceForm => false;

    /// <summary>The edit of one call of its tap as intervention blocks (only when <see cref="HasDeviceForm"/>).</summary>
    public virtual IReadOnlyList<DeviceIntervention> Blocks(TapCall call) =>
        throw new NotSupportedException($"{GetType().Name} has no device form");

    /// <summary>Applies <see cref="Blocks"/> of the tap's call to the tap (their host definition).</summary>
    protected void ApplyBlocks(Tap tap)
    {
        var call = TapCall.Of(tap);
        int rows = call.Rows, cols = call.Cols;
        foreach (var b in Blocks(call)) b.ApplyHost(tap.Data, rows, cols);
    }

    /// <summary>Registers several edits; one handle removes them all.</summary>
    public static IDisposable RegisterAll(Session session, IEnumerable<Intervention> edits)
    {
        var handles = new List<IDisposable>();
        try
        {
            foreach (var e in edits) handles.Add(e.Register(session));
        }
        catch
        {
            foreach (var h in handles) h.Dispose();
            throw;
        }
        return new Scope(handles);
    }

    sealed class Scope(List<IDisposable> handles) : IDisposable
    {
        public void Dispose() { foreach (var h in handles) h.Dispose(); handles.Clear(); }
    }

    protected virtual void Validate(ModelConfig c)
    {
        new TapSelection(Kind, Layer).Validate(c, "--hook");
    }

    /// <summary>Edits the tap in place.</summary>
    public abstract void Apply(Tap tap);

    /// <summary>One line saying what the edit does.</summary>
    public abstract string Describe();

    protected string Where()
    {
        string pos = Positions == null ? "all prompt positions" : "positions " + string.Join(",", Positions.Order());
        return pos + (AlsoGenerated ? " and generated tokens" : "");
    }
}

/// <summary>
/// Scales (x ← s·x) or sets (x ← v) a tap or one index of it: a head of a per-head tap (z, q, k, v, pattern), a column of
/// a [T, X] tap (an MLP neuron of mlp.hook_post, ...). Scaling multiplies the value the run carries at the hook, which is
/// the clean value when nothing upstream was edited (the circuit-tracing convention: −2 × the clean activation).
/// </summary>
public sealed class ScaleIntervention : Intervention
{
    /// <summary>Head (per-head taps) or column ([T, X] taps); null = the whole row.</summary>
    public int? Index { get; init; }
    /// <summary>x ← Scale · x (when <see cref="SetTo"/> is null).</summary>
    public double Scale { get; init; } = 1;
    /// <summary>x ← SetTo.</summary>
    public double? SetTo { get; init; }

    public static ScaleIntervention Neuron(int layer, int index, double? scale = null, double? set = null) =>
        new() { Kind = HookKind.MlpPost, Layer = layer, Index = index, Scale = scale ?? 1, SetTo = set };

    public static ScaleIntervention Head(int layer, int head, double? scale = null, double? set = null) =>
        new() { Kind = HookKind.Z, Layer = layer, Index = head, Scale = scale ?? 1, SetTo = set };

    TapSelection Selection => new(Kind, Layer, Index);

    protected override void Validate(ModelConfig c) => Selection.Validate(c, "--hook");

    public override bool HasDeviceForm => true;

    /// <summary>
    /// Scale: x ← (float)Scale · x; set: x ← (float)SetTo (0 as a zeroing block), on every selected segment of the call
    /// (a head or a column of each selected row, or whole rows).
    /// </summary>
    public override IReadOnlyList<DeviceIntervention> Blocks(TapCall call)
    {
        float s = (float)Scale;
        float v = (float)(SetTo ?? 0);
        bool set = SetTo != null, zero = set && BitConverter.SingleToInt32Bits(v) == 0;
        int cols = call.Cols;
        var list = new BlockList();
        foreach (var (o, len, _) in Selection.Segments(call.Shape, call.Pos0, AppliesAt))
        {
            int row = o / cols, col = o % cols;
            if (!set) list.Piece(InterventionOp.Scale, row, col, len, alpha: s);
            else if (zero) list.Piece(InterventionOp.Zero, row, col, len);
            else list.Piece(InterventionOp.Set, row, col, len, Fill(len, v), 0, 0);
        }
        return list;
    }

    // The value of a set, as one array reused by every call (a device backend uploads it once); grown by doubling.
    float[] _fill = [];
    float[] Fill(int n, float v)
    {
        if (_fill.Length < n || BitConverter.SingleToInt32Bits(_fill[0]) != BitConverter.SingleToInt32Bits(v))
        {
            _fill = new float[Math.Max(n, 2 * _fill.Length)];
            Array.Fill(_fill, v);
        }
        return _fill;
    }

    public override void Apply(Tap tap) => ApplyBlocks(tap);

    public override string Describe()
    {
        string what = Selection.Label;
        return SetTo is double v ? $"set {what} to {v} at {Where()}" : $"scale {what} by {Scale} at {Where()}";
    }
}

/// <summary>
/// Scales the component of a d_model-wide tap (residual stream, attn_out, mlp_out, embeddings) along a direction d:
/// x ← x + (s − 1)(x·d̂)d̂, or sets it: x ← x + (v − x·d̂)d̂ (SPEC "Interventions"). d̂ = d / |d|.
/// A host hook (no device form): the per-row projection x·d̂ (in double) is no <see cref="DeviceIntervention"/> block, so
/// on a GPU backend its tap is copied to the host and back.
/// </summary>
public sealed class DirectionIntervention : Intervention
{
    public required float[] Direction { get; init; }
    public double Scale { get; init; } = 1;
    public double? SetTo { get; init; }

    double[]? _unit;
    double[] Unit
    {
        get
        {
            if (_unit != null) return _unit;
            double norm = Math.Sqrt(Direction.Sum(x => (double)x * x));
            if (!(norm > 0) || !double.IsFinite(norm)) throw new UsageException("--direction: the direction has zero (or non-finite) length");
            return _unit = Direction.Select(x => x / norm).ToArray();
        }
    }

    protected override void Validate(ModelConfig c)
    {
        base.Validate(c);
        var shape = HookPoints.Shape(c, Kind, 1, 1);
        if (shape.Rank != 2 || shape.D1 != c.DModel)
            throw new UsageException($"--direction: {HookName} is not a d_model-wide tap (use a residual tap such as blocks.L.hook_resid_pre)");
        if (Direction.Length != c.DModel)
            throw new UsageException($"--direction: the direction has {Direction.Length} values, d_model is {c.DModel}");
        _ = Unit;
    }

    public override void Apply(Tap tap)
    {
        var u = Unit;
        int D = u.Length;
        for (int t = 0; t < tap.Shape.D0; t++)
        {
            if (!AppliesAt(tap.Pos0 + t)) continue;
            var x = tap.Data.Slice(t * D, D);
            double proj = 0;
            for (int j = 0; j < D; j++) proj += x[j] * u[j];
            double coef = SetTo is double v ? v - proj : (Scale - 1) * proj;
            if (coef == 0) continue;                 // exactly no change (keeps the run bit-identical)
            for (int j = 0; j < D; j++) x[j] = (float)(x[j] + coef * u[j]);
        }
    }

    public override string Describe() =>
        SetTo is double v ? $"set the component of {HookName} along the direction to {v} at {Where()}"
                          : $"scale the component of {HookName} along the direction by {Scale} at {Where()}";
}

/// <summary>Adds coef × vector to a d_model-wide tap (activation steering / activation addition).</summary>
public sealed class SteeringIntervention : Intervention
{
    public required float[] Vector { get; init; }
    public double Coefficient { get; init; } = 1;

    protected override void Validate(ModelConfig c)
    {
        base.Validate(c);
        var shape = HookPoints.Shape(c, Kind, 1, 1);
        if (shape.Rank != 2 || shape.D1 != c.DModel)
            throw new UsageException($"--layer: {HookName} is not a d_model-wide tap");
        if (Vector.Length != c.DModel) throw new UsageException($"steering vector has {Vector.Length} values, d_model is {c.DModel}");
    }

    public override bool HasDeviceForm => true;

    /// <summary>x ← x + (float)Coefficient · v on every selected row (one Add block per run of consecutive rows).</summary>
    public override IReadOnlyList<DeviceIntervention> Blocks(TapCall call)
    {
        var list = new BlockList();
        if (Coefficient == 0) return list;           // adding 0 · v is no change; skip it so the run stays bit-identical
        int D = Vector.Length;
        float coef = (float)Coefficient;
        for (int t = 0; t < call.Shape.D0; t++)
            if (AppliesAt(call.Pos0 + t)) list.Piece(InterventionOp.Add, t, 0, D, Vector, 0, 0, coef);
        return list;
    }

    public override void Apply(Tap tap) => ApplyBlocks(tap);

    public override string Describe() => $"add {Coefficient} × steering vector to {HookName} at {Where()}";
}

/// <summary>How a steering vector pools the positions of each prompt.</summary>
public enum SteeringPool { Last, Mean }

/// <summary>A steering vector and how it was built.</summary>
public sealed record SteeringVector(float[] Vector, HookKind Kind, int Layer, SteeringPool Pool, int Pairs, double Norm)
{
    /// <summary>
    /// Mean over contrastive pairs of (act(positive) − act(negative)) at blocks.L.&lt;tap&gt;, each prompt pooled at its
    /// last position (CAA, Rimsky et al. 2024) or as the mean over its positions. Prompts of a pair may differ in length.
    /// </summary>
    public static SteeringVector FromPairs(Session session, IReadOnlyList<(int[] Positive, int[] Negative)> pairs, HookKind kind, int layer, SteeringPool pool)
    {
        var c = session.Config;
        if (pairs.Count == 0) throw new UsageException("--pairs: no contrastive pairs");
        new TapSelection(kind, layer).Validate(c, "--layer");
        var shape = HookPoints.Shape(c, kind, 1, 1);
        if (shape.Rank != 2 || shape.D1 != c.DModel) throw new UsageException($"--act: {HookPoints.Name(kind, layer)} is not a d_model-wide tap");
        int D = c.DModel;
        var sum = new double[D];
        string name = HookPoints.Name(kind, layer);
        foreach (var (pos, neg) in pairs)
        {
            InterpMath.CheckTokens(session, pos, "--positive");
            InterpMath.CheckTokens(session, neg, "--negative");
            var a = Pooled(session, pos, name, pool, D);
            var b = Pooled(session, neg, name, pool, D);
            for (int j = 0; j < D; j++) sum[j] += a[j] - b[j];
        }
        var v = sum.Select(x => (float)(x / pairs.Count)).ToArray();
        return new SteeringVector(v, kind, layer, pool, pairs.Count, Math.Sqrt(v.Sum(x => (double)x * x)));
    }

    static double[] Pooled(Session s, int[] tokens, string name, SteeringPool pool, int D)
    {
        var (_, cache) = s.RunWithCache(tokens, n => n == name);
        var data = cache[name].Data;
        int T = tokens.Length;
        var r = new double[D];
        if (pool == SteeringPool.Last) { for (int j = 0; j < D; j++) r[j] = data[(T - 1) * D + j]; return r; }
        for (int t = 0; t < T; t++) for (int j = 0; j < D; j++) r[j] += data[t * D + j];
        for (int j = 0; j < D; j++) r[j] /= T;
        return r;
    }
}

/// <summary>
/// Keeps the clean run's attention patterns while other edits run (SPEC "Interventions": "unless the user freezes
/// attention patterns"): every layer's hook_pattern rows of the prompt are overwritten with the clean prompt's. With the
/// KV cache, the rows of generated tokens have no clean counterpart and are left as computed. The restoration is an
/// intervention (Set blocks reading the clean patterns): on a GPU backend the patterns are not copied to the host.
/// </summary>
public static class AttentionFreeze
{
    /// <summary>Runs the clean prompt once (no edits) to record its patterns, then registers hooks that restore them.</summary>
    public static IDisposable Register(Session session, int[] prompt)
    {
        var c = session.Config;
        var (_, cache) = session.RunWithCache(prompt, n => n.EndsWith(".attn.hook_pattern", StringComparison.Ordinal));
        var handles = new List<IDisposable>();
        int T = prompt.Length;
        for (int l = 0; l < c.NLayers; l++)
        {
            var clean = cache[HookPoints.Name(HookKind.Pattern, l)].Data;   // [H, T, T]
            handles.Add(session.Hooks.AddIntervention(HookKind.Pattern, l, call =>
            {
                int H = call.Shape.D0, rows = call.Shape.D1, keys = call.Shape.D2;
                var list = new BlockList();
                for (int h = 0; h < H; h++)
                    for (int t = 0; t < rows; t++)
                    {
                        int p = call.Pos0 + t;
                        if (p >= T || keys > T) continue;            // a generated token's row: no clean pattern
                        list.Piece(InterventionOp.Set, h * rows + t, 0, keys, clean, (h * T + p) * T, T);
                    }
                return list;
            }));
        }
        return new Handles(handles);
    }

    sealed class Handles(List<IDisposable> list) : IDisposable
    {
        public void Dispose() { foreach (var h in list) h.Dispose(); list.Clear(); }
    }
}

/// <summary>The next-token distribution at the last prompt position and the greedy continuation, before and after edits.</summary>
public sealed record SteerResult(
    int[] Prompt,
    float[] LogitsBefore,
    float[] LogitsAfter,
    // KL(before ‖ after) of the next-token distributions at the last prompt position, in nats.
    double Kl,
    List<int> ContinuationBefore,
    List<int> ContinuationAfter,
    bool FrozenAttention);

/// <summary>Runs a prompt with and without a set of interventions: next-token distribution shift and greedy continuations.</summary>
public static class Steering
{
    public static SteerResult Compare(Session session, int[] prompt, IReadOnlyList<Intervention> edits, int maxNewTokens, bool freezeAttention = false, bool stopAtEos = true)
    {
        var c = session.Config;
        InterpMath.CheckTokens(session, prompt, "--tokens");
        if (maxNewTokens < 0) throw new UsageException($"--max-new-tokens: {maxNewTokens} must not be negative");
        if (prompt.Length + maxNewTokens > session.Capacity)
            throw new UsageException($"--max-new-tokens: {prompt.Length} + {maxNewTokens} tokens exceed the session's capacity of {session.Capacity}");
        var sampling = new SamplingOptions { Temperature = 0, StopAtEos = stopAtEos };
        var before = InterpMath.LastRow(session.Run(prompt), c.VocabSize).ToArray();
        var contBefore = session.Generate(prompt, maxNewTokens, sampling);
        float[] after;
        List<int> contAfter;
        using (freezeAttention ? AttentionFreeze.Register(session, prompt) : null)
        using (Intervention.RegisterAll(session, edits))
        {
            after = InterpMath.LastRow(session.Run(prompt), c.VocabSize).ToArray();
            contAfter = session.Generate(prompt, maxNewTokens, sampling);
        }
        return new SteerResult(prompt, before, after, Kl(before, after), contBefore, contAfter, freezeAttention);
    }

    /// <summary>KL(softmax(p) ‖ softmax(q)) in nats, in double.</summary>
    public static double Kl(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        double lp = InterpMath.LogSumExp(p), lq = InterpMath.LogSumExp(q), kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double a = p[i] - lp;
            if (double.IsNegativeInfinity(a)) continue;
            kl += Math.Exp(a) * (a - (q[i] - lq));
        }
        return Math.Max(0, kl);
    }
}
