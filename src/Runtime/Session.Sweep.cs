using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Engine.Kernels;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>
/// A hook that fires on one lane of a batched pass only (<see cref="Session.RunLanes(ReadOnlySpan{SweepLane})"/>). <see cref="Fn"/> is the hook
/// (what host backends run, as ever). <see cref="Device"/>, when given, is the same edit as intervention blocks of the
/// lane's tap (resolved per call like <see cref="HookRegistry.AddIntervention(HookKind, int, Func{TapCall, IEnumerable{DeviceIntervention}})"/>:
/// the <see cref="TapCall"/> carries the lane's tap shape and <see cref="TapCall.Pos0"/>, the lane's first row, or T − 1
/// for a last-row-only lane's last-layer taps from attn_scores on): on a device backend (<see cref="IDeviceInterventions"/>)
/// a lane tap whose hooks all have a device form (the session's there all interventions) is edited by kernels, with no
/// host copy. Its blocks applied with <see cref="DeviceIntervention.ApplyHost"/> must equal what <see cref="Fn"/> does.
/// </summary>
public readonly record struct LaneHook(HookKind Kind, int Layer, HookFn Fn, Func<TapCall, IEnumerable<DeviceIntervention>>? Device = null);

/// <summary>
/// One sequence of a batched pass (<see cref="Session.RunLanes(ReadOnlySpan{SweepLane})"/>): the run of <see cref="Base"/>'s tokens that starts
/// from its cached state at layer <see cref="FirstLayer"/>, row <see cref="FromRow"/> (see <see cref="Session.RunFrom"/>),
/// with <see cref="Hooks"/> firing on this lane only. <see cref="LastRowOnly"/>: only the last position's output is wanted
/// (the returned logits), so the last layer computes every row's K/V but its attention, output projection and MLP for
/// the last row only; the lane's and the session's hooks on that layer's taps from attn_scores on, and on ln_final, then
/// see that one row (<see cref="Tap.Pos0"/> = T − 1). <see cref="FromZ"/>: the lane writes nothing at its first layer
/// before <c>attn.hook_z</c>, so that layer's attention (ln1, q/k/v, scores, pattern) is the base run's: the lane starts
/// at the base's z rows of that layer (its z hooks then fire on them) and skips the rest. Honoured only when the session
/// has no hook of its own at that layer before z (otherwise the lane runs the whole layer).
/// </summary>
public readonly record struct SweepLane(SweepBase Base, int FirstLayer, int FromRow, IReadOnlyList<LaneHook>? Hooks = null, bool LastRowOnly = false, bool FromZ = false);

/// <summary>
/// The states of one run that a patched run can reuse (<see cref="Session.CaptureBase"/>): the residual stream entering
/// every layer (<c>blocks.L.hook_resid_pre</c> before its hooks fire, L = 0 .. n_layers - 1, and the final residual as
/// layer n_layers) for every position, every layer's K/V cache rows, and every layer's z (<c>attn.hook_z</c> before its
/// hooks fire). Held in buffers of the session's backend (device
/// memory on a GPU); dispose it to free them.
/// </summary>
public sealed class SweepBase : IDisposable
{
    internal readonly Session Owner;
    internal readonly IDeviceBuffer Buffer;
    readonly int _layers, _dModel, _kvDim, _qDim;
    /// <summary>The tokens of the run.</summary>
    public int[] Tokens { get; }
    public int Length => Tokens.Length;
    /// <summary>The run's logits at the last position [V] (a copy).</summary>
    public float[] LastLogits { get; internal set; } = [];
    /// <summary>Bytes held on the backend.</summary>
    public long Bytes => Buffer.Length * sizeof(float);

    internal SweepBase(Session owner, int[] tokens)
    {
        Owner = owner;
        Tokens = tokens;
        var c = owner.Config;
        _layers = c.NLayers; _dModel = c.DModel; _kvDim = c.KvDim; _qDim = c.QDim;
        long T = tokens.Length;
        Buffer = owner.Backend.Allocate((_layers + 1) * T * _dModel + 2L * _layers * T * _kvDim + _layers * T * _qDim);
    }

    /// <summary>Residual rows [row0, row0 + rows) entering layer l (l = n_layers: the final residual).</summary>
    internal DeviceSpan Resid(int layer, int row0, int rows) =>
        new(Buffer, ((long)layer * Length + row0) * _dModel, rows * _dModel);

    /// <summary>K (v = false) or V cache rows [row0, row0 + rows) of layer l.</summary>
    internal DeviceSpan Cache(bool v, int layer, int row0, int rows) =>
        new(Buffer, (_layers + 1L) * Length * _dModel + (((v ? _layers : 0) + (long)layer) * Length + row0) * _kvDim, rows * _kvDim);

    /// <summary>z rows [row0, row0 + rows) of layer l ([T, H, d] per layer).</summary>
    internal DeviceSpan Z(int layer, int row0, int rows) =>
        new(Buffer, (_layers + 1L) * Length * _dModel + 2L * _layers * Length * _kvDim + ((long)layer * Length + row0) * _qDim, rows * _qDim);

    public void Dispose() => Buffer.Dispose();
}

public sealed partial class Session
{
    SweepBase? _capture;
    Workspace? _sweep;
    Lane[] _sweepLanes = [];
    int[] _sortKeys = [];
    bool[] _laneFromZ = [];
    float[] _hostLaneLogits = [];

    /// <summary>Bytes of the sweep workspace currently held (0 when none).</summary>
    public long SweepWorkspaceBytes => (_sweep?.Floats ?? 0) * sizeof(float);

    /// <summary>Frees the sweep workspace (the next batched pass allocates it again).</summary>
    public void ReleaseSweepWorkspace()
    {
        _sweep?.Dispose();
        _sweep = null;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> from position 0 with the hooks now registered (an ordinary <see cref="Run"/>) and keeps
    /// what patched runs of the same tokens can start from: the residual stream entering every layer (before that layer's
    /// resid_pre hooks fire) and every layer's K/V cache rows, in buffers of the backend. Leaves the session as
    /// <see cref="Run"/> does (KV cache filled, <see cref="LastLogits"/> set).
    /// </summary>
    public SweepBase CaptureBase(ReadOnlySpan<int> tokens)
    {
        if (tokens.Length == 0) throw new UsageException("empty input: at least one token is needed");
        if (tokens.Length > Capacity) throw new UsageException($"the prompt has {tokens.Length} tokens, longer than the context of {Capacity} positions");
        var captured = new SweepBase(this, tokens.ToArray());
        try
        {
            _capture = captured;
            var logits = Run(tokens);
            captured.LastLogits = logits.Slice(logits.Length - Config.VocabSize).ToArray();
        }
        catch
        {
            captured.Dispose();
            throw;
        }
        finally
        {
            _capture = null;
        }
        var b = Backend;
        int T = tokens.Length;
        for (int l = 0; l < Config.NLayers; l++)
        {
            b.Copy(_main.CacheRows(_main.KCache, 0, l, 0, T), captured.Cache(false, l, 0, T));
            b.Copy(_main.CacheRows(_main.VCache, 0, l, 0, T), captured.Cache(true, l, 0, T));
        }
        b.Synchronize();
        return captured;
    }

    void CaptureResid(int layer, DeviceSpan resid) => Backend.Copy(resid, _capture!.Resid(layer, 0, _capture.Length));

    int[] _selectedColumns = [];
    Linear? _selectedUnembed;
    float[] _selectedRows = [];        // pinned (a TensorView needs a fixed address)

    /// <summary>
    /// The unembedding restricted to some vocabulary entries: their weight rows widened to F32, as an out-major
    /// [C, d_model] projection (with their biases), kept for the next call with the same columns.
    /// </summary>
    unsafe Linear SelectedUnembed(ReadOnlySpan<int> columns)
    {
        if (_selectedUnembed != null && columns.SequenceEqual(_selectedColumns)) return _selectedUnembed;
        var u = Model.Weights.Unembed;
        int C = columns.Length, D = u.In;
        var rows = GC.AllocateUninitializedArray<float>(Math.Max(1, C * D), pinned: true);
        for (int j = 0; j < C; j++)
        {
            var row = rows.AsSpan(j * D, D);
            if (!u.InputMajor) u.W.Widen((long)columns[j] * D, row);
            else for (int k = 0; k < D; k++) row[k] = u.W.Get((long)k * u.Out + columns[j]);
        }
        float[]? bias = u.Bias == null ? null : columns.ToArray().Select(col => u.Bias[col]).ToArray();
        var info = new TensorInfo($"{u.W.Name}[{C} selected rows]", DType.F32, [C, D], 0, (long)C * D * sizeof(float), "");
        _selectedRows = rows;
        _selectedColumns = columns.ToArray();
        _selectedUnembed = new Linear(new TensorView(info, (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(rows))), false, bias, D, C);
        return _selectedUnembed;
    }

    void CaptureZ(int layer, DeviceSpan z) => Backend.Copy(z, _capture!.Z(layer, 0, _capture.Length));

    /// <summary>Whether the session has a hook at layer l on a tap computed before z (which a lane starting at z would skip).</summary>
    bool SessionHooksBeforeZ(int l)
    {
        for (var k = HookKind.ResidPre; k < HookKind.Z; k++)
            if (Hooks.Has(k, l)) return true;
        return false;
    }

    void CheckBase(SweepBase b, int firstLayer, int fromRow, string what)
    {
        if (b.Owner != this) throw new ArgumentException($"{what}: the base was captured by another session", nameof(b));
        if ((uint)firstLayer > (uint)Config.NLayers) throw new ArgumentOutOfRangeException(nameof(firstLayer), $"{what}: first layer {firstLayer} outside [0, {Config.NLayers}]");
        if ((uint)fromRow >= (uint)b.Length) throw new ArgumentOutOfRangeException(nameof(fromRow), $"{what}: row {fromRow} outside [0, {b.Length})");
    }

    /// <summary>
    /// The run of <paramref name="base"/>'s tokens in which everything before layer <paramref name="firstLayer"/> and every
    /// position before <paramref name="fromRow"/> is as in the base run (which is what a change at layer ≥ firstLayer,
    /// position ≥ fromRow cannot alter in a causal model): restores the residual rows [fromRow, T) entering layer firstLayer,
    /// the K/V rows [0, fromRow) of layers ≥ firstLayer (and all K/V rows of the layers below), runs layers
    /// firstLayer .. n_layers - 1 on rows fromRow .. T - 1 only, with the session's hooks firing as usual on those rows
    /// (<see cref="Tap.Pos0"/> = fromRow; hooks before firstLayer, and hook_embed, do not fire), then the final norm and the
    /// logits of the last row. Returns those logits [V] (a view valid until the next call). The session is left as after a
    /// full run of the patched sequence (<see cref="Length"/> = T, the KV cache usable by <see cref="Forward"/>).
    /// </summary>
    public ReadOnlySpan<float> RunFrom(SweepBase @base, int firstLayer, int fromRow)
    {
        CheckBase(@base, firstLayer, fromRow, nameof(RunFrom));
        var c = Config;
        int T = @base.Length, rows = T - fromRow, D = c.DModel;
        if (Hooks.AnyAttentionTaps) EnsureAttentionSlots();
        BeginMainPass(rows, fromRow, firstLayer, lastRowOnly: TrimUnobserved());
        var b = Backend;
        var ws = _main;
        var resid = ws.Span(ws.Resid, 0, rows * D);
        b.Copy(@base.Resid(firstLayer, fromRow, rows), resid);
        for (int l = 0; l < c.NLayers; l++)
        {
            int keep = l < firstLayer ? T : fromRow;
            if (keep == 0) continue;
            b.Copy(@base.Cache(false, l, 0, keep), ws.CacheRows(ws.KCache, 0, l, 0, keep));
            b.Copy(@base.Cache(true, l, 0, keep), ws.CacheRows(ws.VCache, 0, l, 0, keep));
        }
        for (int l = firstLayer; l < c.NLayers; l++) Block(l);
        if (_mainLane[0].Rows != rows)
        {
            rows = _mainLane[0].Rows;                                 // the last layer kept only the last row
            resid = ws.Span(ws.Resid, 0, rows * D);
        }

        var lnf = ws.Span(ws.LnfNorm, 0, rows * D);
        var lnfScale = ws.Span(ws.LnfScale, 0, rows);
        Norm(resid, rows, Model.Weights.FinalNormWeight, Model.Weights.FinalNormBias, lnf, lnfScale);
        Fire(HookKind.LnFinalScale, -1, lnfScale, 1, 1);
        Fire(HookKind.LnFinalNormalized, -1, lnf, 1, D);
        var logits = ws.Span(ws.Logits, 0, c.VocabSize);
        b.MatMul(lnf.Slice((long)(rows - 1) * D, D), 1, Model.Weights.Unembed, logits);
        _lastLogitRows = 1;
        Length = T;
        return HostLogits(logits, ref _hostLogits);
    }

    /// <summary>
    /// Runs several lanes (<see cref="SweepLane"/>: each the <see cref="RunFrom"/> of its base, layer and row) in one
    /// pass: the rows of every lane active at a layer are stacked into one matrix for the norms, projections and MLP (so
    /// the matrix kernels see many rows), while RoPE, attention and the KV cache are per lane (each lane has its own
    /// cache in a sweep workspace, with its base's rows restored). A lane joins at its first layer. Hooks: each lane's own
    /// hooks and the session's hooks fire on that lane's rows, <see cref="Tap.Pos0"/> = its FromRow. Returns the logits
    /// of each lane's last row, [lanes.Length, V] in the order given (a view valid until the next call). The session's
    /// own KV cache, <see cref="Length"/> and <see cref="LastLogits"/> are not touched.
    /// Memory: the workspace holds the stacked rows and one K/V cache per lane (lanes × n_layers × T × kv_dim × 2 floats);
    /// callers bound it by how many lanes they pass at once.
    /// </summary>
    public ReadOnlySpan<float> RunLanes(ReadOnlySpan<SweepLane> lanes) => RunLanes(lanes, default);

    /// <summary>
    /// <see cref="RunLanes(ReadOnlySpan{SweepLane})"/> that computes only the vocabulary entries
    /// <paramref name="logitColumns"/> of each lane's last-row logits (all of them when empty): returns
    /// [lanes.Length, columns] in the order given. A metric that reads a few logits (logit difference) then skips the
    /// rest of the unembedding, which is a full matrix-vector product over the vocabulary per lane. Each value equals the
    /// full unembedding's (same kernel arithmetic per output on out-major weights).
    /// </summary>
    public ReadOnlySpan<float> RunLanes(ReadOnlySpan<SweepLane> lanes, ReadOnlySpan<int> logitColumns)
    {
        foreach (int col in logitColumns)
            if ((uint)col >= (uint)Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(logitColumns), $"RunLanes: logit column {col} outside the vocabulary [0, {Config.VocabSize})");
        int B = lanes.Length;
        if (B == 0) throw new ArgumentException("RunLanes: no lanes", nameof(lanes));
        var c = Config;
        int D = c.DModel, V = c.VocabSize, totalRows = 0, laneCap = 0, minLayer = c.NLayers;
        bool laneHooks = false, attnTaps = Hooks.AnyAttentionTaps, lastRowOnly = false;
        for (int i = 0; i < B; i++)
        {
            var ln = lanes[i];
            CheckBase(ln.Base, ln.FirstLayer, ln.FromRow, $"{nameof(RunLanes)}: lane {i}");
            totalRows += ln.Base.Length - ln.FromRow;
            laneCap = Math.Max(laneCap, ln.Base.Length);
            minLayer = Math.Min(minLayer, ln.FirstLayer);
            lastRowOnly |= ln.LastRowOnly;
            if (ln.Hooks is { Count: > 0 } hs)
            {
                laneHooks = true;
                foreach (var h in hs)
                {
                    if (HookPoints.IsPerLayer(h.Kind) ? (uint)h.Layer >= (uint)c.NLayers : h.Kind is HookKind.Embed or HookKind.PosEmbed)
                        throw new ArgumentException($"RunLanes: lane {i}: hook {h.Kind} at layer {h.Layer} never fires in a lane");
                    if (!HookPoints.Exists(c, h.Kind)) throw new ArgumentException($"RunLanes: lane {i}: this {c.ModelType} model has no {h.Kind} tap");
                    attnTaps |= h.Kind is HookKind.AttnScores or HookKind.Pattern;
                    if (ln.FromZ && h.Layer == ln.FirstLayer && h.Kind < HookKind.Z)
                        throw new ArgumentException($"RunLanes: lane {i} starts at z of layer {h.Layer} but has a hook on {h.Kind} there, which would never fire");
                }
            }
        }
        if (attnTaps) EnsureAttentionSlots();
        if (_sweep == null || _sweep.Rows < totalRows || _sweep.Lanes < B || _sweep.LaneCapacity < laneCap)
        {
            int rows = Math.Max(totalRows, _sweep?.Rows ?? 0), nl = Math.Max(B, _sweep?.Lanes ?? 0), cap = Math.Max(laneCap, _sweep?.LaneCapacity ?? 0);
            _sweep?.Dispose();
            _sweep = null;
            _sweep = new Workspace(Backend, c, rows, nl, cap, logitRows: nl, sweep: true);
        }
        if (_sweepLanes.Length < B) { _sweepLanes = new Lane[B]; _sortKeys = new int[B]; }

        // Lanes sorted by first layer (stable), those starting at z after the others of their layer, so the lanes of a
        // layer are a prefix and their rows one block, and the lanes that skip its attention are that block's tail.
        var order = _sortKeys.AsSpan(0, B);
        for (int i = 0; i < B; i++) order[i] = i;
        var fromZ = _laneFromZ.Length >= B ? _laneFromZ : (_laneFromZ = new bool[B]);
        for (int i = 0; i < B; i++)
            fromZ[i] = lanes[i].FromZ && lanes[i].FirstLayer < c.NLayers && !SessionHooksBeforeZ(lanes[i].FirstLayer);
        for (int i = 1; i < B; i++)
        {
            int x = order[i], j = i - 1, keyX = 2 * lanes[x].FirstLayer + (fromZ[x] ? 1 : 0);
            while (j >= 0 && 2 * lanes[order[j]].FirstLayer + (fromZ[order[j]] ? 1 : 0) > keyX) { order[j + 1] = order[j]; j--; }
            order[j + 1] = x;
        }
        var ws = _sweep;
        var b = Backend;
        int row = 0;
        for (int i = 0; i < B; i++)
        {
            var ln = lanes[order[i]];
            int T = ln.Base.Length, rows = T - ln.FromRow;
            bool z = fromZ[order[i]];
            _sweepLanes[i] = new Lane
            {
                Row0 = row, Rows = rows, Pos0 = ln.FromRow, FirstLayer = ln.FirstLayer, Cache = i, Order = order[i], Hooks = ln.Hooks,
                LastRowOnly = ln.LastRowOnly, FromZ = z, ZFrom = z ? ln.Base.Z(ln.FirstLayer, ln.FromRow, rows) : default,
            };
            b.Copy(ln.Base.Resid(ln.FirstLayer, ln.FromRow, rows), ws.Span(ws.Resid, (long)row * D, rows * D));
            if (ln.FromRow > 0)
                for (int l = ln.FirstLayer + (z ? 1 : 0); l < c.NLayers; l++)   // a lane from z does not attend at its first layer
                {
                    b.Copy(ln.Base.Cache(false, l, 0, ln.FromRow), ws.CacheRows(ws.KCache, i, l, 0, ln.FromRow));
                    b.Copy(ln.Base.Cache(true, l, 0, ln.FromRow), ws.CacheRows(ws.VCache, i, l, 0, ln.FromRow));
                }
            row += rows;
        }
        _ws = ws;
        _lanes = _sweepLanes;
        _laneCount = B;
        _laneHooks = laneHooks;
        _lastRowOnly = lastRowOnly;
        try
        {
            for (int l = minLayer; l < c.NLayers; l++) Block(l);
            totalRows = _sweepLanes[B - 1].Row0 + _sweepLanes[B - 1].Rows;     // fewer when lanes kept only their last row
            var resid = ws.Span(ws.Resid, 0, totalRows * D);
            var lnf = ws.Span(ws.LnfNorm, 0, totalRows * D);
            var lnfScale = ws.Span(ws.LnfScale, 0, totalRows);
            Norm(resid, totalRows, Model.Weights.FinalNormWeight, Model.Weights.FinalNormBias, lnf, lnfScale);
            Fire(HookKind.LnFinalScale, -1, lnfScale, B, 1);
            Fire(HookKind.LnFinalNormalized, -1, lnf, B, D);
            var last = ws.Span(ws.LastRows, 0, B * D);
            for (int i = 0; i < B; i++)
            {
                ref readonly var lane = ref _sweepLanes[i];
                b.Copy(lnf.Slice((long)(lane.Row0 + lane.Rows - 1) * D, D), last.Slice((long)lane.Order * D, D));
            }
            if (!logitColumns.IsEmpty)
            {
                int C = logitColumns.Length;
                var selected = ws.Span(ws.Logits, 0, B * C);
                b.MatMul(last, B, SelectedUnembed(logitColumns), selected);
                return HostLogits(selected, ref _hostLaneLogits);
            }
            var logits = ws.Span(ws.Logits, 0, B * V);
            b.MatMul(last, B, Model.Weights.Unembed, logits);
            return HostLogits(logits, ref _hostLaneLogits);
        }
        finally
        {
            for (int i = 0; i < B; i++) { _sweepLanes[i].Hooks = null; _sweepLanes[i].ZFrom = default; }
            _ws = _main;
            _lanes = _mainLane;
            _laneCount = 1;
            _laneHooks = false;
            _lastRowOnly = false;
        }
    }
}
