using System.Text.Json;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>Shape of a random-weight model: a family and its sizes.</summary>
public sealed record RandomModelShape(string Family, int Layers, int DModel, int Heads, int KvHeads, int DMlp, int Vocab, int Context, bool Tied = true)
{
    /// <summary>The demo model of `engine demo`: GPT-2 architecture with GPT-2's vocabulary, tiny.</summary>
    public static RandomModelShape Demo { get; } = new("gpt2", 4, 64, 4, 4, 256, 50257, 256);
    /// <summary>GPT-2 small (124M): the shape of PERF.md's peer measurements.</summary>
    public static RandomModelShape Gpt2Small { get; } = new("gpt2", 12, 768, 12, 12, 3072, 50257, 1024);
    /// <summary>SmolLM2-135M (llama family, GQA 9/3, tied).</summary>
    public static RandomModelShape SmolLm2 { get; } = new("llama", 30, 576, 9, 3, 1536, 49152, 2048);

    public static IReadOnlyDictionary<string, RandomModelShape> Presets { get; } = new Dictionary<string, RandomModelShape>
    {
        ["demo"] = Demo, ["gpt2-small"] = Gpt2Small, ["smollm2-135m"] = SmolLm2,
    };
}

/// <summary>
/// Writes Hugging Face folders (config.json + model.safetensors) with RANDOM weights, deterministic from a seed
/// (SplitMix64 + Box-Muller: the same bytes on every machine). Used by `engine demo` and the benchmarks; their
/// predictions are meaningless.
/// </summary>
public static class RandomModel
{
    public static void Create(string folder, RandomModelShape shape, DType dtype = DType.F32, ulong seed = 1234)
    {
        Directory.CreateDirectory(folder);
        var rng = new Rng(seed);
        var entries = new List<SafeTensorWriter.Entry>();
        void Normal(string name, long[] dims, double std)
        {
            var data = new float[dims.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.Normal() * std);
            entries.Add(SafeTensorWriter.Convert(name, dims, data, dtype));
        }
        void Const(string name, int n, float v) => entries.Add(SafeTensorWriter.Convert(name, [n], Enumerable.Repeat(v, n).ToArray(), dtype));
        int d = shape.DModel, m = shape.DMlp, L = shape.Layers;
        int hd = d / shape.Heads, kv = shape.KvHeads * hd;
        double projStd = 0.02 / Math.Sqrt(2 * L);
        var cfg = new Dictionary<string, object>();
        if (shape.Family == "gpt2")
        {
            Normal("transformer.wte.weight", [shape.Vocab, d], 0.02);
            Normal("transformer.wpe.weight", [shape.Context, d], 0.01);
            for (int l = 0; l < L; l++)
            {
                string p = $"transformer.h.{l}.";
                Const(p + "ln_1.weight", d, 1f); Const(p + "ln_1.bias", d, 0f);
                Normal(p + "attn.c_attn.weight", [d, 3 * d], 0.02); Const(p + "attn.c_attn.bias", 3 * d, 0f);
                Normal(p + "attn.c_proj.weight", [d, d], projStd); Const(p + "attn.c_proj.bias", d, 0f);
                Const(p + "ln_2.weight", d, 1f); Const(p + "ln_2.bias", d, 0f);
                Normal(p + "mlp.c_fc.weight", [d, m], 0.02); Const(p + "mlp.c_fc.bias", m, 0f);
                Normal(p + "mlp.c_proj.weight", [m, d], projStd); Const(p + "mlp.c_proj.bias", d, 0f);
            }
            Const("transformer.ln_f.weight", d, 1f); Const("transformer.ln_f.bias", d, 0f);
            cfg["architectures"] = new[] { "GPT2LMHeadModel" }; cfg["model_type"] = "gpt2";
            cfg["vocab_size"] = shape.Vocab; cfg["n_positions"] = shape.Context; cfg["n_ctx"] = shape.Context;
            cfg["n_embd"] = d; cfg["n_layer"] = L; cfg["n_head"] = shape.Heads; cfg["n_inner"] = m;
            cfg["activation_function"] = "gelu_new"; cfg["layer_norm_epsilon"] = 1e-5; cfg["tie_word_embeddings"] = true;
            cfg["bos_token_id"] = shape.Vocab - 1; cfg["eos_token_id"] = shape.Vocab - 1;
        }
        else if (shape.Family == "llama")
        {
            Normal("model.embed_tokens.weight", [shape.Vocab, d], 0.02);
            for (int l = 0; l < L; l++)
            {
                string p = $"model.layers.{l}.";
                Const(p + "input_layernorm.weight", d, 1f);
                Normal(p + "self_attn.q_proj.weight", [d, d], 0.02);
                Normal(p + "self_attn.k_proj.weight", [kv, d], 0.02);
                Normal(p + "self_attn.v_proj.weight", [kv, d], 0.02);
                Normal(p + "self_attn.o_proj.weight", [d, d], projStd);
                Const(p + "post_attention_layernorm.weight", d, 1f);
                Normal(p + "mlp.gate_proj.weight", [m, d], 0.02);
                Normal(p + "mlp.up_proj.weight", [m, d], 0.02);
                Normal(p + "mlp.down_proj.weight", [d, m], projStd);
            }
            Const("model.norm.weight", d, 1f);
            if (!shape.Tied) Normal("lm_head.weight", [shape.Vocab, d], 0.02);
            cfg["architectures"] = new[] { "LlamaForCausalLM" }; cfg["model_type"] = "llama";
            cfg["vocab_size"] = shape.Vocab; cfg["hidden_size"] = d; cfg["intermediate_size"] = m;
            cfg["num_hidden_layers"] = L; cfg["num_attention_heads"] = shape.Heads; cfg["num_key_value_heads"] = shape.KvHeads;
            cfg["max_position_embeddings"] = shape.Context; cfg["rms_norm_eps"] = 1e-5; cfg["rope_theta"] = 10000.0;
            cfg["hidden_act"] = "silu"; cfg["tie_word_embeddings"] = shape.Tied; cfg["bos_token_id"] = 1; cfg["eos_token_id"] = 2;
        }
        else throw new UsageException($"random models of family '{shape.Family}' are not supported (gpt2, llama)");
        cfg["torch_dtype"] = dtype switch { DType.BF16 => "bfloat16", DType.F16 => "float16", _ => "float32" };
        cfg["engine_note"] = $"random weights (seed {seed}) written by the engine; predictions are meaningless";
        SafeTensorWriter.Write(Path.Combine(folder, "model.safetensors"), entries,
            new Dictionary<string, string> { ["format"] = "pt", ["note"] = $"engine random model, seed {seed}" });
        WriteConfig(Path.Combine(folder, "config.json"), cfg);
    }

    static void WriteConfig(string path, Dictionary<string, object> config)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            foreach (var kv in config)
            {
                w.WritePropertyName(kv.Key);
                switch (kv.Value)
                {
                    case string s: w.WriteStringValue(s); break;
                    case int i: w.WriteNumberValue(i); break;
                    case double x: w.WriteNumberValue(x); break;
                    case bool b: w.WriteBooleanValue(b); break;
                    case string[] arr: w.WriteStartArray(); foreach (var s in arr) w.WriteStringValue(s); w.WriteEndArray(); break;
                }
            }
            w.WriteEndObject();
        }
        AtomicFile.Write(path, s => s.Write(ms.ToArray()));
    }
}

/// <summary>The model of `engine demo`.</summary>
public static class DemoModel
{
    public static RandomModelShape Shape => RandomModelShape.Demo;

    /// <summary>Creates the folder if it does not hold a complete demo model yet. Returns true when it was built.</summary>
    public static bool EnsureExists(string folder, ulong seed = 1234)
    {
        if (File.Exists(Path.Combine(folder, "config.json")) && File.Exists(Path.Combine(folder, "model.safetensors"))) return false;
        RandomModel.Create(folder, Shape, DType.F32, seed);
        return true;
    }
}
