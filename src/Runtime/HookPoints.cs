using Engine.Loader;

namespace Engine.Runtime;

/// <summary>Every tap point of the forward pass (TransformerLens hook names). Per-layer kinds come first.</summary>
public enum HookKind
{
    // per layer: blocks.{L}.<suffix>
    ResidPre, Ln1Scale, Ln1Normalized, Q, K, V, RotQ, RotK, AttnScores, Pattern, Z, AttnOut, ResidMid,
    Ln2Scale, Ln2Normalized, MlpPre, MlpPreLinear, MlpPost, MlpOut, ResidPost,
    // global
    Embed, PosEmbed, LnFinalScale, LnFinalNormalized,
}

/// <summary>The shape of a tap for a run of T rows at positions Pos0.. (Tk = Pos0 + T keys).</summary>
public readonly record struct TapShape(int D0, int D1, int D2 = -1)
{
    public int Rank => D2 < 0 ? 2 : 3;
    public int[] ToArray() => Rank == 2 ? [D0, D1] : [D0, D1, D2];
    public long Elements => Rank == 2 ? (long)D0 * D1 : (long)D0 * D1 * D2;
    public override string ToString() => "[" + string.Join(", ", ToArray()) + "]";
}

/// <summary>Hook names, which exist for a model, and their shapes.</summary>
public static class HookPoints
{
    public const int PerLayerKinds = (int)HookKind.ResidPost + 1;

    public static bool IsPerLayer(HookKind k) => (int)k < PerLayerKinds;

    static readonly string[] Suffix =
    [
        "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k", "attn.hook_v",
        "attn.hook_rot_q", "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
        "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
        "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
        "hook_embed", "hook_pos_embed", "ln_final.hook_scale", "ln_final.hook_normalized",
    ];

    public static string SuffixOf(HookKind k) => Suffix[(int)k];

    public static string Name(HookKind kind, int layer) => IsPerLayer(kind) ? $"blocks.{layer}.{Suffix[(int)kind]}" : Suffix[(int)kind];

    /// <summary>TransformerLens's get_act_name shorthand: Act("resid_pre", 3) == "blocks.3.hook_resid_pre", Act("z", 2) == "blocks.2.attn.hook_z".</summary>
    public static string Act(string shortName, int layer)
    {
        foreach (HookKind k in Enum.GetValues<HookKind>())
        {
            string s = Suffix[(int)k];
            string bare = s[(s.LastIndexOf('.') + 1)..].Replace("hook_", "");
            string withPrefix = s.Contains('.') ? s[..s.IndexOf('.')] + "." + bare : bare;
            if (shortName == bare || shortName == s || shortName == withPrefix || shortName == s.Replace("hook_", ""))
                return Name(k, layer);
        }
        throw new UsageException($"unknown activation name '{shortName}'");
    }

    /// <summary>Parses a full hook name; false if it is not one.</summary>
    public static bool TryParse(string name, out HookKind kind, out int layer)
    {
        layer = -1; kind = default;
        if (name.StartsWith("blocks.", StringComparison.Ordinal))
        {
            int dot = name.IndexOf('.', 7);
            if (dot < 0 || !int.TryParse(name.AsSpan(7, dot - 7), System.Globalization.NumberStyles.None, null, out layer)) return false;
            string rest = name[(dot + 1)..];
            for (int k = 0; k < PerLayerKinds; k++)
                if (Suffix[k] == rest) { kind = (HookKind)k; return true; }
            return false;
        }
        for (int k = PerLayerKinds; k < Suffix.Length; k++)
            if (Suffix[k] == name) { kind = (HookKind)k; layer = -1; return true; }
        return false;
    }

    /// <summary>Whether the model produces this tap (depends on positions, residual layout and MLP kind, as in TransformerLens).</summary>
    public static bool Exists(ModelConfig c, HookKind k) => k switch
    {
        HookKind.PosEmbed => c.Positions == PositionKind.Learned,
        HookKind.RotQ or HookKind.RotK => c.Positions == PositionKind.Rotary,
        HookKind.ResidMid => !c.ParallelResidual,
        HookKind.MlpPreLinear => c.GatedMlp,
        _ => true,
    };

    /// <summary>All hook names of the model, in forward order.</summary>
    public static IReadOnlyList<string> All(ModelConfig c)
    {
        var list = new List<string>();
        void Add(HookKind k, int l) { if (Exists(c, k)) list.Add(Name(k, l)); }
        Add(HookKind.Embed, -1);
        Add(HookKind.PosEmbed, -1);
        for (int l = 0; l < c.NLayers; l++)
            for (int k = 0; k < PerLayerKinds; k++) Add((HookKind)k, l);
        Add(HookKind.LnFinalScale, -1);
        Add(HookKind.LnFinalNormalized, -1);
        return list;
    }

    /// <summary>Shape of a tap for T rows whose attention sees Tk keys.</summary>
    public static TapShape Shape(ModelConfig c, HookKind k, int rows, int keys) => k switch
    {
        HookKind.Ln1Scale or HookKind.Ln2Scale or HookKind.LnFinalScale => new(rows, 1),
        HookKind.Q or HookKind.RotQ or HookKind.Z => new(rows, c.NHeads, c.HeadDim),
        HookKind.K or HookKind.RotK or HookKind.V => new(rows, c.NKvHeads, c.HeadDim),
        HookKind.AttnScores or HookKind.Pattern => new(c.NHeads, rows, keys),
        HookKind.MlpPre or HookKind.MlpPreLinear or HookKind.MlpPost => new(rows, c.DMlp),
        _ => new(rows, c.DModel),
    };

    /// <summary>Matches a hook name against a comma-separated list of glob patterns ('*' matches any run of characters).</summary>
    public static Func<string, bool> GlobFilter(string patterns)
    {
        var parts = patterns.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return name => parts.Any(p => Glob(p, name));
    }

    public static bool Glob(string pattern, string text)
    {
        int p = 0, t = 0, star = -1, mark = 0;
        while (t < text.Length)
        {
            if (p < pattern.Length && (pattern[p] == '?' || pattern[p] == text[t])) { p++; t++; }
            else if (p < pattern.Length && pattern[p] == '*') { star = p++; mark = t; }
            else if (star >= 0) { p = star + 1; t = ++mark; }
            else return false;
        }
        while (p < pattern.Length && pattern[p] == '*') p++;
        return p == pattern.Length;
    }
}
