namespace Engine.Loader;

/// <summary>
/// A dense projection y = x W^T + b. W is a zero-copy view of the checkpoint in its stored dtype:
/// [Out, In] (nn.Linear) or, when <see cref="InputMajor"/>, [In, Out] (GPT-2 Conv1D).
/// </summary>
public sealed class Linear(TensorView weight, bool inputMajor, float[]? bias, int inputs, int outputs)
{
    public TensorView W { get; } = weight;
    public bool InputMajor { get; } = inputMajor;
    public float[]? Bias { get; } = bias;
    public int In { get; } = inputs;
    public int Out { get; } = outputs;
    public DType DType => W.DType;
    public override string ToString() => $"{W.Name} [{Out}x{In}]{(InputMajor ? " (input-major)" : "")}";

    int _scan;   // 0 unknown, else 1 | (all finite ? 2 : 0) | (no subnormal half ? 4 : 0)

    /// <summary>
    /// True when every weight is finite (scanned once, on first use). F16 kernels then widen with fewer operations,
    /// as no Inf/NaN has to be mapped; weights with Inf/NaN take the exact path.
    /// </summary>
    public bool AllFinite => (Scan() & 2) != 0;

    /// <summary>
    /// F16: every weight is finite and none is a subnormal half (|w| &lt; 2^-14, not zero). Where subnormal inputs are
    /// slow, only then do the F16 kernels widen by moving the bits into float position and scaling by 2^112 (or moving
    /// 2^112 onto x): a subnormal
    /// half becomes a subnormal float there, and a multiply or FMA with a subnormal input takes a microcode assist on
    /// Intel cores (measured 2026-12-07, GPT-2-small F16 random weights, c_proj rows 1.2% subnormal: decode 5.5-5.8 GB/s
    /// against 15-16 GB/s for c_fc in the same pass; none on AMD Zen 5, where the SIMD backend reads every finite tensor
    /// that way: Engine.Kernels.Simd.SubnormalProbe). Other dtypes: <see cref="AllFinite"/>.
    /// </summary>
    public bool NormalHalves => (Scan() & 6) == 6;

    /// <summary>
    /// F16: the share of 16-half groups (aligned, in storage order) that hold a subnormal half (0 for other dtypes).
    /// A decode product that tests every group and widens the dirty ones exactly pays a mispredicted branch for
    /// each, so above a few percent the always-exact widening is faster.
    /// </summary>
    public double SubnormalGroupShare { get { Scan(); return _subnormalGroups; } }

    double _subnormalGroups;

    int Scan()
    {
        if (_scan == 0) _scan = ScanWeights();
        return _scan;
    }

    unsafe int ScanWeights()
    {
        long n = W.ElementCount;
        byte* p = W.Data;
        bool finite = true, normal = true;
        switch (W.DType)
        {
            case DType.F16:
                long dirtyGroups = 0;
                for (long g = 0; g < n; g += 16)
                {
                    bool dirty = false;
                    for (long i = g, end = Math.Min(n, g + 16); i < end; i++)
                    {
                        int h = System.Runtime.CompilerServices.Unsafe.ReadUnaligned<ushort>(p + 2 * i);
                        if ((h & 0x7C00) == 0x7C00) finite = false;
                        else if ((h & 0x7C00) == 0 && (h & 0x3FF) != 0) dirty = true;
                    }
                    if (dirty) { normal = false; dirtyGroups++; }
                }
                _subnormalGroups = n == 0 ? 0 : dirtyGroups / (double)((n + 15) / 16);
                break;
            case DType.BF16:
                for (long i = 0; i < n; i++) if ((System.Runtime.CompilerServices.Unsafe.ReadUnaligned<ushort>(p + 2 * i) & 0x7F80) == 0x7F80) { finite = false; break; }
                break;
            default:
                for (long i = 0; i < n; i++) if (!float.IsFinite(System.Runtime.CompilerServices.Unsafe.ReadUnaligned<float>(p + 4 * i))) { finite = false; break; }
                break;
        }
        return 1 | (finite ? 2 : 0) | (normal ? 4 : 0);
    }
}

/// <summary>Weights of one transformer block. Small vectors (norms, biases) are widened to float once; matrices stay mapped.</summary>
public sealed class LayerWeights
{
    public required float[] Ln1Weight { get; init; }
    public float[]? Ln1Bias { get; init; }
    public required float[] Ln2Weight { get; init; }
    public float[]? Ln2Bias { get; init; }
    /// <summary>Fused q/k/v projection (layout in <see cref="ModelConfig.QkvLayout"/>), or null when separate.</summary>
    public Linear? Qkv { get; init; }
    public Linear? Q { get; init; }
    public Linear? K { get; init; }
    public Linear? V { get; init; }
    public required Linear O { get; init; }
    /// <summary>Gated MLPs: the gate projection; otherwise the input projection (c_fc / dense_h_to_4h).</summary>
    public required Linear MlpIn { get; init; }
    /// <summary>Gated MLPs only: the up projection.</summary>
    public Linear? MlpUp { get; init; }
    public required Linear MlpOut { get; init; }
}

/// <summary>All weights of a model, bound to canonical roles from the checkpoint's own tensor names.</summary>
public sealed class ModelWeights
{
    public required TensorView TokenEmbedding { get; init; }   // [V, D]
    public TensorView? PositionEmbedding { get; init; }        // [context, D] (learned positions only)
    public required LayerWeights[] Layers { get; init; }
    public required float[] FinalNormWeight { get; init; }
    public float[]? FinalNormBias { get; init; }
    public required Linear Unembed { get; init; }              // [V, D]

    /// <summary>Binds every tensor the configuration needs; errors name the missing or mis-shaped tensor.</summary>
    public static ModelWeights Bind(ModelConfig c, WeightStore s) => c.ModelType switch
    {
        "gpt2" => BindGpt2(c, s),
        "gpt_neox" => BindNeoX(c, s),
        _ => BindLlama(c, s),
    };

    static float[] Vec(WeightStore s, string name, int n) => s.Get(name, n).ToFloatArray();
    static float[]? OptVec(WeightStore s, string name, int n, bool required) =>
        required ? Vec(s, name, n) : s.Contains(name) ? Vec(s, name, n) : null;

    /// <summary>nn.Linear [out, in] weight with an optional bias.</summary>
    static Linear Lin(WeightStore s, string prefix, int inputs, int outputs, bool bias) =>
        new(s.Get(prefix + ".weight", outputs, inputs), false, bias ? Vec(s, prefix + ".bias", outputs) : null, inputs, outputs);

    static Linear Conv1D(WeightStore s, string prefix, int inputs, int outputs) =>
        new(s.Get(prefix + ".weight", inputs, outputs), true, Vec(s, prefix + ".bias", outputs), inputs, outputs);

    static ModelWeights BindGpt2(ModelConfig c, WeightStore s)
    {
        // save_pretrained writes names with or without the "transformer." prefix depending on the class saved.
        string p = s.Contains("transformer.wte.weight") ? "transformer." : "";
        int d = c.DModel, m = c.DMlp;
        var layers = new LayerWeights[c.NLayers];
        for (int i = 0; i < c.NLayers; i++)
        {
            string l = $"{p}h.{i}.";
            s.Ignore(l + "attn.bias"); s.Ignore(l + "attn.masked_bias");   // causal-mask buffers of old checkpoints
            layers[i] = new LayerWeights
            {
                Ln1Weight = Vec(s, l + "ln_1.weight", d), Ln1Bias = Vec(s, l + "ln_1.bias", d),
                Ln2Weight = Vec(s, l + "ln_2.weight", d), Ln2Bias = Vec(s, l + "ln_2.bias", d),
                Qkv = Conv1D(s, l + "attn.c_attn", d, c.QDim + 2 * c.KvDim),
                O = Conv1D(s, l + "attn.c_proj", c.QDim, d),
                MlpIn = Conv1D(s, l + "mlp.c_fc", d, m),
                MlpOut = Conv1D(s, l + "mlp.c_proj", m, d),
            };
        }
        var wte = s.Get(p + "wte.weight", c.VocabSize, d);
        s.Ignore("lm_head.weight");   // tied: a saved copy is not used
        return new ModelWeights
        {
            TokenEmbedding = wte,
            PositionEmbedding = s.Get(p + "wpe.weight", s.Info(p + "wpe.weight").Shape[0], d),
            Layers = layers,
            FinalNormWeight = Vec(s, p + "ln_f.weight", d), FinalNormBias = Vec(s, p + "ln_f.bias", d),
            Unembed = new Linear(wte, false, null, d, c.VocabSize),
        };
    }

    static ModelWeights BindLlama(ModelConfig c, WeightStore s)
    {
        int d = c.DModel, m = c.DMlp;
        var layers = new LayerWeights[c.NLayers];
        for (int i = 0; i < c.NLayers; i++)
        {
            string l = $"model.layers.{i}.";
            s.Ignore(l + "self_attn.rotary_emb.inv_freq");
            layers[i] = new LayerWeights
            {
                Ln1Weight = Vec(s, l + "input_layernorm.weight", d),
                Ln2Weight = Vec(s, l + "post_attention_layernorm.weight", d),
                Q = Lin(s, l + "self_attn.q_proj", d, c.QDim, c.QkvBias),
                K = Lin(s, l + "self_attn.k_proj", d, c.KvDim, c.QkvBias),
                V = Lin(s, l + "self_attn.v_proj", d, c.KvDim, c.QkvBias),
                O = Lin(s, l + "self_attn.o_proj", c.QDim, d, c.OutBias),
                MlpIn = Lin(s, l + "mlp.gate_proj", d, m, c.MlpBias),
                MlpUp = Lin(s, l + "mlp.up_proj", d, m, c.MlpBias),
                MlpOut = Lin(s, l + "mlp.down_proj", m, d, c.MlpBias),
            };
        }
        var embed = s.Get("model.embed_tokens.weight", c.VocabSize, d);
        Linear unembed;
        if (c.TiedEmbeddings) { s.Ignore("lm_head.weight"); unembed = new Linear(embed, false, null, d, c.VocabSize); }
        else unembed = Lin(s, "lm_head", d, c.VocabSize, false);
        return new ModelWeights
        {
            TokenEmbedding = embed,
            Layers = layers,
            FinalNormWeight = Vec(s, "model.norm.weight", d),
            Unembed = unembed,
        };
    }

    static ModelWeights BindNeoX(ModelConfig c, WeightStore s)
    {
        int d = c.DModel, m = c.DMlp;
        var layers = new LayerWeights[c.NLayers];
        for (int i = 0; i < c.NLayers; i++)
        {
            string l = $"gpt_neox.layers.{i}.";
            s.Ignore(l + "attention.bias"); s.Ignore(l + "attention.masked_bias"); s.Ignore(l + "attention.rotary_emb.inv_freq");
            layers[i] = new LayerWeights
            {
                Ln1Weight = Vec(s, l + "input_layernorm.weight", d), Ln1Bias = Vec(s, l + "input_layernorm.bias", d),
                Ln2Weight = Vec(s, l + "post_attention_layernorm.weight", d), Ln2Bias = Vec(s, l + "post_attention_layernorm.bias", d),
                Qkv = Lin(s, l + "attention.query_key_value", d, 3 * d, c.QkvBias),
                O = Lin(s, l + "attention.dense", d, d, c.OutBias),
                MlpIn = Lin(s, l + "mlp.dense_h_to_4h", d, m, true),
                MlpOut = Lin(s, l + "mlp.dense_4h_to_h", m, d, true),
            };
        }
        var embed = s.Get("gpt_neox.embed_in.weight", c.VocabSize, d);
        Linear unembed = c.TiedEmbeddings ? new Linear(embed, false, null, d, c.VocabSize) : Lin(s, "embed_out", d, c.VocabSize, false);
        if (c.TiedEmbeddings) s.Ignore("embed_out.weight");
        return new ModelWeights
        {
            TokenEmbedding = embed,
            Layers = layers,
            FinalNormWeight = Vec(s, "gpt_neox.final_layer_norm.weight", d),
            FinalNormBias = Vec(s, "gpt_neox.final_layer_norm.bias", d),
            Unembed = unembed,
        };
    }
}
