using System.Text.Json;
using Engine.Loader;
using Engine.Peers.Peers;

namespace Engine.Peers;

public sealed record Verification(string Peer, string Model, string Settings, int Tokens, bool AllPositions, double MaxAbsDiff,
    double MaxAbsLogit, int ArgmaxAgree, int Positions, double Tolerance, bool Pass);

/// <summary>A tolerance on max |logit difference|: absolute, or relative to max(1, max |logit|).</summary>
public readonly record struct Tolerance(double Value, bool Relative)
{
    public double For(double maxAbsLogit) => Relative ? Value * Math.Max(1, maxAbsLogit) : Value;
    public override string ToString() => Relative ? $"{Value:G2} x max(1, max|logit|)" : $"{Value:G2}";
}

/// <summary>Logit checks of a peer against the engine on the same token ids.</summary>
public static class Verify
{
    public static Verification Compare(string peerName, string model, string settings, IEndToEndPeer engine, IEndToEndPeer peer,
        int[] tokens, int vocab, Tolerance tolerance, float[]? engineLogits = null)
    {
        var e = engineLogits ?? engine.Logits(tokens, out _);          // [T, V]
        var p = peer.Logits(tokens, out bool all);
        int rows = all ? tokens.Length : 1;
        int e0 = all ? 0 : (tokens.Length - 1) * vocab;
        double maxDiff = 0, maxAbs = 0;
        int agree = 0;
        for (int r = 0; r < rows; r++)
        {
            var er = e.AsSpan(e0 + r * vocab, vocab);
            var pr = p.AsSpan(r * vocab, vocab);
            for (int i = 0; i < vocab; i++)
            {
                double d = Math.Abs(er[i] - pr[i]);
                if (!(d <= maxDiff)) maxDiff = double.IsNaN(d) ? double.PositiveInfinity : d;
                maxAbs = Math.Max(maxAbs, Math.Abs(er[i]));
            }
            if (Argmax.Of(er) == Argmax.Of(pr)) agree++;
        }
        double tol = tolerance.For(maxAbs);
        return new Verification(peerName, model, settings, tokens.Length, all, maxDiff, maxAbs, agree, rows, tol, maxDiff <= tol);
    }

    public static int[] Tokens(int n, int vocab, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray();
    }

    /// <summary>
    /// A small random model in which every parameter is random, norms and biases included (the benchmark models have
    /// unit norms and zero biases, which would hide a misplaced bias or norm in a converter). Written once.
    /// </summary>
    public static string EnsureTinyModel(string cacheDir, string family)
    {
        string folder = Path.Combine(cacheDir, $"verify-tiny-{family}");
        if (File.Exists(Path.Combine(folder, "model.safetensors")) && File.Exists(Path.Combine(folder, "config.json"))) return folder;
        Directory.CreateDirectory(folder);
        var rng = new Random(2024);
        var entries = new List<SafeTensorWriter.Entry>();
        void T(string name, long[] shape, double std, double mean = 0)
        {
            var d = new float[shape.Aggregate(1L, (a, b) => a * b)];
            for (int i = 0; i < d.Length; i++)
            {
                double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
                d[i] = (float)(mean + std * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
            entries.Add(SafeTensorWriter.F32(name, shape, d));
        }
        const int L = 2, D = 64, H = 4, M = 192, V = 512, C = 128;
        var cfg = new Dictionary<string, object>();
        if (family == "gpt2")
        {
            T("transformer.wte.weight", [V, D], 0.5);
            T("transformer.wpe.weight", [C, D], 0.2);
            for (int l = 0; l < L; l++)
            {
                string p = $"transformer.h.{l}.";
                T(p + "ln_1.weight", [D], 0.2, 1); T(p + "ln_1.bias", [D], 0.1);
                T(p + "attn.c_attn.weight", [D, 3 * D], 0.15); T(p + "attn.c_attn.bias", [3 * D], 0.1);
                T(p + "attn.c_proj.weight", [D, D], 0.1); T(p + "attn.c_proj.bias", [D], 0.1);
                T(p + "ln_2.weight", [D], 0.2, 1); T(p + "ln_2.bias", [D], 0.1);
                T(p + "mlp.c_fc.weight", [D, M], 0.15); T(p + "mlp.c_fc.bias", [M], 0.1);
                T(p + "mlp.c_proj.weight", [M, D], 0.1); T(p + "mlp.c_proj.bias", [D], 0.1);
            }
            T("transformer.ln_f.weight", [D], 0.2, 1); T("transformer.ln_f.bias", [D], 0.1);
            cfg["architectures"] = new[] { "GPT2LMHeadModel" }; cfg["model_type"] = "gpt2";
            cfg["vocab_size"] = V; cfg["n_positions"] = C; cfg["n_ctx"] = C; cfg["n_embd"] = D; cfg["n_layer"] = L;
            cfg["n_head"] = H; cfg["n_inner"] = M; cfg["activation_function"] = "gelu_new"; cfg["layer_norm_epsilon"] = 1e-5;
            cfg["bos_token_id"] = V - 1; cfg["eos_token_id"] = V - 1;
        }
        else
        {
            const int K = 2, hd = D / H;
            T("model.embed_tokens.weight", [V, D], 0.5);
            for (int l = 0; l < L; l++)
            {
                string p = $"model.layers.{l}.";
                T(p + "input_layernorm.weight", [D], 0.2, 1);
                T(p + "self_attn.q_proj.weight", [D, D], 0.15);
                T(p + "self_attn.k_proj.weight", [K * hd, D], 0.15);
                T(p + "self_attn.v_proj.weight", [K * hd, D], 0.15);
                T(p + "self_attn.o_proj.weight", [D, D], 0.1);
                T(p + "post_attention_layernorm.weight", [D], 0.2, 1);
                T(p + "mlp.gate_proj.weight", [M, D], 0.15);
                T(p + "mlp.up_proj.weight", [M, D], 0.15);
                T(p + "mlp.down_proj.weight", [D, M], 0.1);
            }
            T("model.norm.weight", [D], 0.2, 1);
            T("lm_head.weight", [V, D], 0.3);
            cfg["architectures"] = new[] { "LlamaForCausalLM" }; cfg["model_type"] = "llama";
            cfg["vocab_size"] = V; cfg["hidden_size"] = D; cfg["intermediate_size"] = M; cfg["num_hidden_layers"] = L;
            cfg["num_attention_heads"] = H; cfg["num_key_value_heads"] = K; cfg["max_position_embeddings"] = C;
            cfg["rms_norm_eps"] = 1e-5; cfg["rope_theta"] = 10000.0; cfg["hidden_act"] = "silu"; cfg["tie_word_embeddings"] = false;
            cfg["bos_token_id"] = 1; cfg["eos_token_id"] = 2;
        }
        cfg["torch_dtype"] = "float32";
        SafeTensorWriter.Write(Path.Combine(folder, "model.safetensors"), entries);
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
            JsonSerializer.Serialize(w, cfg);
        AtomicFile.Write(Path.Combine(folder, "config.json"), s => s.Write(ms.ToArray()));
        return folder;
    }
}
