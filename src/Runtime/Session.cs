using Engine.Kernels;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>Options of a session: which backend and how many positions the arena and KV cache hold.</summary>
public sealed record SessionOptions
{
    public string Backend { get; init; } = KernelRegistry.Default;
    /// <summary>Positions the session can hold (prompt + generated); 0 = the model's context length.</summary>
    public int Capacity { get; init; }
    /// <summary>Compute logits for every row of a forward call (false: only the last row, as generation needs).</summary>
    public bool AllLogits { get; init; } = true;
    /// <summary>
    /// When only the last row's logits are wanted (<see cref="AllLogits"/> false, or <see cref="Session.RunFrom"/>) and no
    /// hook is registered, the last layer runs its attention, output projection and MLP for the last row only (its K/V
    /// for every row), as llama.cpp does for generation; the last row's logits then round as one-row products do (within
    /// 1e-5 of the full computation on the fixtures). False (the default): every row through every layer, so that runs
    /// with and without hooks, and the sweeps' batched lanes, agree bit for bit. `engine generate`, `engine bench` and
    /// `engine profile` turn it on.
    /// </summary>
    public bool SkipUnusedRows { get; init; }
    /// <summary>Host kernels to use instead of <see cref="Backend"/> (e.g. a <see cref="ProfilingKernels"/> decorator, or a thread count).</summary>
    public IKernels? Kernels { get; init; }
    /// <summary>A backend instance to use instead of <see cref="Backend"/> (e.g. a GPU backend).</summary>
    public IBackend? Device { get; init; }
}

/// <summary>
/// Runs a <see cref="Model"/>: one activation arena, a KV cache, a backend and the hooks. One block implementation
/// drives every family from <see cref="ModelConfig"/> flags. The arena and the cache are buffers of the backend
/// (host memory for the CPU backends, device memory for a GPU); on the host a tap is the arena itself, on a device the
/// tapped slot is copied to the host for the hook and back after it, unless every hook there is an intervention (or a
/// lane hook with a device form), which the backend runs where the tap lives. Not thread-safe (one forward at a time).
/// <para>
/// A pass runs one or more <em>lanes</em>: independent sequences whose rows are stacked into one matrix for every
/// row-wise op (norms, matrix multiplies, activations), while RoPE, attention and the KV cache are per lane. An ordinary
/// forward call is one lane in the session's own arena; the sweep calls (<c>Session.Sweep.cs</c>) run many lanes in a
/// second workspace.
/// </para>
/// </summary>
public sealed partial class Session : IDisposable
{
    public Model Model { get; }
    public ModelConfig Config { get; }
    /// <summary>Where activations live and ops run.</summary>
    public IBackend Backend { get; }
    /// <summary>Span-based kernels on host memory (for small computations outside the forward pass).</summary>
    public IKernels Kernels => Backend.HostKernels;
    public HookRegistry Hooks { get; }
    public int Capacity { get; }
    /// <summary>Positions already in the KV cache; the next forward call starts there.</summary>
    public int Length { get; private set; }
    public bool AllLogits { get; }
    /// <summary>See <see cref="SessionOptions.SkipUnusedRows"/>.</summary>
    public bool SkipUnusedRows { get; }

    // The session's own arena: one lane of Capacity positions, its KV cache, logits of every row or of the last one.
    readonly Workspace _main;
    readonly RopeTable? _rope;
    IDeviceBuffer? _attnArena;
    Slot _scores, _pattern;
    readonly bool _ownsBackend;
    // Device backends: host copies of the logits and of a tapped slot (grown once).
    float[] _hostLogits = [];
    float[] _staging = [];

    // The pass being run: its workspace and its lanes (sorted by first layer, rows stacked in that order).
    Workspace _ws;
    Lane[] _lanes;
    int _laneCount;
    bool _laneHooks;
    bool _lastRowOnly;                 // some lane keeps only its last row from the last layer's attention on
    readonly Lane[] _mainLane = new Lane[1];

    /// <summary>One sequence of a pass.</summary>
    struct Lane
    {
        /// <summary>First row of the lane in the pass's stacked rows, and its row count.</summary>
        public int Row0, Rows;
        /// <summary>Absolute position of the lane's first row (its KV cache holds rows 0 .. Pos0 + Rows - 1).</summary>
        public int Pos0;
        /// <summary>The lane takes part from this layer on (its residual rows are loaded before it).</summary>
        public int FirstLayer;
        /// <summary>Index of the lane's KV cache in the workspace.</summary>
        public int Cache;
        /// <summary>Position of the lane in the caller's list (the order of the returned logits).</summary>
        public int Order;
        /// <summary>Hooks that fire on this lane only (besides the session's hooks).</summary>
        public IReadOnlyList<LaneHook>? Hooks;
        /// <summary>From the last layer's attention on, only the lane's last row is computed (its K/V rows all are).</summary>
        public bool LastRowOnly;
        /// <summary>At its first layer the lane starts at z: ZFrom holds its z rows ([Rows, H, d], the base run's).</summary>
        public bool FromZ;
        public DeviceSpan ZFrom;
    }

    public Session(Model model, SessionOptions? options = null)
    {
        options ??= new SessionOptions();
        Model = model;
        Config = model.Config;
        _ownsBackend = options.Device == null && options.Kernels == null;
        Backend = options.Device ?? (options.Kernels != null ? new HostBackend(options.Kernels) : KernelRegistry.CreateBackend(options.Backend));
        Hooks = new HookRegistry(Config);
        AllLogits = options.AllLogits;
        SkipUnusedRows = options.SkipUnusedRows;
        var c = Config;
        if (options.Capacity < 0) throw new UsageException($"capacity {options.Capacity} must be positive");
        Capacity = options.Capacity == 0 ? c.ContextLength : Math.Min(options.Capacity, c.ContextLength);
        _main = new Workspace(Backend, c, Capacity, lanes: 1, laneCapacity: Capacity, logitRows: AllLogits ? Capacity : 1, sweep: false);
        _rope = RopeTable.For(c, Capacity);
        _ws = _main;
        _lanes = _mainLane;
    }

    /// <summary>Bytes of the activation arena and KV cache (plus the sweep workspace while one is held).</summary>
    public long ArenaBytes => (_main.Floats + (_attnArena?.Length ?? 0) + (_sweep?.Floats ?? 0)) * sizeof(float);

    /// <summary>Forgets the KV cache: the next forward starts at position 0.</summary>
    public void Reset() => Length = 0;

    /// <summary>Logits of the last forward call: [T, V] (or [1, V] when the session keeps only the last row).</summary>
    public ReadOnlySpan<float> LastLogits => Backend.IsHost
        ? Backend.HostView(_main.Span(_main.Logits, 0, _lastLogitRows * Config.VocabSize))
        : _hostLogits.AsSpan(0, _lastLogitRows * Config.VocabSize);
    int _lastLogitRows;

    /// <summary>Runs a full sequence from position 0 (resets the cache first). Returns logits [T, V].</summary>
    public ReadOnlySpan<float> Run(scoped ReadOnlySpan<int> tokens)
    {
        Reset();
        return Forward(tokens);
    }

    /// <summary>
    /// Appends tokens at position <see cref="Length"/>, using and extending the KV cache. Returns the logits of the new
    /// rows ([T, V], or [1, V] for the last row only when <see cref="AllLogits"/> is false), a view valid until the next call.
    /// </summary>
    public ReadOnlySpan<float> Forward(scoped ReadOnlySpan<int> tokens)
    {
        var c = Config;
        int T = tokens.Length, p0 = Length;
        if (T == 0) throw new UsageException("empty input: at least one token is needed");
        if (p0 + T > Capacity)
            throw new UsageException(p0 == 0
                ? $"the prompt has {T} tokens, longer than the context of {Capacity} positions"
                : $"{p0} + {T} tokens exceed the context of {Capacity} positions");
        Model.ValidateTokens(tokens);
        if (Hooks.AnyAttentionTaps) EnsureAttentionSlots();
        BeginMainPass(T, p0, firstLayer: 0, lastRowOnly: !AllLogits && TrimUnobserved());
        var b = Backend;
        var ws = _main;
        int D = c.DModel;

        // ---- embeddings
        var embed = ws.Span(ws.Embed, 0, T * D);                      // [T, D]
        b.EmbeddingGather(tokens, Model.Weights.TokenEmbedding, embed);
        Fire(HookKind.Embed, -1, embed, 1, D);
        var resid = ws.Span(ws.Resid, 0, T * D);                      // [T, D] the residual stream, updated in place
        b.Copy(embed, resid);
        if (c.Positions == PositionKind.Learned)
        {
            var pos = ws.Span(ws.PosEmbed, 0, T * D);                 // [T, D] wpe rows p0..p0+T-1
            b.TableRows(Model.Weights.PositionEmbedding!.Value, p0, T, pos);
            Fire(HookKind.PosEmbed, -1, pos, 1, D);
            b.AddInPlace(pos, resid);
        }
        if (c.EmbedScale != 1f) b.ScaleInPlace(resid, c.EmbedScale);

        // ---- blocks
        for (int l = 0; l < c.NLayers; l++) Block(l);
        int tOut = _mainLane[0].Rows;                                 // T, or 1 when the last layer kept only the last row
        if (tOut != T) resid = ws.Span(ws.Resid, 0, tOut * D);
        if (_capture != null) CaptureResid(c.NLayers, resid);

        // ---- final norm and unembedding
        var lnf = ws.Span(ws.LnfNorm, 0, tOut * D);
        var lnfScale = ws.Span(ws.LnfScale, 0, tOut);
        Norm(resid, tOut, Model.Weights.FinalNormWeight, Model.Weights.FinalNormBias, lnf, lnfScale);
        Fire(HookKind.LnFinalScale, -1, lnfScale, 1, 1);
        Fire(HookKind.LnFinalNormalized, -1, lnf, 1, D);
        int rows = AllLogits ? T : 1;
        var logits = ws.Span(ws.Logits, 0, rows * c.VocabSize);
        b.MatMul(AllLogits ? lnf : lnf.Slice((long)(tOut - 1) * D, D), rows, Model.Weights.Unembed, logits);
        _lastLogitRows = rows;
        Length = p0 + T;
        return HostLogits(logits, ref _hostLogits);
    }

    /// <summary>Returns logits as host memory: the arena itself on a host backend, a copy (into host, grown once) otherwise.</summary>
    ReadOnlySpan<float> HostLogits(DeviceSpan logits, ref float[] host)
    {
        var b = Backend;
        if (b.IsHost) return b.HostView(logits);
        if (host.Length < logits.Length) host = GC.AllocateUninitializedArray<float>(logits.Length);
        b.Synchronize();
        b.Download(logits, host.AsSpan(0, logits.Length));
        return host.AsSpan(0, logits.Length);
    }

    /// <summary>
    /// Makes the pass one lane of T rows at position p0 in the session's own arena. lastRowOnly: only the last row's
    /// logits are wanted and nothing observes the other rows past the last layer's K/V, so that layer runs its attention,
    /// output projection and MLP for the last row only (see <see cref="TrimUnobserved"/>).
    /// </summary>
    void BeginMainPass(int T, int p0, int firstLayer, bool lastRowOnly)
    {
        _mainLane[0] = new Lane { Row0 = 0, Rows = T, Pos0 = p0, FirstLayer = firstLayer, Cache = 0, Order = 0, Hooks = null, LastRowOnly = lastRowOnly };
        _ws = _main;
        _lanes = _mainLane;
        _laneCount = 1;
        _laneHooks = false;
        _lastRowOnly = lastRowOnly;
    }

    /// <summary>
    /// True when a pass that returns only the last row's logits may skip the other rows of the last layer from its
    /// attention on (llama.cpp does the same with its output ids): no hook is registered on the session and no base is
    /// being captured, so nothing can observe those rows. Every row's K/V is still computed, so the KV cache is complete
    /// for the next call. Only with <see cref="SessionOptions.SkipUnusedRows"/>.
    /// </summary>
    bool TrimUnobserved() => SkipUnusedRows && _capture == null && Hooks.Count == 0;

    /// <summary>
    /// Lanes taking part in layer l: a prefix of the lanes, which are sorted by first layer. Of them, the first nFull run
    /// the layer's attention; the rest (lanes joining here from z, sorted last) start at its z.
    /// </summary>
    int ActiveLanes(int l, out int nFull)
    {
        int n = 0;
        while (n < _laneCount && _lanes[n].FirstLayer <= l) n++;
        nFull = n;
        while (nFull > 0 && _lanes[nFull - 1].FromZ && _lanes[nFull - 1].FirstLayer == l) nFull--;
        return n;
    }

    void Block(int l)
    {
        int nA = ActiveLanes(l, out int nFull);
        if (nA == 0) return;
        var c = Config;
        var w = Model.Weights.Layers[l];
        var b = Backend;
        var ws = _ws;
        int D = c.DModel;
        int T = _lanes[nA - 1].Row0 + _lanes[nA - 1].Rows;            // rows of the active lanes
        int tFull = nFull == 0 ? 0 : _lanes[nFull - 1].Row0 + _lanes[nFull - 1].Rows;   // rows that run the attention
        var resid = ws.Span(ws.Resid, 0, T * D);
        if (_capture != null) CaptureResid(l, resid);
        Fire(HookKind.ResidPre, l, resid, nFull, D);

        var ln1 = ws.Span(ws.Ln1Norm, 0, tFull * D);
        var ln1Scale = ws.Span(ws.Ln1Scale, 0, tFull);
        if (tFull > 0) Norm(resid, tFull, w.Ln1Weight, w.Ln1Bias, ln1, ln1Scale);
        Fire(HookKind.Ln1Scale, l, ln1Scale, nFull, 1);
        Fire(HookKind.Ln1Normalized, l, ln1, nFull, D);

        var attnOut = Attention(l, w, ref T, nA, nFull, tFull, ln1);  // [T, D] (T shrinks when lanes keep only their last row)
        resid = ws.Span(ws.Resid, 0, T * D);

        var ln2 = ws.Span(ws.Ln2Norm, 0, T * D);
        var ln2Scale = ws.Span(ws.Ln2Scale, 0, T);
        if (c.ParallelResidual)
        {
            // x + attn(ln1(x)) + mlp(ln2(x)): both norms read the block input.
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, nA, 1);
            Fire(HookKind.Ln2Normalized, l, ln2, nA, D);
            var mlpOut = Mlp(l, w, T, nA, ln2);
            b.AddInPlace(attnOut, resid);
            b.AddInPlace(mlpOut, resid);
        }
        else
        {
            b.AddInPlace(attnOut, resid);
            Fire(HookKind.ResidMid, l, resid, nA, D);
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, nA, 1);
            Fire(HookKind.Ln2Normalized, l, ln2, nA, D);
            var mlpOut = Mlp(l, w, T, nA, ln2);
            b.AddInPlace(mlpOut, resid);
        }
        Fire(HookKind.ResidPost, l, resid, nA, D);
    }

    DeviceSpan Attention(int l, LayerWeights w, ref int T, int nA, int nFull, int tFull, DeviceSpan x)
    {
        var c = Config;
        var b = Backend;
        var ws = _ws;
        int H = c.NHeads, K = c.NKvHeads, d = c.HeadDim, kvDim = c.KvDim, qDim = c.QDim;
        // One lane (an ordinary forward call): k/v are projected straight into its cache rows Pos0..; several lanes:
        // into a scratch [T, K, d], then each lane's rows are copied into its own cache.
        // Only the first nFull lanes (tFull rows) run the projections and attention; lanes joining at this layer's z
        // take their z rows from their base run.
        bool direct = _laneCount == 1;
        var q = ws.Span(ws.Q, 0, tFull * qDim);                                 // [tFull, H, d]
        DeviceSpan kNew, vNew;                                                  // [tFull, K, d]
        if (direct)
        {
            kNew = ws.CacheRows(ws.KCache, _lanes[0].Cache, l, _lanes[0].Pos0, tFull);
            vNew = ws.CacheRows(ws.VCache, _lanes[0].Cache, l, _lanes[0].Pos0, tFull);
        }
        else
        {
            kNew = ws.Span(ws.KNew, 0, tFull * kvDim);
            vNew = ws.Span(ws.VNew, 0, tFull * kvDim);
        }
        if (tFull == 0) { }
        else if (c.QkvLayout == QkvLayout.Separate)
        {
            b.MatMul(x, tFull, w.Q!, q);
            b.MatMul(x, tFull, w.K!, kNew);
            b.MatMul(x, tFull, w.V!, vNew);
        }
        else
        {
            int width = qDim + 2 * kvDim;
            var qkv = ws.Span(ws.Qkv, 0, tFull * width);                        // [tFull, q+k+v]
            b.MatMul(x, tFull, w.Qkv!, qkv);
            b.SplitQkv(qkv, tFull, c.QkvLayout, H, K, d, q, kNew, vNew);
        }
        Fire(HookKind.Q, l, q, nFull, qDim);
        Fire(HookKind.K, l, kNew, nFull, kvDim);
        Fire(HookKind.V, l, vNew, nFull, kvDim);
        if (_rope != null)
        {
            if (direct)
            {
                if (tFull > 0)
                {
                    b.Rope(q, tFull, H, d, _lanes[0].Pos0, _rope);
                    b.Rope(kNew, tFull, K, d, _lanes[0].Pos0, _rope);
                }
            }
            else
                for (int i = 0; i < nFull; i++)
                {
                    ref readonly var lane = ref _lanes[i];
                    b.Rope(q.Slice((long)lane.Row0 * qDim, lane.Rows * qDim), lane.Rows, H, d, lane.Pos0, _rope);
                    b.Rope(kNew.Slice((long)lane.Row0 * kvDim, lane.Rows * kvDim), lane.Rows, K, d, lane.Pos0, _rope);
                }
            Fire(HookKind.RotQ, l, q, nFull, qDim);
            Fire(HookKind.RotK, l, kNew, nFull, kvDim);
        }
        var z = ws.Span(ws.Z, 0, T * qDim);                                     // [T, H, d]
        bool sessionAttnTaps = Hooks.Has(HookKind.AttnScores, l) || Hooks.Has(HookKind.Pattern, l);
        bool trim = _lastRowOnly && l == Config.NLayers - 1;
        for (int i = 0; i < nFull; i++)
        {
            ref readonly var lane = ref _lanes[i];
            if (!direct)
            {
                b.Copy(kNew.Slice((long)lane.Row0 * kvDim, lane.Rows * kvDim), ws.CacheRows(ws.KCache, lane.Cache, l, lane.Pos0, lane.Rows));
                b.Copy(vNew.Slice((long)lane.Row0 * kvDim, lane.Rows * kvDim), ws.CacheRows(ws.VCache, lane.Cache, l, lane.Pos0, lane.Rows));
            }
            int keys = lane.Pos0 + lane.Rows;
            // A lane that needs only its last row: that query row alone from here on (every row's K/V is in the cache).
            int skip = trim && lane.LastRowOnly ? lane.Rows - 1 : 0;
            var shape = new AttentionShape(lane.Rows - skip, lane.Pos0 + skip, H, K, d, c.LayerAttnScale(l));
            var kAll = ws.CacheRows(ws.KCache, lane.Cache, l, 0, keys);        // [Tk, K, d]
            var vAll = ws.CacheRows(ws.VCache, lane.Cache, l, 0, keys);
            var qLane = q.Slice((long)(lane.Row0 + skip) * qDim, shape.Rows * qDim);
            var zLane = z.Slice((long)(lane.Row0 + skip) * qDim, shape.Rows * qDim);
            if (sessionAttnTaps || LaneHas(lane, HookKind.AttnScores, l) || LaneHas(lane, HookKind.Pattern, l))
            {
                var tapLane = skip == 0 ? lane : lane with { Rows = shape.Rows, Pos0 = shape.Pos0 };
                int n = H * shape.Rows * keys;
                var scores = new DeviceSpan(_attnArena!, _scores.Offset, n);    // [H, T, Tk]
                var pattern = new DeviceSpan(_attnArena!, _pattern.Offset, n);
                b.AttentionScores(qLane, kAll, shape, scores);
                FireLane(HookKind.AttnScores, l, scores, tapLane);
                b.AttentionSoftmax(scores, shape, pattern);
                FireLane(HookKind.Pattern, l, pattern, tapLane);
                b.AttentionMix(pattern, vAll, shape, zLane);
            }
            else b.Attention(qLane, kAll, vAll, shape, zLane);
        }
        for (int i = nFull; i < nA; i++)
        {
            ref readonly var lane = ref _lanes[i];
            b.Copy(lane.ZFrom, z.Slice((long)lane.Row0 * qDim, lane.Rows * qDim));
        }
        if (_capture != null) CaptureZ(l, z);
        if (trim)
        {
            T = KeepLastRows(nA, z);
            z = ws.Span(ws.Z, 0, T * qDim);
        }
        Fire(HookKind.Z, l, z, nA, qDim);
        var attnOut = ws.Span(ws.AttnOut, 0, T * c.DModel);
        b.MatMul(z, T, w.O, attnOut);
        Fire(HookKind.AttnOut, l, attnOut, nA, c.DModel);
        return attnOut;
    }

    /// <summary>
    /// Compacts the stacked rows after the last layer's attention: lanes that need only their last row keep that row of
    /// the residual stream and of z, the others keep all theirs (lanes not active in the layer keep their residual
    /// rows). Rows only move down, one at a time, so no copy overlaps. Returns the active row count.
    /// </summary>
    int KeepLastRows(int nA, DeviceSpan z)
    {
        var ws = _ws;
        var b = Backend;
        int D = Config.DModel, qDim = Config.QDim, row = 0, active = 0;
        for (int i = 0; i < _laneCount; i++)
        {
            ref var lane = ref _lanes[i];
            bool keepLast = i < nA && lane.LastRowOnly;
            int from = keepLast ? lane.Row0 + lane.Rows - 1 : lane.Row0, rows = keepLast ? 1 : lane.Rows;
            if (from != row)
                for (int r = 0; r < rows; r++)
                {
                    b.Copy(ws.Span(ws.Resid, (long)(from + r) * D, D), ws.Span(ws.Resid, (long)(row + r) * D, D));
                    if (i < nA) b.Copy(z.Slice((long)(from + r) * qDim, qDim), z.Slice((long)(row + r) * qDim, qDim));
                }
            if (keepLast) { lane.Pos0 += lane.Rows - 1; lane.Rows = 1; }
            lane.Row0 = row;
            row += rows;
            if (i < nA) active = row;
        }
        return active;
    }

    DeviceSpan Mlp(int l, LayerWeights w, int T, int nA, DeviceSpan x)
    {
        var c = Config;
        var b = Backend;
        var ws = _ws;
        int M = c.DMlp;
        var pre = ws.Span(ws.MlpPre, 0, T * M);                                // [T, M]
        var post = ws.Span(ws.MlpPost, 0, T * M);
        b.MatMul(x, T, w.MlpIn, pre);
        Fire(HookKind.MlpPre, l, pre, nA, M);
        if (c.GatedMlp)
        {
            var up = ws.Span(ws.MlpPreLinear, 0, T * M);
            b.MatMul(x, T, w.MlpUp!, up);
            Fire(HookKind.MlpPreLinear, l, up, nA, M);
            b.GatedActivation(c.Activation, pre, up, post);
        }
        else b.Activation(c.Activation, pre, post);
        Fire(HookKind.MlpPost, l, post, nA, M);
        var mlpOut = ws.Span(ws.MlpOut, 0, T * c.DModel);
        b.MatMul(post, T, w.MlpOut, mlpOut);
        Fire(HookKind.MlpOut, l, mlpOut, nA, c.DModel);
        return mlpOut;
    }

    void Norm(DeviceSpan x, int T, float[] weight, float[]? bias, DeviceSpan y, DeviceSpan scale)
    {
        var c = Config;
        if (c.Norm == NormKind.LayerNorm) Backend.LayerNorm(x, T, c.DModel, weight, bias, c.NormEps, y, scale);
        else Backend.RmsNorm(x, T, c.DModel, weight, c.NormWeightOffset, c.NormEps, y, scale);
    }

    /// <summary>
    /// Fires the hooks of a row-wise tap (rows of <paramref name="width"/> floats) on each of the first nA lanes' rows:
    /// the session's hooks, then the lane's own. One lane: the whole span, as an ordinary forward call.
    /// </summary>
    void Fire(HookKind kind, int layer, DeviceSpan data, int nA, int width)
    {
        bool session = Hooks.Has(kind, layer);
        if (!session && !_laneHooks) return;
        for (int i = 0; i < nA; i++)
        {
            ref readonly var lane = ref _lanes[i];
            if (!session && !LaneHas(lane, kind, layer)) continue;
            var rows = _laneCount == 1 ? data : data.Slice((long)lane.Row0 * width, lane.Rows * width);
            FireLane(kind, layer, rows, lane);
        }
    }

    static bool LaneHas(in Lane lane, HookKind kind, int layer)
    {
        var hooks = lane.Hooks;
        if (hooks == null) return false;
        for (int i = 0; i < hooks.Count; i++)
            if (hooks[i].Kind == kind && hooks[i].Layer == layer) return true;
        return false;
    }

    /// <summary>Fires the session's and the lane's hooks of one tap on one lane's data.</summary>
    void FireLane(HookKind kind, int layer, DeviceSpan data, in Lane lane)
    {
        bool session = Hooks.Has(kind, layer), own = LaneHas(lane, kind, layer);
        if (!session && !own) return;
        var shape = HookPoints.Shape(Config, kind, lane.Rows, lane.Pos0 + lane.Rows);
        var b = Backend;
        if (b.IsHost)
        {
            var view = b.HostView(data);
            if (session) Hooks.Fire(kind, layer, view, shape, lane.Pos0);
            if (own) FireOwn(kind, layer, view, shape, lane);
            return;
        }
        // Interventions only (patch, ablate, scale, add; the session's, then the lane's device forms): run where the tap
        // lives, no host copy.
        if (b is IDeviceInterventions device && DeviceBlocks(new TapCall(kind, layer, shape, lane.Pos0), session, own, lane))
        {
            var (rows, cols) = HookRegistry.InterventionView(kind, shape);
            foreach (var iv in _interventions) device.Apply(iv, data, rows, cols);
            return;
        }
        // A device slot: the hook sees a host copy, and what it leaves there goes back before the next op reads it.
        if (_staging.Length < data.Length) _staging = GC.AllocateUninitializedArray<float>(data.Length);
        var host = _staging.AsSpan(0, data.Length);
        b.Synchronize();
        b.Download(data, host);
        if (session) Hooks.Fire(kind, layer, host, shape, lane.Pos0);
        if (own) FireOwn(kind, layer, host, shape, lane);
        b.Upload(host, data);
    }

    readonly List<DeviceIntervention> _interventions = [];

    /// <summary>
    /// Fills <see cref="_interventions"/> with the blocks of one lane's tap when every hook firing there has a device form
    /// (the session's all interventions, the lane's all with <see cref="LaneHook.Device"/>), in firing order: the
    /// session's, then the lane's own. False when a host hook is among them.
    /// </summary>
    bool DeviceBlocks(in TapCall call, bool session, bool own, in Lane lane)
    {
        _interventions.Clear();
        if (session && !Hooks.TryInterventionsOnly(call, _interventions)) return false;
        if (!own) return true;
        var hooks = lane.Hooks!;
        for (int i = 0; i < hooks.Count; i++)
            if (hooks[i].Kind == call.Kind && hooks[i].Layer == call.Layer && hooks[i].Device == null) return false;
        for (int i = 0; i < hooks.Count; i++)
            if (hooks[i].Kind == call.Kind && hooks[i].Layer == call.Layer) _interventions.AddRange(hooks[i].Device!(call));
        return true;
    }

    void FireOwn(HookKind kind, int layer, Span<float> data, TapShape shape, in Lane lane)
    {
        var hooks = lane.Hooks!;
        var tap = new Tap(data, kind, layer, Hooks.NameOf(kind, layer), shape, lane.Pos0);
        for (int i = 0; i < hooks.Count; i++)
            if (hooks[i].Kind == kind && hooks[i].Layer == layer) hooks[i].Fn(tap);
    }

    void EnsureAttentionSlots()
    {
        if (_attnArena != null) return;
        // [H, capacity, capacity] for scores and pattern: only when a tap asks for them.
        long n = (long)Config.NHeads * Capacity * Capacity;
        if (n > int.MaxValue) throw new UsageException($"attention taps need {n} floats per slot at capacity {Capacity}; use a shorter capacity");
        var plan = new SlotPlan();
        _scores = plan.Reserve("attn_scores", n);
        _pattern = plan.Reserve("pattern", n);
        _attnArena = Backend.Allocate(plan.Floats);
    }

    public void Dispose()
    {
        _main.Dispose();
        _sweep?.Dispose();
        _attnArena?.Dispose();
        if (_ownsBackend) Backend.Dispose();
    }

    /// <summary>
    /// The activation slots of a pass of up to <see cref="Rows"/> stacked rows and the KV caches of <see cref="Lanes"/>
    /// sequences of <see cref="LaneCapacity"/> positions, laid out once in one backend buffer.
    /// </summary>
    sealed class Workspace : IDisposable
    {
        public readonly IDeviceBuffer Buffer;
        public readonly long Floats;
        public readonly int Rows, Lanes, LaneCapacity, LogitRows;
        readonly int _layers, _kvDim;
        public readonly Slot Embed, PosEmbed, Resid, Ln1Norm, Ln1Scale, Ln2Norm, Ln2Scale, Qkv, Q, Z, AttnOut,
            MlpPre, MlpPreLinear, MlpPost, MlpOut, LnfNorm, LnfScale, Logits, KCache, VCache, KNew, VNew, LastRows;

        /// <param name="backend">The backend whose buffer holds the arena.</param>
        /// <param name="c">The model.</param>
        /// <param name="rows">Rows (tokens) of one run.</param>
        /// <param name="lanes">Patched variants run side by side (1 outside sweeps).</param>
        /// <param name="laneCapacity">Rows per lane.</param>
        /// <param name="logitRows">Rows whose logits are computed.</param>
        /// <param name="sweep">A sweep workspace: no embedding slots; scratch for the new k/v rows of several lanes and for their last rows.</param>
        public Workspace(IBackend backend, ModelConfig c, int rows, int lanes, int laneCapacity, int logitRows, bool sweep)
        {
            Rows = rows; Lanes = lanes; LaneCapacity = laneCapacity; LogitRows = logitRows;
            _layers = c.NLayers; _kvDim = c.KvDim;
            long T = rows, D = c.DModel;
            var plan = new SlotPlan();
            Embed = plan.Reserve("embed", sweep ? 0 : T * D);
            PosEmbed = plan.Reserve("pos_embed", !sweep && c.Positions == PositionKind.Learned ? T * D : 0);
            Resid = plan.Reserve("resid", T * D);
            Ln1Norm = plan.Reserve("ln1.normalized", T * D);
            Ln1Scale = plan.Reserve("ln1.scale", T);
            Ln2Norm = plan.Reserve("ln2.normalized", T * D);
            Ln2Scale = plan.Reserve("ln2.scale", T);
            Qkv = plan.Reserve("qkv", c.QkvLayout == QkvLayout.Separate ? 0 : T * (c.QDim + 2L * c.KvDim));
            Q = plan.Reserve("q", T * c.QDim);
            Z = plan.Reserve("z", T * c.QDim);
            AttnOut = plan.Reserve("attn_out", T * D);
            MlpPre = plan.Reserve("mlp.pre", T * c.DMlp);
            MlpPreLinear = plan.Reserve("mlp.pre_linear", c.GatedMlp ? T * c.DMlp : 0);
            MlpPost = plan.Reserve("mlp.post", T * c.DMlp);
            MlpOut = plan.Reserve("mlp_out", T * D);
            LnfNorm = plan.Reserve("ln_final.normalized", T * D);
            LnfScale = plan.Reserve("ln_final.scale", T);
            Logits = plan.Reserve("logits", (long)logitRows * c.VocabSize);
            KCache = plan.Reserve("k_cache", (long)lanes * c.NLayers * laneCapacity * c.KvDim);
            VCache = plan.Reserve("v_cache", (long)lanes * c.NLayers * laneCapacity * c.KvDim);
            KNew = plan.Reserve("k_new", sweep ? T * c.KvDim : 0);
            VNew = plan.Reserve("v_new", sweep ? T * c.KvDim : 0);
            LastRows = plan.Reserve("last_rows", sweep ? (long)lanes * D : 0);
            Floats = plan.Floats;
            Buffer = backend.Allocate(Floats);
        }

        public DeviceSpan Span(in Slot s, long start, int length)
        {
            if (start < 0 || length < 0 || start + length > s.Length) throw new ArgumentOutOfRangeException(nameof(start), $"{s.Name}: [{start}, {start + length}) outside [0, {s.Length})");
            return new DeviceSpan(Buffer, s.Offset + start, length);
        }

        /// <summary>Rows [row0, row0 + rows) of one layer of one lane's K or V cache ([lane, layer, capacity, K, d]).</summary>
        public DeviceSpan CacheRows(in Slot cache, int lane, int layer, int row0, int rows)
        {
            long start = (((long)lane * _layers + layer) * LaneCapacity + row0) * _kvDim;
            return Span(cache, start, rows * _kvDim);
        }

        public void Dispose() => Buffer.Dispose();
    }
}
