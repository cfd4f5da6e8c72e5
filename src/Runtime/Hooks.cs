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
        if (!HookPoints.TryParse(name, out var kind, out int layer) || (layer >= _config.NLayers) || !HookPoints.Exists(_config, kind))
            throw new UsageException($"hook '{name}' does not exist in this {_config.ModelType} model (see `engine info` for the list)");
        return Add(kind, layer, fn);
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
        if (!HookPoints.TryParse(name, out var kind, out int layer) || (layer >= _config.NLayers) || !HookPoints.Exists(_config, kind))
            throw new UsageException($"hook '{name}' does not exist in this {_config.ModelType} model (see `engine info` for the list)");
        return AddIntervention(kind, layer, intervention);
    }

    /// <summary>A tap viewed as [rows, cols]: [T, D] and [T, H, d] taps by position (cols = D or H·d); [H, T, Tk] taps (scores, pattern) as [H·T, Tk].</summary>
    public static (int Rows, int Cols) InterventionView(HookKind kind, TapShape shape) =>
        kind is HookKind.AttnScores or HookKind.Pattern ? (shape.D0 * shape.D1, shape.D2) : (shape.D0, (int)(shape.Elements / Math.Max(1, shape.D0)));

    sealed class InterventionHook(DeviceIntervention intervention)
    {
        public DeviceIntervention Intervention { get; } = intervention;

        public void Fire(Tap tap)
        {
            var (rows, cols) = InterventionView(tap.Kind, tap.Shape);
            Intervention.ApplyHost(tap.Data, rows, cols);
        }
    }

    /// <summary>
    /// Fills <paramref name="into"/> with the interventions of one tap when every hook registered there is one (so the
    /// backend can run them all without a host copy); false when a host hook is among them.
    /// </summary>
    internal bool TryInterventionsOnly(HookKind kind, int layer, List<DeviceIntervention> into)
    {
        into.Clear();
        var list = _slots[Index(kind, layer)];
        if (list == null) return false;
        foreach (var fn in list)
        {
            if (fn.Target is not InterventionHook ih) { into.Clear(); return false; }
            into.Add(ih.Intervention);
        }
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
