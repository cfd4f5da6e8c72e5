using Engine.Loader;
using Engine.Runtime;

namespace Engine.Peers.Gguf;

/// <summary>
/// Converts an engine-loadable Hugging Face folder (gpt2 or llama family) to a GGUF file llama.cpp's "gpt2" / "llama"
/// architectures load, with the same weights. Tensors are read through the engine's own binding (Model.Weights), so the
/// GGUF holds exactly what the engine computes with.
///
/// Layouts: ggml's ne[0] is the contiguous dimension, so a matrix that multiplies x[in] into y[out] is stored as
/// row-major [out][in] with ne = [in, out]. GPT-2's Conv1D weights are [in, out] and are transposed here. For llama,
/// HF's q_proj/k_proj rows pair dimension i with i + d/2 inside each head (rotate_half); llama.cpp's LLAMA architecture
/// rotates adjacent pairs (2j, 2j+1), so the rows of each head are reordered: GGUF row 2j + h takes HF row h*d/2 + j.
/// Vectors (norms, biases) are stored F32; matrices in the requested type.
/// </summary>
public static class HfToGguf
{
    public static GgmlType ParseType(string s) => s.ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32, "f16" => GgmlType.F16, "bf16" => GgmlType.BF16, "q8_0" or "q8" => GgmlType.Q8_0,
        _ => throw new UsageException($"GGUF type '{s}': use f32, f16, bf16 or q8_0"),
    };

    public static GgmlType FromDType(DType d) => d switch { DType.F16 => GgmlType.F16, DType.BF16 => GgmlType.BF16, _ => GgmlType.F32 };

    /// <summary>general.file_type values (llama_ftype).</summary>
    static uint FileType(GgmlType t) => t switch { GgmlType.F32 => 0, GgmlType.F16 => 1, GgmlType.Q8_0 => 7, GgmlType.BF16 => 32, _ => 0 };

    public static void Convert(Model model, GgmlType type, string outPath)
    {
        var c = model.Config;
        var w = model.Weights;
        var g = new GgufWriter();
        string arch = c.ModelType switch
        {
            "gpt2" => "gpt2",
            "llama" => "llama",
            _ => throw new UsageException($"GGUF conversion supports gpt2 and llama folders, not '{c.ModelType}'"),
        };
        if (arch == "llama" && (c.RopeScaling != null || c.RotaryDim != c.HeadDim || c.QkvBias || c.OutBias || c.MlpBias || c.HeadDim * c.NHeads != c.DModel))
            throw new UsageException("GGUF conversion: this llama variant (rope scaling, partial rotary, biases or head_dim != d/heads) is not supported");
        g.Add("general.architecture", arch);
        g.Add("general.name", Path.GetFileName(Path.GetFullPath(model.Folder).TrimEnd('/')));
        g.Add("general.file_type", FileType(type));
        g.Add($"{arch}.context_length", (uint)c.ContextLength);
        g.Add($"{arch}.embedding_length", (uint)c.DModel);
        g.Add($"{arch}.feed_forward_length", (uint)c.DMlp);
        g.Add($"{arch}.block_count", (uint)c.NLayers);
        g.Add($"{arch}.attention.head_count", (uint)c.NHeads);
        if (arch == "gpt2")
            g.Add("gpt2.attention.layer_norm_epsilon", c.NormEps);
        else
        {
            g.Add("llama.attention.head_count_kv", (uint)c.NKvHeads);
            g.Add("llama.attention.layer_norm_rms_epsilon", c.NormEps);
            g.Add("llama.rope.dimension_count", (uint)c.RotaryDim);
            g.Add("llama.rope.freq_base", (float)c.RopeTheta);
            g.Add("llama.vocab_size", (uint)c.VocabSize);
        }
        AddSyntheticVocab(g, c);

        int D = c.DModel, V = c.VocabSize, M = c.DMlp;
        GgmlType mat = type;
        g.AddTensor("token_embd.weight", mat, [D, V], () => w.TokenEmbedding.ToFloatArray());
        if (arch == "gpt2")
        {
            var wpe = w.PositionEmbedding!.Value;
            g.AddTensor("position_embd.weight", mat, [D, wpe.Shape[0]], () => wpe.ToFloatArray());
        }
        g.AddTensor("output_norm.weight", GgmlType.F32, [D], () => w.FinalNormWeight);
        if (w.FinalNormBias != null) g.AddTensor("output_norm.bias", GgmlType.F32, [D], () => w.FinalNormBias);
        if (!c.TiedEmbeddings) g.AddTensor("output.weight", mat, [D, V], () => OutIn(w.Unembed));

        for (int i = 0; i < c.NLayers; i++)
        {
            var l = w.Layers[i];
            string p = $"blk.{i}.";
            g.AddTensor(p + "attn_norm.weight", GgmlType.F32, [D], () => l.Ln1Weight);
            if (l.Ln1Bias != null) g.AddTensor(p + "attn_norm.bias", GgmlType.F32, [D], () => l.Ln1Bias);
            g.AddTensor(p + "ffn_norm.weight", GgmlType.F32, [D], () => l.Ln2Weight);
            if (l.Ln2Bias != null) g.AddTensor(p + "ffn_norm.bias", GgmlType.F32, [D], () => l.Ln2Bias);
            if (arch == "gpt2")
            {
                Matrix(g, p + "attn_qkv", l.Qkv!, mat);
                Matrix(g, p + "attn_output", l.O, mat);
                Matrix(g, p + "ffn_up", l.MlpIn, mat);
                Matrix(g, p + "ffn_down", l.MlpOut, mat);
            }
            else
            {
                int hd = c.HeadDim;
                var q = l.Q!; var k = l.K!;
                g.AddTensor(p + "attn_q.weight", mat, [q.In, q.Out], () => RopeRowsToInterleaved(OutIn(q), c.NHeads, hd, q.In));
                g.AddTensor(p + "attn_k.weight", mat, [k.In, k.Out], () => RopeRowsToInterleaved(OutIn(k), c.NKvHeads, hd, k.In));
                Matrix(g, p + "attn_v", l.V!, mat);
                Matrix(g, p + "attn_output", l.O, mat);
                Matrix(g, p + "ffn_gate", l.MlpIn, mat);
                Matrix(g, p + "ffn_up", l.MlpUp!, mat);
                Matrix(g, p + "ffn_down", l.MlpOut, mat);
            }
        }
        g.Write(outPath);
    }

    static void Matrix(GgufWriter g, string name, Linear lin, GgmlType type)
    {
        g.AddTensor(name + ".weight", type, [lin.In, lin.Out], () => OutIn(lin));
        if (lin.Bias != null) g.AddTensor(name + ".bias", GgmlType.F32, [lin.Out], () => lin.Bias);
    }

    /// <summary>The weight as row-major [Out][In] floats (transposing Conv1D's [In][Out]).</summary>
    public static float[] OutIn(Linear lin)
    {
        var src = lin.W.ToFloatArray();
        return lin.InputMajor ? Transpose(src, lin.In, lin.Out) : src;
    }

    /// <summary>[rows][cols] to [cols][rows], in 32x32 tiles.</summary>
    public static float[] Transpose(float[] src, int rows, int cols)
    {
        var dst = new float[src.Length];
        const int B = 32;
        for (int r0 = 0; r0 < rows; r0 += B)
            for (int c0 = 0; c0 < cols; c0 += B)
                for (int r = r0; r < Math.Min(r0 + B, rows); r++)
                    for (int cc = c0; cc < Math.Min(c0 + B, cols); cc++)
                        dst[(long)cc * rows + r] = src[(long)r * cols + cc];
        return dst;
    }

    /// <summary>Reorders the rows of each head from rotate_half order (i, i + d/2) to adjacent pairs (2j, 2j + 1).</summary>
    public static float[] RopeRowsToInterleaved(float[] w, int heads, int headDim, int cols)
    {
        var dst = new float[w.Length];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < half; j++)
                for (int s = 0; s < 2; s++)
                {
                    long from = ((long)h * headDim + s * half + j) * cols;
                    long to = ((long)h * headDim + 2 * j + s) * cols;
                    Array.Copy(w, from, dst, to, cols);
                }
        return dst;
    }

    /// <summary>
    /// A synthetic byte-level BPE vocabulary of the model's size (the benchmark feeds token ids, so only its size and
    /// validity matter): the 256 byte symbols of GPT-2's byte-to-unicode map, two-letter merges of lowercase letters,
    /// then unique filler symbols; the model's BOS/EOS ids become control tokens.
    /// </summary>
    static void AddSyntheticVocab(GgufWriter g, ModelConfig c)
    {
        int V = c.VocabSize;
        var special = new HashSet<int>();
        int bos = c.BosTokenId ?? V - 1;
        int eos = c.EosTokenIds.Length > 0 ? c.EosTokenIds[0] : bos;
        if ((uint)bos < V) special.Add(bos);
        if ((uint)eos < V) special.Add(eos);
        var tokens = new string[V];
        var types = new int[V];
        var byteSymbols = ByteSymbols();
        var merges = new List<string>();
        int nextByte = 0, nextPair = 0;
        for (int i = 0; i < V; i++)
        {
            if (special.Contains(i))
            {
                tokens[i] = i == eos ? "<|endoftext|>" : $"<|special_{i}|>";
                types[i] = 3;                                            // CONTROL
                continue;
            }
            types[i] = 1;                                                // NORMAL
            if (nextByte < 256) { tokens[i] = byteSymbols[nextByte++]; continue; }
            if (nextPair < 26 * 26)
            {
                char a = (char)('a' + nextPair / 26), b = (char)('a' + nextPair % 26);
                nextPair++;
                tokens[i] = $"{a}{b}";
                merges.Add($"{a} {b}");
                continue;
            }
            tokens[i] = $"[{i}]";
        }
        if (nextByte < 256) throw new UsageException($"vocabulary of {V} is too small for a byte-level GGUF vocabulary");
        g.Add("tokenizer.ggml.model", "gpt2");
        g.Add("tokenizer.ggml.pre", "gpt-2");
        g.AddStrings("tokenizer.ggml.tokens", tokens);
        g.AddInts("tokenizer.ggml.token_type", types);
        g.AddStrings("tokenizer.ggml.merges", merges);
        g.Add("tokenizer.ggml.bos_token_id", (uint)bos);
        g.Add("tokenizer.ggml.eos_token_id", (uint)eos);
        g.Add("tokenizer.ggml.add_bos_token", false);
    }

    /// <summary>GPT-2's reversible byte-to-unicode symbols: printable Latin-1 bytes map to themselves, the others to U+0100 upwards.</summary>
    static string[] ByteSymbols()
    {
        var keep = new List<int>();
        for (int b = '!'; b <= '~'; b++) keep.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) keep.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) keep.Add(b);
        var map = new string[256];
        foreach (int b in keep) map[b] = ((char)b).ToString();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (map[b] == null) map[b] = ((char)(256 + n++)).ToString();
        return map;
    }
}
