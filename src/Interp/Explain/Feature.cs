using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp.Explain;

/// <summary>
/// What is explained: an FFN neuron (<c>blocks.L.mlp.hook_post[:, I]</c>) or a direction d in any per-position tap
/// (activation at position t = ⟨tap[t], d⟩ with the tap's row flattened, e.g. [n_heads·d_head] for attn.hook_z).
/// </summary>
public abstract record Feature
{
    /// <summary>Short name: "L3N17", "dir@blocks.2.hook_resid_post".</summary>
    public abstract string Label { get; }
    /// <summary>The full hook name the activation is read at.</summary>
    public abstract string Hook { get; }
    public abstract HookKind Kind { get; }
    public abstract int Layer { get; }

    /// <summary>The activation at one position, from the tap's row.</summary>
    public abstract float Activation(ReadOnlySpan<float> row);

    /// <summary>Ablates the feature in a row in place: the neuron set to 0, or the direction projected out (x − (x·d̂)d̂).</summary>
    public abstract void Ablate(Span<float> row);

    /// <summary>Checks the feature against a model; the message names the option.</summary>
    public abstract void Validate(ModelConfig c);
}

/// <summary>Neuron <see cref="Index"/> of layer <see cref="Layer"/>'s mlp.hook_post (what feeds W_out).</summary>
public sealed record NeuronFeature(int NeuronLayer, int Index) : Feature
{
    public override string Label => $"L{NeuronLayer}N{Index}";
    public override string Hook => HookPoints.Name(HookKind.MlpPost, NeuronLayer);
    public override HookKind Kind => HookKind.MlpPost;
    public override int Layer => NeuronLayer;
    public override float Activation(ReadOnlySpan<float> row) => row[Index];
    public override void Ablate(Span<float> row) => row[Index] = 0;

    public override void Validate(ModelConfig c)
    {
        if (NeuronLayer < 0 || NeuronLayer >= c.NLayers || Index < 0 || Index >= c.DMlp)
            throw new UsageException($"--neuron: {NeuronLayer}:{Index} is out of range (model has {c.NLayers} layers of {c.DMlp} MLP neurons)");
    }
}

/// <summary>A direction in a tap (<see cref="HookName"/>), read from a file or given.</summary>
public sealed record DirectionFeature(string HookName, float[] Direction, string Name) : Feature
{
    readonly HookKind _kind = Parse(HookName).Kind;
    readonly int _layer = Parse(HookName).Layer;
    readonly double _norm2 = Direction.Sum(x => (double)x * x);

    static (HookKind Kind, int Layer) Parse(string name)
    {
        if (!HookPoints.TryParse(name, out var k, out int l)) throw new UsageException($"--hook: '{name}' is not a hook name (e.g. blocks.3.hook_resid_post; see engine info)");
        return (k, l);
    }

    public override string Label => Name;
    public override string Hook => HookName;
    public override HookKind Kind => _kind;
    public override int Layer => _layer;

    public override float Activation(ReadOnlySpan<float> row)
    {
        double s = 0;
        for (int i = 0; i < Direction.Length; i++) s += (double)row[i] * Direction[i];
        return (float)s;
    }

    public override void Ablate(Span<float> row)
    {
        if (_norm2 == 0) return;
        double s = 0;
        for (int i = 0; i < Direction.Length; i++) s += (double)row[i] * Direction[i];
        double f = s / _norm2;
        for (int i = 0; i < Direction.Length; i++) row[i] = (float)(row[i] - f * Direction[i]);
    }

    public override void Validate(ModelConfig c)
    {
        if (!HookPoints.Exists(c, _kind) || (HookPoints.IsPerLayer(_kind) && (_layer < 0 || _layer >= c.NLayers)))
            throw new UsageException($"--hook: '{HookName}' does not exist in this {c.ModelType} model");
        if (_kind is HookKind.AttnScores or HookKind.Pattern)
            throw new UsageException($"--hook: '{HookName}' is not per position ([n_heads, T, T]); give a tap with one row per position");
        var shape = HookPoints.Shape(c, _kind, 1, 1);
        long width = shape.Elements;
        if (Direction.Length != width)
            throw new UsageException($"--direction: the direction has {Direction.Length} values, but a row of {HookName} has {width} ({shape})");
        if (_norm2 == 0) throw new UsageException("--direction: the direction is all zeros");
    }

    /// <summary>Reads tensor <c>direction</c> (any shape; flattened) from a safetensors file.</summary>
    public static DirectionFeature FromFile(string path, string hook)
    {
        if (!File.Exists(path)) throw new UsageException($"--direction: '{path}' does not exist");
        using var f = SafeTensorFile.Open(path);
        if (!f.Contains("direction")) throw new UsageException($"--direction: '{path}' has no tensor named 'direction' (it has: {string.Join(", ", f.Tensors.Keys)})");
        var v = f.View("direction").ToFloatArray();
        return new DirectionFeature(hook, v, $"dir:{Path.GetFileNameWithoutExtension(path)}@{hook}");
    }
}
