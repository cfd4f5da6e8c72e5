using System.Text.Json;

namespace Engine.Loader;

public enum NormKind { LayerNorm, RmsNorm }
public enum ActivationKind { GeluTanh, GeluErf, Silu, Relu, QuickGelu }
public enum PositionKind { Learned, Rotary }

/// <summary>How the attention input projections are stored.</summary>
public enum QkvLayout
{
    /// <summary>Three matrices q_proj, k_proj, v_proj.</summary>
    Separate,
    /// <summary>One fused matrix whose outputs are [q (H*d) | k (K*d) | v (K*d)] (GPT-2 c_attn).</summary>
    FusedConcat,
    /// <summary>One fused matrix whose outputs are viewed [H, 3, d]: per head q, k, v (GPT-NeoX query_key_value).</summary>
    FusedPerHead,
}

/// <summary>RoPE frequency scaling (config rope_scaling).</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor, double HighFreqFactor, int OriginalContext);

/// <summary>
/// The immutable description of a transformer checkpoint, resolved from config.json. Every architectural difference
/// between the supported families is a field here; the runtime's one block implementation reads only these fields.
/// </summary>
public sealed record ModelConfig
{
    public required string ModelType { get; init; }
    public required int NLayers { get; init; }
    public required int DModel { get; init; }
    public required int NHeads { get; init; }
    public required int NKvHeads { get; init; }
    public required int HeadDim { get; init; }
    public required int DMlp { get; init; }
    public required int VocabSize { get; init; }
    /// <summary>Longest sequence the model accepts (n_positions / max_position_embeddings).</summary>
    public required int ContextLength { get; init; }

    public required NormKind Norm { get; init; }
    public required float NormEps { get; init; }
    /// <summary>RMSNorm multiplies by (offset + w): 1 for Gemma, 0 otherwise.</summary>
    public float NormWeightOffset { get; init; }

    public required ActivationKind Activation { get; init; }
    /// <summary>MLP = down(act(gate(x)) * up(x)) instead of out(act(in(x))).</summary>
    public bool GatedMlp { get; init; }

    public required PositionKind Positions { get; init; }
    /// <summary>Number of leading head dimensions RoPE rotates (rotate_half pairs i, i+RotaryDim/2).</summary>
    public int RotaryDim { get; init; }
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX) instead of two sequential residual adds.</summary>
    public bool ParallelResidual { get; init; }
    /// <summary>Unembedding = token-embedding matrix.</summary>
    public bool TiedEmbeddings { get; init; }
    /// <summary>Token embeddings are multiplied by this (Gemma: float32(sqrt(DModel))), 1 otherwise.</summary>
    public float EmbedScale { get; init; } = 1f;
    /// <summary>Attention scores = q.k * AttnScale (/ (layer+1) when ScaleAttnByInverseLayer).</summary>
    public required float AttnScale { get; init; }
    public bool ScaleAttnByInverseLayer { get; init; }

    public bool QkvBias { get; init; }
    public bool OutBias { get; init; }
    public bool MlpBias { get; init; }
    public bool NormBias => Norm == NormKind.LayerNorm;
    public QkvLayout QkvLayout { get; init; }
    /// <summary>Weights stored [in, out] (GPT-2 Conv1D) rather than nn.Linear's [out, in].</summary>
    public bool InputMajorWeights { get; init; }

    public int? BosTokenId { get; init; }
    public int[] EosTokenIds { get; init; } = [];
    public string? TorchDType { get; init; }

    public int QDim => NHeads * HeadDim;
    public int KvDim => NKvHeads * HeadDim;
    public int GroupSize => NHeads / NKvHeads;

    public float LayerAttnScale(int layer) => ScaleAttnByInverseLayer ? AttnScale / (layer + 1) : AttnScale;

    /// <summary>Reads and resolves config.json. Errors name the file and the key.</summary>
    public static ModelConfig Load(string configPath)
    {
        if (!File.Exists(configPath)) throw new ModelConfigException($"{configPath}: file not found");
        byte[] bytes;
        try { bytes = File.ReadAllBytes(configPath); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelConfigException($"{configPath}: cannot read ({e.Message})"); }
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new ModelConfigException($"{configPath}: not valid UTF-8 JSON");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 64, AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new ModelConfigException($"{configPath}: not valid JSON ({e.Message.Split('\n')[0]})"); }
        catch (ArgumentException e) { throw new ModelConfigException($"{configPath}: not valid UTF-8 JSON ({e.Message.Split('\n')[0]})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ModelConfigException($"{configPath}: must be a JSON object");
            return FromJson(new ConfigReader(configPath, doc.RootElement));
        }
    }

    public static ModelConfig FromJson(ConfigReader c)
    {
        string type = c.String("model_type") ?? throw c.Error("model_type", "missing");
        var cfg = type switch
        {
            "gpt2" => Gpt2(c),
            "llama" or "mistral" => Llama(c, type),
            "qwen2" => Llama(c, type),
            "gemma" => Gemma(c),
            "gpt_neox" => NeoX(c),
            _ => throw c.Error("model_type", $"unsupported model_type '{type}' (supported: gpt2, llama, mistral, qwen2, gemma, gpt_neox)"),
        };
        cfg.Validate(c);
        return cfg;
    }

    /// <summary>Most layers a configuration may declare (the deepest released models have under 200).</summary>
    public const int MaxLayers = 4096;

    /// <summary>The key of config.json that holds a dimension in this family (GPT-2 and GPT-NeoX name some differently).</summary>
    string KeyOf(string key) => (ModelType, key) switch
    {
        ("gpt2", "num_hidden_layers") => "n_layer",
        ("gpt2", "hidden_size") => "n_embd",
        ("gpt2", "num_attention_heads" or "num_key_value_heads" or "head_dim") => "n_head",
        ("gpt2", "intermediate_size") => "n_inner",
        ("gpt2", "max_position_embeddings") => "n_positions",
        ("gpt2", "eps") => "layer_norm_epsilon",
        ("gpt_neox", "eps") => "layer_norm_eps",
        ("gpt_neox", "num_key_value_heads" or "head_dim") => "num_attention_heads",
        (_, "eps") => "rms_norm_eps",
        ("gpt_neox", "rotary") => "rotary_pct",
        (_, "rotary") => "head_dim",
        _ => key,
    };

    void Validate(ConfigReader c)
    {
        void Positive(string key, int v) { if (v <= 0) throw c.Error(KeyOf(key), $"must be positive (got {v})"); }
        Positive("num_hidden_layers", NLayers); Positive("hidden_size", DModel); Positive("num_attention_heads", NHeads);
        Positive("num_key_value_heads", NKvHeads); Positive("head_dim", HeadDim); Positive("intermediate_size", DMlp);
        Positive("vocab_size", VocabSize); Positive("max_position_embeddings", ContextLength);
        if (NLayers > MaxLayers) throw c.Error(KeyOf("num_hidden_layers"), $"{NLayers} layers is more than the supported {MaxLayers}");
        if (NHeads % NKvHeads != 0) throw c.Error("num_key_value_heads", $"{NKvHeads} does not divide num_attention_heads {NHeads}");
        if (Positions == PositionKind.Rotary && (RotaryDim <= 0 || RotaryDim % 2 != 0 || RotaryDim > HeadDim))
            throw c.Error(KeyOf("rotary"), $"rotary dimension {RotaryDim} must be even and in (0, head_dim={HeadDim}]");
        if (!(NormEps > 0) || float.IsInfinity(NormEps)) throw c.Error(KeyOf("eps"), $"norm epsilon must be positive (got {NormEps})");
        // Refuse sizes whose activation buffers could not be indexed with 32-bit spans.
        long widest = Math.Max(Math.Max((long)DModel, DMlp), Math.Max((long)QDim + 2L * KvDim, VocabSize));
        if (widest * 16 > int.MaxValue || (long)NLayers * DModel > int.MaxValue) throw c.Error(KeyOf("hidden_size"), "model dimensions are too large");
    }

    static ModelConfig Gpt2(ConfigReader c)
    {
        int d = c.Int("n_embd") ?? throw c.Error("n_embd", "missing");
        int h = c.Int("n_head") ?? throw c.Error("n_head", "missing");
        if (h <= 0 || d % h != 0) throw c.Error("n_head", $"{h} does not divide n_embd {d}");
        int headDim = d / h;
        bool scale = c.Bool("scale_attn_weights") ?? true;
        return new ModelConfig
        {
            ModelType = "gpt2",
            NLayers = c.Int("n_layer") ?? throw c.Error("n_layer", "missing"),
            DModel = d, NHeads = h, NKvHeads = h, HeadDim = headDim,
            DMlp = c.Int("n_inner") ?? (int)Math.Min(4L * d, int.MaxValue),
            VocabSize = c.Int("vocab_size") ?? 50257,
            ContextLength = c.Int("n_positions") ?? c.Int("n_ctx") ?? 1024,
            Norm = NormKind.LayerNorm,
            NormEps = (float)(c.Double("layer_norm_epsilon") ?? 1e-5),
            Activation = ParseActivation(c, "activation_function", c.String("activation_function") ?? "gelu_new"),
            Positions = PositionKind.Learned,
            TiedEmbeddings = true,
            AttnScale = scale ? (float)(1.0 / Math.Sqrt(headDim)) : 1f,
            ScaleAttnByInverseLayer = c.Bool("scale_attn_by_inverse_layer_idx") ?? false,
            QkvBias = true, OutBias = true, MlpBias = true,
            QkvLayout = QkvLayout.FusedConcat,
            InputMajorWeights = true,
            BosTokenId = c.Int("bos_token_id"),
            EosTokenIds = c.IntOrList("eos_token_id"),
            TorchDType = c.String("torch_dtype"),
        };
    }

    static ModelConfig Llama(ConfigReader c, string type)
    {
        int d = c.Int("hidden_size") ?? throw c.Error("hidden_size", "missing");
        int h = c.Int("num_attention_heads") ?? throw c.Error("num_attention_heads", "missing");
        int headDim = c.Int("head_dim") ?? (h > 0 ? d / h : 0);
        if (c.Int("head_dim") == null && (h <= 0 || d % h != 0)) throw c.Error("num_attention_heads", $"{h} does not divide hidden_size {d}");
        bool attnBias = c.Bool("attention_bias") ?? false;
        int context = c.Int("max_position_embeddings") ?? 2048;
        // Sliding-window attention only differs from full attention beyond the window: cap the context there.
        if (type == "mistral" && c.Int("sliding_window") is int w && w > 0) context = Math.Min(context, w);
        return new ModelConfig
        {
            ModelType = type,
            NLayers = c.Int("num_hidden_layers") ?? throw c.Error("num_hidden_layers", "missing"),
            DModel = d, NHeads = h,
            NKvHeads = c.Int("num_key_value_heads") ?? h,
            HeadDim = headDim,
            DMlp = c.Int("intermediate_size") ?? throw c.Error("intermediate_size", "missing"),
            VocabSize = c.Int("vocab_size") ?? throw c.Error("vocab_size", "missing"),
            ContextLength = context,
            Norm = NormKind.RmsNorm,
            NormEps = (float)(c.Double("rms_norm_eps") ?? 1e-6),
            Activation = ParseActivation(c, "hidden_act", c.String("hidden_act") ?? "silu"),
            GatedMlp = true,
            Positions = PositionKind.Rotary,
            RotaryDim = headDim,
            RopeTheta = c.Double("rope_theta") ?? 10000.0,
            RopeScaling = ParseRopeScaling(c),
            TiedEmbeddings = c.Bool("tie_word_embeddings") ?? false,
            AttnScale = (float)(1.0 / Math.Sqrt(headDim)),
            QkvBias = type == "qwen2" || attnBias,
            OutBias = type != "qwen2" && attnBias,
            MlpBias = c.Bool("mlp_bias") ?? false,
            QkvLayout = QkvLayout.Separate,
            BosTokenId = c.Int("bos_token_id"),
            EosTokenIds = c.IntOrList("eos_token_id"),
            TorchDType = c.String("torch_dtype"),
        };
    }

    static ModelConfig Gemma(ConfigReader c)
    {
        var baseCfg = Llama(c, "gemma");
        // Gemma: (1 + w) RMSNorm, GeGLU with hidden_activation (legacy hidden_act ignored), tied embeddings,
        // embeddings scaled by sqrt(d_model) computed in float32.
        string act = c.String("hidden_activation") ?? "gelu_pytorch_tanh";
        return baseCfg with
        {
            NormWeightOffset = 1f,
            Activation = ParseActivation(c, "hidden_activation", act),
            TiedEmbeddings = true,
            EmbedScale = MathF.Sqrt(baseCfg.DModel),
        };
    }

    static ModelConfig NeoX(ConfigReader c)
    {
        int d = c.Int("hidden_size") ?? throw c.Error("hidden_size", "missing");
        int h = c.Int("num_attention_heads") ?? throw c.Error("num_attention_heads", "missing");
        if (h <= 0 || d % h != 0) throw c.Error("num_attention_heads", $"{h} does not divide hidden_size {d}");
        int headDim = d / h;
        double pct = c.Double("rotary_pct") ?? c.Double("partial_rotary_factor") ?? 0.25;
        bool bias = c.Bool("attention_bias") ?? true;
        return new ModelConfig
        {
            ModelType = "gpt_neox",
            NLayers = c.Int("num_hidden_layers") ?? throw c.Error("num_hidden_layers", "missing"),
            DModel = d, NHeads = h, NKvHeads = h, HeadDim = headDim,
            DMlp = c.Int("intermediate_size") ?? (int)Math.Min(4L * d, int.MaxValue),
            VocabSize = c.Int("vocab_size") ?? throw c.Error("vocab_size", "missing"),
            ContextLength = c.Int("max_position_embeddings") ?? 2048,
            Norm = NormKind.LayerNorm,
            NormEps = (float)(c.Double("layer_norm_eps") ?? 1e-5),
            Activation = ParseActivation(c, "hidden_act", c.String("hidden_act") ?? "gelu"),
            Positions = PositionKind.Rotary,
            RotaryDim = (int)(headDim * pct),
            RopeTheta = c.Double("rotary_emb_base") ?? c.Double("rope_theta") ?? 10000.0,
            RopeScaling = ParseRopeScaling(c),
            ParallelResidual = c.Bool("use_parallel_residual") ?? true,
            TiedEmbeddings = c.Bool("tie_word_embeddings") ?? false,
            AttnScale = (float)(1.0 / Math.Sqrt(headDim)),
            QkvBias = bias, OutBias = bias, MlpBias = true,
            QkvLayout = QkvLayout.FusedPerHead,
            BosTokenId = c.Int("bos_token_id"),
            EosTokenIds = c.IntOrList("eos_token_id"),
            TorchDType = c.String("torch_dtype"),
        };
    }

    static ActivationKind ParseActivation(ConfigReader c, string key, string name) => name switch
    {
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" or "gelu_tanh" => ActivationKind.GeluTanh,
        "gelu" => ActivationKind.GeluErf,
        "silu" or "swish" => ActivationKind.Silu,
        "relu" => ActivationKind.Relu,
        "quick_gelu" => ActivationKind.QuickGelu,
        _ => throw c.Error(key, $"unsupported activation '{name}'"),
    };

    static RopeScaling? ParseRopeScaling(ConfigReader c)
    {
        var rs = c.Object("rope_scaling");
        if (rs == null) return null;
        string type = rs.String("rope_type") ?? rs.String("type") ?? "default";
        return type switch
        {
            "default" => null,
            "linear" => new RopeScaling("linear", rs.Double("factor") ?? throw rs.Error("factor", "missing"), 0, 0, 0),
            "llama3" => new RopeScaling("llama3", rs.Double("factor") ?? throw rs.Error("factor", "missing"),
                rs.Double("low_freq_factor") ?? 1.0, rs.Double("high_freq_factor") ?? 4.0,
                rs.Int("original_max_position_embeddings") ?? 8192),
            _ => throw c.Error("rope_scaling", $"unsupported rope scaling type '{type}' (supported: linear, llama3)"),
        };
    }
}

/// <summary>Typed, error-reporting access to a config.json object.</summary>
public sealed class ConfigReader(string file, JsonElement obj, string prefix = "")
{
    public EngineException Error(string key, string why) => new ModelConfigException($"{file}: key '{prefix}{key}': {why}");

    bool TryGet(string key, out JsonElement e) =>
        obj.TryGetProperty(key, out e) && e.ValueKind != JsonValueKind.Null;

    public string? String(string key)
    {
        if (!TryGet(key, out var e)) return null;
        if (e.ValueKind != JsonValueKind.String) throw Error(key, $"expected a string, got {e.ValueKind.ToString().ToLowerInvariant()}");
        return e.GetString();
    }

    public int? Int(string key)
    {
        if (!TryGet(key, out var e)) return null;
        if (e.ValueKind != JsonValueKind.Number) throw Error(key, $"expected an integer, got {e.ValueKind.ToString().ToLowerInvariant()}");
        if (e.TryGetInt32(out int v)) return v;
        if (e.TryGetDouble(out double dv) && dv == Math.Floor(dv) && Math.Abs(dv) < int.MaxValue) return (int)dv;
        throw Error(key, $"expected an integer, got {e.GetRawText()}");
    }

    public double? Double(string key)
    {
        if (!TryGet(key, out var e)) return null;
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double v) || !double.IsFinite(v))
            throw Error(key, $"expected a number, got {e.GetRawText()}");
        return v;
    }

    public bool? Bool(string key)
    {
        if (!TryGet(key, out var e)) return null;
        return e.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(key, $"expected true or false, got {e.GetRawText()}"),
        };
    }

    public int[] IntOrList(string key)
    {
        if (!TryGet(key, out var e)) return [];
        if (e.ValueKind == JsonValueKind.Number) return [Int(key)!.Value];
        if (e.ValueKind != JsonValueKind.Array) throw Error(key, "expected an integer or a list of integers");
        var list = new List<int>();
        foreach (var x in e.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int v)) throw Error(key, $"expected integers, got {x.GetRawText()}");
            list.Add(v);
        }
        return list.ToArray();
    }

    public ConfigReader? Object(string key)
    {
        if (!TryGet(key, out var e)) return null;
        if (e.ValueKind != JsonValueKind.Object) throw Error(key, "expected an object");
        return new ConfigReader(file, e, prefix + key + ".");
    }
}
