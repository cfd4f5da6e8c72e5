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
