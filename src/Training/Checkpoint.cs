using System.Numerics;
using System.Text.Json;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Training;

/// <summary>
/// The architecture of a model to train, in the terms of a Hugging Face config.json of family gpt2 (LayerNorm, learned
/// positions, GELU, biases, tied embeddings) or llama (RMSNorm, RoPE, SwiGLU, no biases, optional GQA and tying).
/// <see cref="ToModelConfig"/> parses the very config.json that <see cref="Checkpoint.Save{T}"/> writes, so the training
/// engine runs exactly the architecture the loader reads back.
/// </summary>
public sealed record ArchSpec(string Family, int Layers, int DModel, int Heads, int DMlp, int Vocab, int Context)
{
    public int KvHeads { get; init; } = 0;            // 0 = Heads
    public bool Tied { get; init; } = true;           // llama only (gpt2 is always tied)
    public double RopeTheta { get; init; } = 10000.0;
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }

    public Dictionary<string, object> ConfigJson()
    {
        var cfg = new Dictionary<string, object>();
        int kv = KvHeads > 0 ? KvHeads : Heads;
        if (Family == "gpt2")
        {
            cfg["architectures"] = new[] { "GPT2LMHeadModel" }; cfg["model_type"] = "gpt2";
            cfg["vocab_size"] = Vocab; cfg["n_positions"] = Context; cfg["n_ctx"] = Context;
            cfg["n_embd"] = DModel; cfg["n_layer"] = Layers; cfg["n_head"] = Heads; cfg["n_inner"] = DMlp;
            cfg["activation_function"] = "gelu_new"; cfg["layer_norm_epsilon"] = 1e-5; cfg["tie_word_embeddings"] = true;
            cfg["scale_attn_weights"] = true;
        }
        else if (Family == "llama")
        {
            cfg["architectures"] = new[] { "LlamaForCausalLM" }; cfg["model_type"] = "llama";
            cfg["vocab_size"] = Vocab; cfg["hidden_size"] = DModel; cfg["intermediate_size"] = DMlp;
            cfg["num_hidden_layers"] = Layers; cfg["num_attention_heads"] = Heads; cfg["num_key_value_heads"] = kv;
            cfg["max_position_embeddings"] = Context; cfg["rms_norm_eps"] = 1e-5; cfg["rope_theta"] = RopeTheta;
            cfg["hidden_act"] = "silu"; cfg["tie_word_embeddings"] = Tied;
        }
        else throw new UsageException($"training family '{Family}' is not supported (gpt2, llama)");
        if (BosTokenId is int b) cfg["bos_token_id"] = b;
        if (EosTokenId is int e) cfg["eos_token_id"] = e;
        cfg["torch_dtype"] = "float32";
        return cfg;
    }

    public ModelConfig ToModelConfig()
    {
        using var doc = JsonDocument.Parse(Checkpoint.ConfigText(ConfigJson()));
        return ModelConfig.FromJson(new ConfigReader("config.json", doc.RootElement));
    }
}

/// <summary>
/// Checkpoints: a trained engine → a Hugging Face folder (config.json + model.safetensors with the family's HF tensor
/// names, F32) that <see cref="Model.Load"/> reads; and any loaded model (every family the loader binds) → a training
/// engine's parameter layout (for the gradient-based methods).
/// </summary>
public static class Checkpoint
{
    /// <summary>Writes config.json (the spec's, plus <paramref name="extra"/> keys) and model.safetensors into <paramref name="folder"/>.</summary>
    public static void Save<T>(Transformer<T> t, ArchSpec spec, string folder, IReadOnlyDictionary<string, object>? extra = null,
                               IReadOnlyDictionary<string, string>? metadata = null) where T : unmanaged, IFloatingPointIeee754<T>
    {
        Directory.CreateDirectory(folder);
        var c = t.Config;
        float[] F(string name) => t.Layout.Slice(t.Params, name).ToArray().Select(v => float.CreateTruncating(v)).ToArray();
        var entries = new List<SafeTensorWriter.Entry>();
        void Add(string name, float[] data, params long[] shape) => entries.Add(SafeTensorWriter.F32(name, shape, data));
        int d = c.DModel, m = c.DMlp, q = c.QDim, kv = c.KvDim, V = c.VocabSize;
        if (spec.Family == "gpt2")
        {
            Add("transformer.wte.weight", F("embed"), V, d);
            Add("transformer.wpe.weight", F("pos"), t.Layout.PositionRows, d);
            for (int l = 0; l < c.NLayers; l++)
            {
                string p = $"transformer.h.{l}.";
                Add(p + "ln_1.weight", F($"{l}.ln1.w"), d); Add(p + "ln_1.bias", F($"{l}.ln1.b"), d);
                Add(p + "attn.c_attn.weight", Transpose(F($"{l}.qkv.w"), q + 2 * kv, d), d, q + 2 * kv); Add(p + "attn.c_attn.bias", F($"{l}.qkv.b"), q + 2 * kv);
                Add(p + "attn.c_proj.weight", Transpose(F($"{l}.o.w"), d, q), q, d); Add(p + "attn.c_proj.bias", F($"{l}.o.b"), d);
                Add(p + "ln_2.weight", F($"{l}.ln2.w"), d); Add(p + "ln_2.bias", F($"{l}.ln2.b"), d);
                Add(p + "mlp.c_fc.weight", Transpose(F($"{l}.in.w"), m, d), d, m); Add(p + "mlp.c_fc.bias", F($"{l}.in.b"), m);
                Add(p + "mlp.c_proj.weight", Transpose(F($"{l}.out.w"), d, m), m, d); Add(p + "mlp.c_proj.bias", F($"{l}.out.b"), d);
            }
            Add("transformer.ln_f.weight", F("lnf.w"), d); Add("transformer.ln_f.bias", F("lnf.b"), d);
        }
        else if (spec.Family == "llama")
        {
            Add("model.embed_tokens.weight", F("embed"), V, d);
            for (int l = 0; l < c.NLayers; l++)
            {
                string p = $"model.layers.{l}.";
                var qkv = F($"{l}.qkv.w");
                Add(p + "input_layernorm.weight", F($"{l}.ln1.w"), d);
                Add(p + "self_attn.q_proj.weight", qkv[..(q * d)], q, d);
                Add(p + "self_attn.k_proj.weight", qkv[(q * d)..((q + kv) * d)], kv, d);
                Add(p + "self_attn.v_proj.weight", qkv[((q + kv) * d)..], kv, d);
                Add(p + "self_attn.o_proj.weight", F($"{l}.o.w"), d, q);
                Add(p + "post_attention_layernorm.weight", F($"{l}.ln2.w"), d);
                var gu = F($"{l}.in.w");
                Add(p + "mlp.gate_proj.weight", gu[..(m * d)], m, d);
                Add(p + "mlp.up_proj.weight", gu[(m * d)..], m, d);
                Add(p + "mlp.down_proj.weight", F($"{l}.out.w"), d, m);
            }
            Add("model.norm.weight", F("lnf.w"), d);
            if (!c.TiedEmbeddings) Add("lm_head.weight", F("unembed"), V, d);
        }
        else throw new UsageException($"cannot save family '{spec.Family}' (gpt2, llama)");
        var meta = new Dictionary<string, string> { ["format"] = "pt" };
        if (metadata != null) foreach (var kv2 in metadata) meta[kv2.Key] = kv2.Value;
        SafeTensorWriter.Write(Path.Combine(folder, "model.safetensors"), entries, meta);
        var cfg = spec.ConfigJson();
        if (extra != null) foreach (var kv2 in extra) cfg[kv2.Key] = kv2.Value;
        AtomicFile.WriteText(Path.Combine(folder, "config.json"), ConfigText(cfg));
    }

    static float[] Transpose(float[] a, int rows, int cols)
    {
        var t = new float[a.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) t[c * rows + r] = a[r * cols + c];
        return t;
    }

    /// <summary>A config dictionary as indented JSON (strings, ints, doubles, bools, string arrays, nested dictionaries).</summary>
    public static string ConfigText(IReadOnlyDictionary<string, object> config)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
            WriteValue(w, config);
        return System.Text.Encoding.UTF8.GetString(ms.ToArray()) + "\n";
    }

    static void WriteValue(Utf8JsonWriter w, object? v)
    {
        switch (v)
        {
            case null: w.WriteNullValue(); break;
            case string s: w.WriteStringValue(s); break;
            case int i: w.WriteNumberValue(i); break;
            case long l: w.WriteNumberValue(l); break;
            case double x: w.WriteNumberValue(x); break;
            case float f: w.WriteNumberValue(f); break;
            case bool b: w.WriteBooleanValue(b); break;
            case IReadOnlyDictionary<string, object> d:
                w.WriteStartObject();
                foreach (var kv in d) { w.WritePropertyName(kv.Key); WriteValue(w, kv.Value); }
                w.WriteEndObject();
                break;
            case System.Collections.IEnumerable e:
                w.WriteStartArray();
                foreach (var x in e) WriteValue(w, x);
                w.WriteEndArray();
                break;
            default: w.WriteStringValue(v.ToString()); break;
        }
    }

    /// <summary>
    /// A training engine holding the weights of a loaded model (any family: gpt2 Conv1D and fused c_attn, llama/qwen2/
    /// gemma separate q/k/v and gated MLP, gpt_neox fused per-head qkv and parallel residual), F32/F16/BF16 widened.
    /// </summary>
    public static Transformer<T> FromModel<T>(Model model, int threads = 0, bool useKernels = true) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var c = model.Config;
        var w = model.Weights;
        int posRows = w.PositionEmbedding is { } pe ? (int)pe.Shape[0] : c.ContextLength;
        var t = new Transformer<T>(c, threads, useKernels, c.Positions == PositionKind.Learned ? posRows : null);
        void Set(string name, ReadOnlySpan<float> data)
        {
            var dst = t.P(name);
            if (dst.Length != data.Length) throw new ModelFormatException($"{model.Folder}: parameter {name} has {data.Length} values, expected {dst.Length}");
            for (int i = 0; i < data.Length; i++) dst[i] = T.CreateTruncating(data[i]);
        }
        void SetOpt(string name, float[]? data) { if (data != null && t.Layout.Has(name)) Set(name, data); }
        int d = c.DModel, m = c.DMlp, q = c.QDim, kv = c.KvDim, dh = c.HeadDim;
        Set("embed", w.TokenEmbedding.ToFloatArray());
        if (c.Positions == PositionKind.Learned) Set("pos", w.PositionEmbedding!.Value.ToFloatArray());
        for (int l = 0; l < c.NLayers; l++)
        {
            var lw = w.Layers[l];
            string p = l + ".";
            Set(p + "ln1.w", lw.Ln1Weight); SetOpt(p + "ln1.b", lw.Ln1Bias);
            Set(p + "ln2.w", lw.Ln2Weight); SetOpt(p + "ln2.b", lw.Ln2Bias);
            float[] qkv, qkvB;
            switch (c.QkvLayout)
            {
                case QkvLayout.Separate:
                    qkv = [.. OutMajor(lw.Q!), .. OutMajor(lw.K!), .. OutMajor(lw.V!)];
                    qkvB = lw.Q!.Bias != null ? [.. lw.Q.Bias, .. lw.K!.Bias!, .. lw.V!.Bias!] : [];
                    break;
                case QkvLayout.FusedConcat:
                    qkv = OutMajor(lw.Qkv!);
                    qkvB = lw.Qkv!.Bias ?? [];
                    break;
                case QkvLayout.FusedPerHead:
                {
                    // fused output o = h·3d + part·d + i → canonical row part·(H·d) + h·d + i (H = K here)
                    var src = OutMajor(lw.Qkv!);
                    var bsrc = lw.Qkv!.Bias;
                    qkv = new float[src.Length];
                    qkvB = bsrc != null ? new float[bsrc.Length] : [];
                    int H = c.NHeads;
                    for (int h = 0; h < H; h++)
                        for (int part = 0; part < 3; part++)
                            for (int i = 0; i < dh; i++)
                            {
                                int o = h * 3 * dh + part * dh + i, r = part * H * dh + h * dh + i;
                                Array.Copy(src, (long)o * d, qkv, (long)r * d, d);
                                if (bsrc != null) qkvB[r] = bsrc[o];
                            }
                    break;
                }
                default: throw new NotSupportedException(c.QkvLayout.ToString());
            }
            Set(p + "qkv.w", qkv);
            if (t.Layout.Has(p + "qkv.b")) Set(p + "qkv.b", qkvB.Length > 0 ? qkvB : new float[q + 2 * kv]);
            Set(p + "o.w", OutMajor(lw.O)); SetOpt(p + "o.b", lw.O.Bias);
            if (c.GatedMlp)
            {
                Set(p + "in.w", [.. OutMajor(lw.MlpIn), .. OutMajor(lw.MlpUp!)]);
                if (t.Layout.Has(p + "in.b")) Set(p + "in.b", [.. lw.MlpIn.Bias ?? new float[m], .. lw.MlpUp!.Bias ?? new float[m]]);
            }
            else
            {
                Set(p + "in.w", OutMajor(lw.MlpIn));
                if (t.Layout.Has(p + "in.b")) Set(p + "in.b", lw.MlpIn.Bias ?? new float[m]);
            }
            Set(p + "out.w", OutMajor(lw.MlpOut));
            if (t.Layout.Has(p + "out.b")) Set(p + "out.b", lw.MlpOut.Bias ?? new float[d]);
        }
        Set("lnf.w", w.FinalNormWeight); SetOpt("lnf.b", w.FinalNormBias);
        if (!c.TiedEmbeddings) Set("unembed", OutMajor(w.Unembed));
        return t;
    }

    /// <summary>A projection's weight as out-major floats [Out, In] (GPT-2 Conv1D weights are transposed).</summary>
    public static float[] OutMajor(Linear lin)
    {
        var raw = lin.W.ToFloatArray();
        return lin.InputMajor ? Transpose(raw, lin.In, lin.Out) : raw;
    }
}
