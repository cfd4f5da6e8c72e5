using Engine.Loader;

namespace Engine.Training;

/// <summary>One parameter tensor inside the flat parameter array: its name, offset, shape, and whether AdamW decays it.</summary>
public sealed record ParamInfo(string Name, long Offset, int[] Shape, bool Decay)
{
    public int Count => Shape.Aggregate(1, (a, b) => a * b);
    public override string ToString() => $"{Name} [{string.Join(", ", Shape)}]";
}

/// <summary>
/// Where every parameter of a model lives in one flat array (so the optimizer, clipping and zeroing are one loop).
/// The layout is canonical for all families (matrices out-major [Out, In], like nn.Linear):
/// <c>embed</c> [V, D]; <c>pos</c> [ctx, D] (learned positions); per layer L: <c>L.ln1.w/b</c>, <c>L.qkv.w</c>
/// [H·d + 2·K·d, D] (rows q, then k, then v; HF names are produced on save), <c>L.qkv.b</c>, <c>L.o.w</c> [D, H·d],
/// <c>L.o.b</c>, <c>L.ln2.w/b</c>, <c>L.in.w</c> [M, D] or, gated, [2M, D] (gate rows then up rows), <c>L.in.b</c>,
/// <c>L.out.w</c> [D, M], <c>L.out.b</c>; <c>lnf.w/b</c>; <c>unembed</c> [V, D] unless tied.
/// Norm biases exist for LayerNorm only; projection biases as the config's flags say.
/// </summary>
public sealed class ParameterLayout
{
    readonly Dictionary<string, ParamInfo> _byName = new(StringComparer.Ordinal);
    public IReadOnlyList<ParamInfo> Params { get; }
    public long Total { get; }
    public ModelConfig Config { get; }
    /// <summary>Rows of the learned position table (the context length).</summary>
    public int PositionRows { get; }

    public ParameterLayout(ModelConfig c, int? positionRows = null)
    {
        Config = c;
        PositionRows = positionRows ?? c.ContextLength;
        var list = new List<ParamInfo>();
        long off = 0;
        void Add(string name, bool decay, params int[] shape)
        {
            var p = new ParamInfo(name, off, shape, decay);
            list.Add(p); _byName[name] = p;
            off += p.Count;
        }
        int d = c.DModel, m = c.DMlp, qkv = c.QDim + 2 * c.KvDim;
        Add("embed", true, c.VocabSize, d);
        if (c.Positions == PositionKind.Learned) Add("pos", true, PositionRows, d);
        for (int l = 0; l < c.NLayers; l++)
        {
            Add($"{l}.ln1.w", false, d);
            if (c.NormBias) Add($"{l}.ln1.b", false, d);
            Add($"{l}.qkv.w", true, qkv, d);
            if (c.QkvBias) Add($"{l}.qkv.b", false, qkv);
            Add($"{l}.o.w", true, d, c.QDim);
            if (c.OutBias) Add($"{l}.o.b", false, d);
            Add($"{l}.ln2.w", false, d);
            if (c.NormBias) Add($"{l}.ln2.b", false, d);
            Add($"{l}.in.w", true, c.GatedMlp ? 2 * m : m, d);
            if (c.MlpBias) Add($"{l}.in.b", false, c.GatedMlp ? 2 * m : m);
            Add($"{l}.out.w", true, d, m);
            if (c.MlpBias) Add($"{l}.out.b", false, d);
        }
        Add("lnf.w", false, d);
        if (c.NormBias) Add("lnf.b", false, d);
        if (!c.TiedEmbeddings) Add("unembed", true, c.VocabSize, d);
        Params = list;
        Total = off;
        if (Total > int.MaxValue / 2) throw new ArgumentException($"model too large for the training engine ({Total} parameters)");
    }

    public ParamInfo this[string name] => _byName.TryGetValue(name, out var p) ? p : throw new KeyNotFoundException($"no parameter '{name}'");
    public bool Has(string name) => _byName.ContainsKey(name);
    public ParamInfo? Find(string name) => _byName.GetValueOrDefault(name);

    /// <summary>The parameter's slice of a flat array laid out by this layout.</summary>
    public Span<T> Slice<T>(T[] flat, string name) { var p = this[name]; return flat.AsSpan((int)p.Offset, p.Count); }
    public Span<T> Slice<T>(T[] flat, ParamInfo p) => flat.AsSpan((int)p.Offset, p.Count);
    /// <summary>The parameter's slice, or an empty span when the model has no such parameter (e.g. biases).</summary>
    public Span<T> SliceOrEmpty<T>(T[] flat, string name) => _byName.TryGetValue(name, out var p) ? flat.AsSpan((int)p.Offset, p.Count) : Span<T>.Empty;
}
