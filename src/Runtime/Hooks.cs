using Engine.Kernels;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>
/// A tap: a view of the runtime's own buffer at one hook point, valid only during the hook call. Reading it costs
/// nothing; writing it changes what the rest of the forward pass reads (patching, ablation, steering).
/// Rows are positions Pos0 .. Pos0 + Rows - 1 (Pos0 &gt; 0 when a KV cache is being extended).
/// </summary>
public readonly ref struct Tap
{
    public readonly Span<float> Data;
    public readonly HookKind Kind;
    public readonly int Layer;
    public readonly string Name;
    public readonly TapShape Shape;
    public readonly int Pos0;

    public Tap(Span<float> data, HookKind kind, int layer, string name, TapShape shape, int pos0)
    {
        Data = data; Kind = kind; Layer = layer; Name = name; Shape = shape; Pos0 = pos0;
    }

    /// <summary>Rows of a [T, X] or [T, A, B] tap.</summary>
    public Span<float> Row(int t)
    {
        int stride = (int)(Shape.Elements / Shape.D0);
        return Data.Slice(t * stride, stride);
    }
}

/// <summary>A hook: reads and/or overwrites the tap in place.</summary>
public delegate void HookFn(Tap tap);

/// <summary>
/// One call of a tap as an edit resolved per call sees it (<see cref="HookRegistry.AddIntervention(HookKind, int, Func{TapCall, IEnumerable{DeviceIntervention}})"/>):
/// the hook point, the tap's shape, the absolute position of its first row (&gt; 0 when a KV cache is being extended,
/// e.g. 1 row at Pos0 = n in a decode step) and the [<see cref="Rows"/>, <see cref="Cols"/>] view that
/// <see cref="DeviceIntervention"/> blocks address (<see cref="HookRegistry.InterventionView"/>).
/// </summary>
public readonly record struct TapCall(HookKind Kind, int Layer, TapShape Shape, int Pos0)
{
    public static TapCall Of(Tap tap) => new(tap.Kind, tap.Layer, tap.Shape, tap.Pos0);

    /// <summary>[H, T, Tk] taps (attn_scores, pattern): view row r is head r / T, query position Pos0 + r % T.</summary>
    public bool IsAttentionMap => Kind is HookKind.AttnScores or HookKind.Pattern;

    public int Rows => HookRegistry.InterventionView(Kind, Shape).Rows;
    public int Cols => HookRegistry.InterventionView(Kind, Shape).Cols;

    /// <summary>Positions (query rows) in the call.</summary>
    public int Positions => IsAttentionMap ? Shape.D1 : Shape.D0;

    /// <summary>Floats in the tap.</summary>
    public long Elements => Shape.Elements;

    /// <summary>Absolute position of view row <paramref name="row"/>.</summary>
    public int PositionOf(int row) => Pos0 + (IsAttentionMap ? row % Shape.D1 : row);
}

/// <summary>
/// The hooks registered on a session, indexed by (kind, layer). Registration is scoped: dispose the returned handle
/// (or use <c>using</c>) to remove it. With no hooks registered the forward pass pays one array lookup per hook point.
/// </summary>
public sealed class HookRegistry
{
    readonly ModelConfig _config;
    readonly List<HookFn>?[] _slots;
    readonly string[] _names;
    int _count;
    int _attentionTaps;

    public HookRegistry(ModelConfig config)
    {
        _config = config;
        int n = config.NLayers * HookPoints.PerLayerKinds + (Enum.GetValues<HookKind>().Length - HookPoints.PerLayerKinds);
        _slots = new List<HookFn>?[n];
        _names = new string[n];
        foreach (HookKind k in Enum.GetValues<HookKind>())
        {
            if (HookPoints.IsPerLayer(k)) for (int l = 0; l < config.NLayers; l++) _names[Index(k, l)] = HookPoints.Name(k, l);
            else _names[Index(k, -1)] = HookPoints.Name(k, -1);
        }
    }

    int Index(HookKind k, int layer) =>
        HookPoints.IsPerLayer(k) ? layer * HookPoints.PerLayerKinds + (int)k : _config.NLayers * HookPoints.PerLayerKinds + ((int)k - HookPoints.PerLayerKinds);

    public int Count => _count;
    internal bool AnyAttentionTaps => _attentionTaps > 0;

    public string NameOf(HookKind k, int layer) => _names[Index(k, layer)];

    public bool Has(HookKind kind, int layer) => _slots[Index(kind, layer)] != null;

    /// <summary>Registers fn on one hook by its full name; unknown names and hooks this model lacks are errors.</summary>
    public IDisposable Add(string name, HookFn fn)
    {
        var (kind, layer) = Resolve(name);
        return Add(kind, layer, fn);
    }

    /// <summary>The hook point of a full hook name; unknown names and hooks this model lacks are errors.</summary>
    (HookKind Kind, int Layer) Resolve(string name)
    {
        if (!HookPoints.TryParse(name, out var kind, out int layer) || (layer >= _config.NLayers) || !HookPoints.Exists(_config, kind))
            throw new UsageException($"hook '{name}' does not exist in this {_config.ModelType} model (see `engine info` for the list)");
        return (kind, layer);
    }

    /// <summary>Registers fn on every hook whose name passes the filter; returns one handle for all.</summary>
    public IDisposable AddWhere(Func<string, bool> filter, HookFn fn)
    {
        var handles = new List<IDisposable>();
        foreach (var name in HookPoints.All(_config))
            if (filter(name)) { HookPoints.TryParse(name, out var k, out int l); handles.Add(Add(k, l, fn)); }
        return new Handle(() => { foreach (var h in handles) h.Dispose(); });
    }

    public IDisposable Add(HookKind kind, int layer, HookFn fn)
    {
        if (HookPoints.IsPerLayer(kind) && (layer < 0 || layer >= _config.NLayers))
            throw new UsageException($"layer {layer} is out of range (model has {_config.NLayers} layers)");
        if (!HookPoints.Exists(_config, kind))
            throw new UsageException($"hook '{HookPoints.Name(kind, Math.Max(layer, 0))}' does not exist in this {_config.ModelType} model");
        int i = Index(kind, layer);
        (_slots[i] ??= []).Add(fn);
        _count++;
        bool attn = kind is HookKind.AttnScores or HookKind.Pattern;
        if (attn) _attentionTaps++;
        return new Handle(() =>
        {
            var list = _slots[i];
            if (list != null && list.Remove(fn))
            {
                _count--;
                if (attn) _attentionTaps--;
                if (list.Count == 0) _slots[i] = null;
            }
        });
    }

    /// <summary>
    /// Registers an edit of one tap that the backend runs where the tap lives (<see cref="IDeviceInterventions"/>): zero,
    /// scale, add or set a [rows, cols] block (see <see cref="DeviceIntervention"/> for how a tap is viewed as rows and
    /// columns). On a GPU backend a tap whose hooks are all interventions is never copied to the host. It runs in
    /// registration order with the other hooks of the tap; on host backends it is the same as a hook calling
    /// <see cref="DeviceIntervention.ApplyHost"/>.
    /// </summary>
    public IDisposable AddIntervention(HookKind kind, int layer, DeviceIntervention intervention) =>
        Add(kind, layer, new InterventionHook(intervention).Fire);

    /// <inheritdoc cref="AddIntervention(HookKind, int, DeviceIntervention)"/>
    public IDisposable AddIntervention(string name, DeviceIntervention intervention)
    {
        var (kind, layer) = Resolve(name);
        return AddIntervention(kind, layer, intervention);
    }

    /// <summary>
    /// Registers an edit whose blocks depend on the call: <paramref name="resolve"/> gets the call's hook point, shape and
    /// first position (<see cref="TapCall"/>) and returns the <see cref="DeviceIntervention"/> blocks to apply, in order
    /// (none: no change). This is how an edit selects absolute positions, prompt vs generated tokens, or a head, and keeps
    /// working in generation through the KV cache. Like the fixed form it is an intervention: on a GPU backend a tap
    /// whose hooks are all interventions is never copied to the host; on host backends each block's
    /// <see cref="DeviceIntervention.ApplyHost"/> runs on the tap. <paramref name="resolve"/> must be a function of the
    /// call alone: its blocks are kept per (Pos0, shape) and reused by later calls of the same shape (a few calls are
    /// kept, so repeated runs and prompts allocate nothing); value arrays should be reused too, a device backend
    /// uploads each array once.
    /// </summary>
    public IDisposable AddIntervention(HookKind kind, int layer, Func<TapCall, IEnumerable<DeviceIntervention>> resolve) =>
        Add(kind, layer, new InterventionHook(resolve).Fire);

    /// <inheritdoc cref="AddIntervention(HookKind, int, Func{TapCall, IEnumerable{DeviceIntervention}})"/>
    public IDisposable AddIntervention(string name, Func<TapCall, IEnumerable<DeviceIntervention>> resolve)
    {
        var (kind, layer) = Resolve(name);
        return AddIntervention(kind, layer, resolve);
    }

    /// <summary>A tap viewed as [rows, cols]: [T, D] and [T, H, d] taps by position (cols = D or H·d); [H, T, Tk] taps (scores, pattern) as [H·T, Tk].</summary>
    public static (int Rows, int Cols) InterventionView(HookKind kind, TapShape shape) =>
        kind is HookKind.AttnScores or HookKind.Pattern ? (shape.D0 * shape.D1, shape.D2) : (shape.D0, (int)(shape.Elements / Math.Max(1, shape.D0)));

    /// <summary>An intervention hook: one fixed block, or blocks resolved per call (kept for the last few call shapes).</summary>
    sealed class InterventionHook
    {
        const int KeptCalls = 32;
        readonly DeviceIntervention[]? _fixed;
        readonly Func<TapCall, IEnumerable<DeviceIntervention>>? _resolve;
        readonly Dictionary<TapCall, DeviceIntervention[]>? _kept;

        public InterventionHook(DeviceIntervention intervention) => _fixed = [intervention];

        public InterventionHook(Func<TapCall, IEnumerable<DeviceIntervention>> resolve)
        {
            _resolve = resolve;
            _kept = [];
        }

        public DeviceIntervention[] Blocks(in TapCall call)
        {
            if (_fixed != null) return _fixed;
            if (_kept!.TryGetValue(call, out var blocks)) return blocks;
            blocks = _resolve!(call).ToArray();
            if (_kept.Count >= KeptCalls) _kept.Clear();   // e.g. a long generation: every decode step is a new Pos0
            _kept[call] = blocks;
            return blocks;
        }

        public void Fire(Tap tap)
        {
            var call = TapCall.Of(tap);
            var (rows, cols) = InterventionView(tap.Kind, tap.Shape);
            foreach (var iv in Blocks(call)) iv.ApplyHost(tap.Data, rows, cols);
        }
    }

    /// <summary>
    /// Fills <paramref name="into"/> with the intervention blocks of one call of a tap when every hook registered there
    /// is an intervention (so the backend can run them all without a host copy); false when a host hook is among them.
    /// </summary>
    internal bool TryInterventionsOnly(in TapCall call, List<DeviceIntervention> into)
    {
        into.Clear();
        var list = _slots[Index(call.Kind, call.Layer)];
        if (list == null) return false;
        foreach (var fn in list)
            if (fn.Target is not InterventionHook) return false;
        foreach (var fn in list) into.AddRange(((InterventionHook)fn.Target!).Blocks(call));
        return true;
    }

    /// <summary>Removes every hook.</summary>
    public void Clear()
    {
        Array.Clear(_slots);
        _count = 0;
        _attentionTaps = 0;
    }

    internal void Fire(HookKind kind, int layer, Span<float> data, TapShape shape, int pos0)
    {
        var list = _slots[Index(kind, layer)];
        if (list == null) return;
        var tap = new Tap(data, kind, layer, _names[Index(kind, layer)], shape, pos0);
        for (int i = 0; i < list.Count; i++) list[i](tap);
    }

    sealed class Handle(Action dispose) : IDisposable
    {
        Action? _dispose = dispose;
        public void Dispose() { _dispose?.Invoke(); _dispose = null; }
    }
}
