using System.Text.Json;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>
/// A small GPT-2-architecture model with RANDOM weights (deterministic from a seed) and GPT-2's real vocabulary size,
/// written as a Hugging Face folder (config.json + model.safetensors). It exists so that the engine can be run end to
/// end offline; its predictions are meaningless.
/// </summary>
public static class DemoModel
{
    public const int Layers = 4, DModel = 64, Heads = 4, Context = 256, Vocab = 50257;

    /// <summary>Creates the folder if it does not hold a complete demo model yet. Returns true when it was (re)built.</summary>
    public static bool EnsureExists(string folder, ulong seed = 1234)
    {
        if (File.Exists(Path.Combine(folder, "config.json")) && File.Exists(Path.Combine(folder, "model.safetensors"))) return false;
        Directory.CreateDirectory(folder);
        var rng = new Rng(seed);
        int d = DModel, m = 4 * DModel;
        var entries = new List<SafeTensorWriter.Entry>();
        void Normal(string name, long[] shape, double std)
        {
            var data = new float[shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < data.Length; i++) data[i] = (float)(rng.Normal() * std);
            entries.Add(SafeTensorWriter.F32(name, shape, data));
        }
        void Const(string name, int n, float v) => entries.Add(SafeTensorWriter.F32(name, [n], Enumerable.Repeat(v, n).ToArray()));
        double projStd = 0.02 / Math.Sqrt(2 * Layers);
        Normal("transformer.wte.weight", [Vocab, d], 0.02);
        Normal("transformer.wpe.weight", [Context, d], 0.01);
        for (int l = 0; l < Layers; l++)
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
        SafeTensorWriter.Write(Path.Combine(folder, "model.safetensors"), entries,
            new Dictionary<string, string> { ["format"] = "pt", ["note"] = $"engine demo model: RANDOM weights, seed {seed}" });
        var config = new Dictionary<string, object>
        {
            ["architectures"] = new[] { "GPT2LMHeadModel" }, ["model_type"] = "gpt2",
            ["vocab_size"] = Vocab, ["n_positions"] = Context, ["n_ctx"] = Context, ["n_embd"] = d, ["n_layer"] = Layers, ["n_head"] = Heads,
            ["activation_function"] = "gelu_new", ["layer_norm_epsilon"] = 1e-5, ["tie_word_embeddings"] = true,
            ["bos_token_id"] = 50256, ["eos_token_id"] = 50256, ["torch_dtype"] = "float32",
            ["engine_note"] = $"random weights (seed {seed}) written by `engine demo`; predictions are meaningless",
        };
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
        AtomicFile.Write(Path.Combine(folder, "config.json"), s => s.Write(ms.ToArray()));
        return true;
    }

    /// <summary>SplitMix64 with Box-Muller normals: the same numbers on every machine and runtime.</summary>
    sealed class Rng(ulong seed)
    {
        ulong _state = seed;
        double? _spare;
        ulong Next()
        {
            ulong z = _state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
        double Uniform() => ((Next() >> 11) + 0.5) * (1.0 / (1UL << 53));
        public double Normal()
        {
            if (_spare is double s) { _spare = null; return s; }
            double u = Uniform(), v = Uniform();
            double r = Math.Sqrt(-2 * Math.Log(u));
            _spare = r * Math.Sin(2 * Math.PI * v);
            return r * Math.Cos(2 * Math.PI * v);
        }
    }
}
