using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>
/// A component of one tap that noise and interventions act on: the whole tap, or one index of it — a head of a
/// [T, heads, d] tap (q, k, v, z, rot_q, rot_k) or of an [H, Tq, Tk] tap (pattern, attn_scores), or a column of a [T, X]
/// tap (an MLP neuron of mlp.hook_post, one dimension of the residual stream). <see cref="Positions"/> are absolute
/// positions (rows; the destination row for attention maps); null = every position.
/// </summary>
public sealed record TapSelection(HookKind Kind, int Layer, int? Index = null, IReadOnlyCollection<int>? Positions = null)
{
    public string HookName => HookPoints.Name(Kind, Layer);

    public bool IsAttentionMap => Kind is HookKind.Pattern or HookKind.AttnScores;

    /// <summary>What the index means for this tap: "head", "kv_head" or "index".</summary>
    public string IndexAxis => Kind switch
    {
        HookKind.Q or HookKind.RotQ or HookKind.Z or HookKind.Pattern or HookKind.AttnScores => "head",
        HookKind.K or HookKind.RotK or HookKind.V => "kv_head",
        _ => "index",
    };

    public string Label
    {
        get
        {
            string s = HookName;
            if (Index is int i) s += IndexAxis == "index" ? $"[{i}]" : $" {IndexAxis} {i}";
            if (Positions != null) s += " @ pos " + string.Join(",", Positions.Order());
            return s;
        }
    }

    /// <summary>A neuron of blocks.L.mlp.hook_post.</summary>
    public static TapSelection Neuron(int layer, int index, IReadOnlyCollection<int>? positions = null) => new(HookKind.MlpPost, layer, index, positions);

    /// <summary>A head's slice of blocks.L.attn.hook_z (its output before the O-projection).</summary>
    public static TapSelection Head(int layer, int head, IReadOnlyCollection<int>? positions = null) => new(HookKind.Z, layer, head, positions);

    /// <summary>Parses a full hook name ("hook_embed", "blocks.2.attn.hook_z", ...) against the model; errors name the option.</summary>
    public static (HookKind Kind, int Layer) ParseHook(ModelConfig c, string name, string option)
    {
        if (!HookPoints.TryParse(name.Trim(), out var kind, out int layer))
            throw new UsageException($"{option}: '{name}' is not a hook name (e.g. hook_embed, blocks.0.hook_resid_pre, blocks.1.attn.hook_z, blocks.1.mlp.hook_post; see `engine info`)");
        if (HookPoints.IsPerLayer(kind) && (layer < 0 || layer >= c.NLayers))
            throw new UsageException($"{option}: layer {layer} of '{name}' is out of range (the model has {c.NLayers} layers)");
        if (!HookPoints.Exists(c, kind))
            throw new UsageException($"{option}: this {c.ModelType} model has no {HookPoints.SuffixOf(kind)}" +
                (kind == HookKind.ResidMid ? " (parallel residual: use resid_pre or resid_post)" : ""));
        if (kind is HookKind.Ln1Scale or HookKind.Ln2Scale or HookKind.LnFinalScale)
            throw new UsageException($"{option}: '{name}' is a norm scale, not an activation");
        return (kind, layer);
    }

    /// <summary>Checks the index against the model (option names the CLI option for the message).</summary>
    public void Validate(ModelConfig c, string option)
    {
        if (HookPoints.IsPerLayer(Kind) && (Layer < 0 || Layer >= c.NLayers))
            throw new UsageException($"{option}: layer {Layer} is out of range (the model has {c.NLayers} layers)");
        if (!HookPoints.Exists(c, Kind)) throw new UsageException($"{option}: this {c.ModelType} model has no {HookPoints.SuffixOf(Kind)}");
        if (Index is int i)
        {
            var shape = HookPoints.Shape(c, Kind, 1, 1);
            int n = IsAttentionMap ? c.NHeads : shape.D1;
            if (i < 0 || i >= n) throw new UsageException($"{option}: {IndexAxis} {i} of {HookName} is out of range [0, {n})");
        }
        if (Positions != null)
            foreach (int p in Positions)
                if (p < 0) throw new UsageException($"{option}: position {p} must not be negative");
    }

    /// <summary>Whether absolute position p is selected.</summary>
    public bool Covers(int p) => Positions == null || Positions.Contains(p);

    /// <summary>The contiguous pieces (offset, length, absolute position) of a tap of this shape (first row at pos0) that the selection covers.</summary>
    public List<(int Offset, int Length, int Position)> Segments(TapShape shape, int pos0, Func<int, bool>? positionFilter = null)
    {
        var list = new List<(int, int, int)>();
        bool Want(int p) => Covers(p) && (positionFilter == null || positionFilter(p));
        if (IsAttentionMap)
        {
            int heads = shape.D0, rows = shape.D1, keys = shape.D2;
            for (int h = 0; h < heads; h++)
            {
                if (Index is int hi && hi != h) continue;
                for (int t = 0; t < rows; t++)
                    if (Want(pos0 + t)) list.Add(((h * rows + t) * keys, keys, pos0 + t));
            }
            return list;
        }
        int n = shape.D0;
        if (shape.Rank == 2)
        {
            int width = shape.D1;
            for (int t = 0; t < n; t++)
            {
                if (!Want(pos0 + t)) continue;
                if (Index is int i) list.Add((t * width + i, 1, pos0 + t));
                else list.Add((t * width, width, pos0 + t));
            }
            return list;
        }
        int nh = shape.D1, d = shape.D2;
        for (int t = 0; t < n; t++)
        {
            if (!Want(pos0 + t)) continue;
            if (Index is int h) list.Add(((t * nh + h) * d, d, pos0 + t));
            else list.Add((t * nh * d, nh * d, pos0 + t));
        }
        return list;
    }

    /// <summary>The selection's values in a cached (full-run, pos0 = 0) tensor, all positions of the selection.</summary>
    public double[] Values(CachedTensor t)
    {
        var shape = t.Shape.Length == 2 ? new TapShape(t.Shape[0], t.Shape[1]) : new TapShape(t.Shape[0], t.Shape[1], t.Shape[2]);
        var vals = new List<double>();
        foreach (var (o, len, _) in Segments(shape, 0))
            for (int j = 0; j < len; j++) vals.Add(t.Data[o + j]);
        return vals.ToArray();
    }
}

/// <summary>The measured quantity at the last position P: prob, logprob or logit of a target, or logit[target] − logit[wrong].</summary>
public enum OutputMetric { Prob, LogProb, Logit, LogitDiff }

/// <summary>A metric and its tokens.</summary>
public readonly record struct MetricSpec(OutputMetric Kind, int Target, int Wrong = -1)
{
    public double Of(ReadOnlySpan<float> last) => Kind switch
    {
        OutputMetric.Prob => InterpMath.Prob(last, Target),
        OutputMetric.LogProb => InterpMath.LogProb(last, Target),
        OutputMetric.Logit => last[Target],
        OutputMetric.LogitDiff => (double)last[Target] - last[Wrong],
        _ => throw new ArgumentOutOfRangeException(nameof(Kind)),
    };

    public string Name => NameOf(Kind);

    /// <summary>The logits the metric reads when it reads only a few (logit, logit_diff); null when it needs them all.</summary>
    public int[]? LogitColumns => Kind switch
    {
        OutputMetric.Logit => [Target],
        OutputMetric.LogitDiff => [Target, Wrong],
        _ => null,
    };

    /// <summary>The metric of the values of <see cref="LogitColumns"/> (in that order).</summary>
    public double OfColumns(ReadOnlySpan<float> selected) => Kind switch
    {
        OutputMetric.Logit => selected[0],
        OutputMetric.LogitDiff => (double)selected[0] - selected[1],
        _ => throw new InvalidOperationException($"the {Name} metric reads every logit"),
    };

    public static string NameOf(OutputMetric k) => k switch
    {
        OutputMetric.Prob => "prob", OutputMetric.LogProb => "logprob", OutputMetric.Logit => "logit", OutputMetric.LogitDiff => "logit_diff",
        _ => k.ToString(),
    };

    public static OutputMetric Parse(string s, string option) => s switch
    {
        "prob" => OutputMetric.Prob, "logprob" => OutputMetric.LogProb, "logit" => OutputMetric.Logit, "logit_diff" => OutputMetric.LogitDiff,
        _ => throw new UsageException($"{option}: '{s}' is not one of prob, logprob, logit, logit_diff"),
    };
}
