using Engine.Kernels;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>Options of a session: which backend and how many positions the arena and KV cache hold.</summary>
public sealed record SessionOptions
{
    public string Backend { get; init; } = KernelRegistry.Default;
    /// <summary>Positions the session can hold (prompt + generated); 0 = the model's context length.</summary>
    public int Capacity { get; init; }
    /// <summary>Compute logits for every row of a forward call (false: only the last row, as generation needs).</summary>
    public bool AllLogits { get; init; } = true;
    /// <summary>A backend instance to use instead of <see cref="Backend"/> (e.g. a <see cref="ProfilingKernels"/> decorator).</summary>
    public IKernels? Kernels { get; init; }
}

/// <summary>
/// Runs a <see cref="Model"/>: one activation arena, a KV cache, a backend and the hooks. One block implementation
/// drives every family from <see cref="ModelConfig"/> flags. Not thread-safe (one forward at a time).
/// </summary>
public sealed partial class Session : IDisposable
{
    public Model Model { get; }
    public ModelConfig Config { get; }
    public IKernels Kernels { get; }
    public HookRegistry Hooks { get; }
    public int Capacity { get; }
    /// <summary>Positions already in the KV cache; the next forward call starts there.</summary>
    public int Length { get; private set; }
    public bool AllLogits { get; }

    readonly Arena _arena = new();
    readonly RopeTable? _rope;
    // Slots: global
    readonly Slot _embed, _posEmbed, _resid, _lnfNorm, _lnfScale, _logits;
    // Slots: one block's scratch, reused by every layer (a tap is a view of it while the hook runs)
    readonly Slot _ln1Norm, _ln1Scale, _ln2Norm, _ln2Scale, _qkv, _q, _z, _attnOut, _mlpPre, _mlpPreLinear, _mlpPost, _mlpOut;
    // KV cache [layer, capacity, nKv, headDim]: k after RoPE, v
    readonly Slot _kCache, _vCache;
    Arena? _attnArena;
    Slot _scores, _pattern;

    public Session(Model model, SessionOptions? options = null)
    {
        options ??= new SessionOptions();
        Model = model;
        Config = model.Config;
        Kernels = options.Kernels ?? KernelRegistry.Create(options.Backend);
        Hooks = new HookRegistry(Config);
        AllLogits = options.AllLogits;
        var c = Config;
        if (options.Capacity < 0) throw new UsageException($"capacity {options.Capacity} must be positive");
        Capacity = options.Capacity == 0 ? c.ContextLength : Math.Min(options.Capacity, c.ContextLength);
        long T = Capacity, D = c.DModel;
        _embed = _arena.Reserve("embed", T * D);
        _posEmbed = _arena.Reserve("pos_embed", c.Positions == PositionKind.Learned ? T * D : 0);
        _resid = _arena.Reserve("resid", T * D);
        _ln1Norm = _arena.Reserve("ln1.normalized", T * D);
        _ln1Scale = _arena.Reserve("ln1.scale", T);
        _ln2Norm = _arena.Reserve("ln2.normalized", T * D);
        _ln2Scale = _arena.Reserve("ln2.scale", T);
        _qkv = _arena.Reserve("qkv", c.QkvLayout == QkvLayout.Separate ? 0 : T * (c.QDim + 2L * c.KvDim));
        _q = _arena.Reserve("q", T * c.QDim);
        _z = _arena.Reserve("z", T * c.QDim);
        _attnOut = _arena.Reserve("attn_out", T * D);
        _mlpPre = _arena.Reserve("mlp.pre", T * c.DMlp);
        _mlpPreLinear = _arena.Reserve("mlp.pre_linear", c.GatedMlp ? T * c.DMlp : 0);
        _mlpPost = _arena.Reserve("mlp.post", T * c.DMlp);
        _mlpOut = _arena.Reserve("mlp_out", T * D);
        _lnfNorm = _arena.Reserve("ln_final.normalized", T * D);
        _lnfScale = _arena.Reserve("ln_final.scale", T);
        _logits = _arena.Reserve("logits", (AllLogits ? T : 1) * c.VocabSize);
        _kCache = _arena.Reserve("k_cache", c.NLayers * T * c.KvDim);
        _vCache = _arena.Reserve("v_cache", c.NLayers * T * c.KvDim);
        _arena.Allocate();
        _rope = RopeTable.For(c, Capacity);
    }

    /// <summary>Bytes of the activation arena and KV cache.</summary>
    public long ArenaBytes => _arena.Bytes + (_attnArena?.Bytes ?? 0);

    /// <summary>Forgets the KV cache: the next forward starts at position 0.</summary>
    public void Reset() => Length = 0;

    /// <summary>Logits of the last forward call: [T, V] (or [1, V] when the session keeps only the last row).</summary>
    public ReadOnlySpan<float> LastLogits => _arena.Span(_logits, 0, _lastLogitRows * Config.VocabSize);
    int _lastLogitRows;

    /// <summary>Runs a full sequence from position 0 (resets the cache first). Returns logits [T, V].</summary>
    public ReadOnlySpan<float> Run(scoped ReadOnlySpan<int> tokens)
    {
        Reset();
        return Forward(tokens);
    }

    /// <summary>
    /// Appends tokens at position <see cref="Length"/>, using and extending the KV cache. Returns the logits of the new
    /// rows ([T, V], or [1, V] for the last row only when <see cref="AllLogits"/> is false), a view valid until the next call.
    /// </summary>
    public ReadOnlySpan<float> Forward(scoped ReadOnlySpan<int> tokens)
    {
        var c = Config;
        int T = tokens.Length, p0 = Length;
        if (T == 0) throw new UsageException("empty input: at least one token is needed");
        if (p0 + T > Capacity)
            throw new UsageException(p0 == 0
                ? $"the prompt has {T} tokens, longer than the context of {Capacity} positions"
                : $"{p0} + {T} tokens exceed the context of {Capacity} positions");
        Model.ValidateTokens(tokens);
        if (Hooks.AnyAttentionTaps) EnsureAttentionSlots();
        var k = Kernels;
        int D = c.DModel;

        // ---- embeddings
        var embed = _arena.Span(_embed, 0, T * D);                   // [T, D]
        k.EmbeddingGather(tokens, Model.Weights.TokenEmbedding, embed);
        Fire(HookKind.Embed, -1, embed, T, p0);
        var resid = _arena.Span(_resid, 0, T * D);                   // [T, D] the residual stream, updated in place
        embed.CopyTo(resid);
        if (c.Positions == PositionKind.Learned)
        {
            var pos = _arena.Span(_posEmbed, 0, T * D);              // [T, D] wpe rows p0..p0+T-1
            Model.Weights.PositionEmbedding!.Value.Widen((long)p0 * D, pos);
            Fire(HookKind.PosEmbed, -1, pos, T, p0);
            k.AddInPlace(pos, resid);
        }
        if (c.EmbedScale != 1f) k.ScaleInPlace(resid, c.EmbedScale);

        // ---- blocks
        for (int l = 0; l < c.NLayers; l++) Block(l, T, p0, resid);

        // ---- final norm and unembedding
        var lnf = _arena.Span(_lnfNorm, 0, T * D);
        var lnfScale = _arena.Span(_lnfScale, 0, T);
        Norm(resid, T, Model.Weights.FinalNormWeight, Model.Weights.FinalNormBias, lnf, lnfScale);
        Fire(HookKind.LnFinalScale, -1, lnfScale, T, p0);
        Fire(HookKind.LnFinalNormalized, -1, lnf, T, p0);
        int rows = AllLogits ? T : 1;
        var logits = _arena.Span(_logits, 0, rows * c.VocabSize);
        k.MatMul(AllLogits ? lnf : lnf.Slice((T - 1) * D, D), rows, Model.Weights.Unembed, logits);
        _lastLogitRows = rows;
        Length = p0 + T;
        return logits;
    }

    void Block(int l, int T, int p0, Span<float> resid)
    {
        var c = Config;
        var w = Model.Weights.Layers[l];
        var k = Kernels;
        int D = c.DModel;
        Fire(HookKind.ResidPre, l, resid, T, p0);

        var ln1 = _arena.Span(_ln1Norm, 0, T * D);
        var ln1Scale = _arena.Span(_ln1Scale, 0, T);
        Norm(resid, T, w.Ln1Weight, w.Ln1Bias, ln1, ln1Scale);
        Fire(HookKind.Ln1Scale, l, ln1Scale, T, p0);
        Fire(HookKind.Ln1Normalized, l, ln1, T, p0);

        var attnOut = Attention(l, w, T, p0, ln1);                  // [T, D]

        var ln2 = _arena.Span(_ln2Norm, 0, T * D);
        var ln2Scale = _arena.Span(_ln2Scale, 0, T);
        if (c.ParallelResidual)
        {
            // x + attn(ln1(x)) + mlp(ln2(x)): both norms read the block input.
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, T, p0);
            Fire(HookKind.Ln2Normalized, l, ln2, T, p0);
            var mlpOut = Mlp(l, w, T, p0, ln2);
            k.AddInPlace(attnOut, resid);
            k.AddInPlace(mlpOut, resid);
        }
        else
        {
            k.AddInPlace(attnOut, resid);
            Fire(HookKind.ResidMid, l, resid, T, p0);
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, T, p0);
            Fire(HookKind.Ln2Normalized, l, ln2, T, p0);
            var mlpOut = Mlp(l, w, T, p0, ln2);
            k.AddInPlace(mlpOut, resid);
        }
        Fire(HookKind.ResidPost, l, resid, T, p0);
    }

    Span<float> Attention(int l, LayerWeights w, int T, int p0, Span<float> x)
    {
        var c = Config;
        var k = Kernels;
        int H = c.NHeads, K = c.NKvHeads, d = c.HeadDim, kvDim = c.KvDim;
        long layerBase = (long)l * Capacity * kvDim;
        var q = _arena.Span(_q, 0, T * c.QDim);                                 // [T, H, d]
        var kNew = _arena.Span(_kCache, layerBase + (long)p0 * kvDim, T * kvDim);   // [T, K, d] cache rows p0..
        var vNew = _arena.Span(_vCache, layerBase + (long)p0 * kvDim, T * kvDim);   // [T, K, d]
        if (c.QkvLayout == QkvLayout.Separate)
        {
            k.MatMul(x, T, w.Q!, q);
            k.MatMul(x, T, w.K!, kNew);
            k.MatMul(x, T, w.V!, vNew);
        }
        else
        {
            int width = c.QDim + 2 * kvDim;
            var qkv = _arena.Span(_qkv, 0, T * width);                          // [T, q+k+v]
            k.MatMul(x, T, w.Qkv!, qkv);
            SplitQkv(qkv, T, q, kNew, vNew);
        }
        Fire(HookKind.Q, l, q, T, p0);
        Fire(HookKind.K, l, kNew, T, p0);
        Fire(HookKind.V, l, vNew, T, p0);
        if (_rope != null)
        {
            k.Rope(q, T, H, d, p0, _rope);
            k.Rope(kNew, T, K, d, p0, _rope);
            Fire(HookKind.RotQ, l, q, T, p0);
            Fire(HookKind.RotK, l, kNew, T, p0);
        }
        var shape = new AttentionShape(T, p0, H, K, d, c.LayerAttnScale(l));
        var kAll = _arena.Span(_kCache, layerBase, (p0 + T) * kvDim);         // [Tk, K, d]
        var vAll = _arena.Span(_vCache, layerBase, (p0 + T) * kvDim);
        var z = _arena.Span(_z, 0, T * c.QDim);                                 // [T, H, d]
        if (Hooks.Has(HookKind.AttnScores, l) || Hooks.Has(HookKind.Pattern, l))
        {
            int n = H * T * (p0 + T);
            var scores = _attnArena!.Span(_scores, 0, n);                       // [H, T, Tk]
            var pattern = _attnArena.Span(_pattern, 0, n);
            k.AttentionScores(q, kAll, shape, scores);
            Fire(HookKind.AttnScores, l, scores, T, p0);
            k.AttentionSoftmax(scores, shape, pattern);
            Fire(HookKind.Pattern, l, pattern, T, p0);
            k.AttentionMix(pattern, vAll, shape, z);
        }
        else k.Attention(q, kAll, vAll, shape, z);
        Fire(HookKind.Z, l, z, T, p0);
        var attnOut = _arena.Span(_attnOut, 0, T * c.DModel);
        k.MatMul(z, T, w.O, attnOut);
        Fire(HookKind.AttnOut, l, attnOut, T, p0);
        return attnOut;
    }

    /// <summary>Splits a fused projection output into q and the cache rows of k and v.</summary>
    void SplitQkv(ReadOnlySpan<float> qkv, int T, Span<float> q, Span<float> kOut, Span<float> vOut)
    {
        var c = Config;
        int qd = c.QDim, kvd = c.KvDim, d = c.HeadDim, width = qd + 2 * kvd;
        for (int t = 0; t < T; t++)
        {
            var row = qkv.Slice(t * width, width);
            if (c.QkvLayout == QkvLayout.FusedConcat)
            {
                row[..qd].CopyTo(q.Slice(t * qd, qd));
                row.Slice(qd, kvd).CopyTo(kOut.Slice(t * kvd, kvd));
                row.Slice(qd + kvd, kvd).CopyTo(vOut.Slice(t * kvd, kvd));
            }
            else
            {
                // [H, 3, d] per head: q, k, v (GPT-NeoX; no GQA in this layout)
                for (int h = 0; h < c.NHeads; h++)
                {
                    var head = row.Slice(h * 3 * d, 3 * d);
                    head[..d].CopyTo(q.Slice(t * qd + h * d, d));
                    head.Slice(d, d).CopyTo(kOut.Slice(t * kvd + h * d, d));
                    head.Slice(2 * d, d).CopyTo(vOut.Slice(t * kvd + h * d, d));
                }
            }
        }
    }

    Span<float> Mlp(int l, LayerWeights w, int T, int p0, Span<float> x)
    {
        var c = Config;
        var k = Kernels;
        int M = c.DMlp;
        var pre = _arena.Span(_mlpPre, 0, T * M);                               // [T, M]
        var post = _arena.Span(_mlpPost, 0, T * M);
        k.MatMul(x, T, w.MlpIn, pre);
        Fire(HookKind.MlpPre, l, pre, T, p0);
        if (c.GatedMlp)
        {
            var up = _arena.Span(_mlpPreLinear, 0, T * M);
            k.MatMul(x, T, w.MlpUp!, up);
            Fire(HookKind.MlpPreLinear, l, up, T, p0);
            k.GatedActivation(c.Activation, pre, up, post);
        }
        else k.Activation(c.Activation, pre, post);
        Fire(HookKind.MlpPost, l, post, T, p0);
        var mlpOut = _arena.Span(_mlpOut, 0, T * c.DModel);
        k.MatMul(post, T, w.MlpOut, mlpOut);
        Fire(HookKind.MlpOut, l, mlpOut, T, p0);
        return mlpOut;
    }

    void Norm(ReadOnlySpan<float> x, int T, float[] weight, float[]? bias, Span<float> y, Span<float> scale)
    {
        var c = Config;
        if (c.Norm == NormKind.LayerNorm) Kernels.LayerNorm(x, T, c.DModel, weight, bias, c.NormEps, y, scale);
        else Kernels.RmsNorm(x, T, c.DModel, weight, c.NormWeightOffset, c.NormEps, y, scale);
    }

    void Fire(HookKind kind, int layer, Span<float> data, int T, int p0)
    {
        if (!Hooks.Has(kind, layer)) return;
        Hooks.Fire(kind, layer, data, HookPoints.Shape(Config, kind, T, p0 + T), p0);
    }

    void EnsureAttentionSlots()
    {
        if (_attnArena != null) return;
        // [H, capacity, capacity] for scores and pattern: only when a tap asks for them.
        long n = (long)Config.NHeads * Capacity * Capacity;
        if (n > int.MaxValue) throw new UsageException($"attention taps need {n} floats per slot at capacity {Capacity}; use a shorter capacity");
        _attnArena = new Arena();
        _scores = _attnArena.Reserve("attn_scores", n);
        _pattern = _attnArena.Reserve("pattern", n);
        _attnArena.Allocate();
    }

    public void Dispose()
    {
        _arena.Dispose();
        _attnArena?.Dispose();
    }
}
