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
    /// <summary>Host kernels to use instead of <see cref="Backend"/> (e.g. a <see cref="ProfilingKernels"/> decorator, or a thread count).</summary>
    public IKernels? Kernels { get; init; }
    /// <summary>A backend instance to use instead of <see cref="Backend"/> (e.g. a GPU backend).</summary>
    public IBackend? Device { get; init; }
}

/// <summary>
/// Runs a <see cref="Model"/>: one activation arena, a KV cache, a backend and the hooks. One block implementation
/// drives every family from <see cref="ModelConfig"/> flags. The arena and the cache are buffers of the backend
/// (host memory for the CPU backends, device memory for a GPU); on the host a tap is the arena itself, on a device the
/// tapped slot is copied to the host for the hook and back after it. Not thread-safe (one forward at a time).
/// </summary>
public sealed partial class Session : IDisposable
{
    public Model Model { get; }
    public ModelConfig Config { get; }
    /// <summary>Where activations live and ops run.</summary>
    public IBackend Backend { get; }
    /// <summary>Span-based kernels on host memory (for small computations outside the forward pass).</summary>
    public IKernels Kernels => Backend.HostKernels;
    public HookRegistry Hooks { get; }
    public int Capacity { get; }
    /// <summary>Positions already in the KV cache; the next forward call starts there.</summary>
    public int Length { get; private set; }
    public bool AllLogits { get; }

    readonly IDeviceBuffer _arena;
    readonly long _arenaFloats;
    readonly RopeTable? _rope;
    // Slots: global
    readonly Slot _embed, _posEmbed, _resid, _lnfNorm, _lnfScale, _logits;
    // Slots: one block's scratch, reused by every layer (a tap is a view of it while the hook runs)
    readonly Slot _ln1Norm, _ln1Scale, _ln2Norm, _ln2Scale, _qkv, _q, _z, _attnOut, _mlpPre, _mlpPreLinear, _mlpPost, _mlpOut;
    // KV cache [layer, capacity, nKv, headDim]: k after RoPE, v
    readonly Slot _kCache, _vCache;
    IDeviceBuffer? _attnArena;
    Slot _scores, _pattern;
    readonly bool _ownsBackend;
    // Device backends: host copies of the logits and of a tapped slot (grown once).
    float[] _hostLogits = [];
    float[] _staging = [];

    public Session(Model model, SessionOptions? options = null)
    {
        options ??= new SessionOptions();
        Model = model;
        Config = model.Config;
        _ownsBackend = options.Device == null && options.Kernels == null;
        Backend = options.Device ?? (options.Kernels != null ? new HostBackend(options.Kernels) : KernelRegistry.CreateBackend(options.Backend));
        Hooks = new HookRegistry(Config);
        AllLogits = options.AllLogits;
        var c = Config;
        if (options.Capacity < 0) throw new UsageException($"capacity {options.Capacity} must be positive");
        Capacity = options.Capacity == 0 ? c.ContextLength : Math.Min(options.Capacity, c.ContextLength);
        long T = Capacity, D = c.DModel;
        var plan = new SlotPlan();
        _embed = plan.Reserve("embed", T * D);
        _posEmbed = plan.Reserve("pos_embed", c.Positions == PositionKind.Learned ? T * D : 0);
        _resid = plan.Reserve("resid", T * D);
        _ln1Norm = plan.Reserve("ln1.normalized", T * D);
        _ln1Scale = plan.Reserve("ln1.scale", T);
        _ln2Norm = plan.Reserve("ln2.normalized", T * D);
        _ln2Scale = plan.Reserve("ln2.scale", T);
        _qkv = plan.Reserve("qkv", c.QkvLayout == QkvLayout.Separate ? 0 : T * (c.QDim + 2L * c.KvDim));
        _q = plan.Reserve("q", T * c.QDim);
        _z = plan.Reserve("z", T * c.QDim);
        _attnOut = plan.Reserve("attn_out", T * D);
        _mlpPre = plan.Reserve("mlp.pre", T * c.DMlp);
        _mlpPreLinear = plan.Reserve("mlp.pre_linear", c.GatedMlp ? T * c.DMlp : 0);
        _mlpPost = plan.Reserve("mlp.post", T * c.DMlp);
        _mlpOut = plan.Reserve("mlp_out", T * D);
        _lnfNorm = plan.Reserve("ln_final.normalized", T * D);
        _lnfScale = plan.Reserve("ln_final.scale", T);
        _logits = plan.Reserve("logits", (AllLogits ? T : 1) * c.VocabSize);
        _kCache = plan.Reserve("k_cache", c.NLayers * T * c.KvDim);
        _vCache = plan.Reserve("v_cache", c.NLayers * T * c.KvDim);
        _arenaFloats = plan.Floats;
        _arena = Backend.Allocate(_arenaFloats);
        _rope = RopeTable.For(c, Capacity);
    }

    /// <summary>Bytes of the activation arena and KV cache.</summary>
    public long ArenaBytes => (_arenaFloats + (_attnArena?.Length ?? 0)) * sizeof(float);

    /// <summary>Forgets the KV cache: the next forward starts at position 0.</summary>
    public void Reset() => Length = 0;

    /// <summary>Logits of the last forward call: [T, V] (or [1, V] when the session keeps only the last row).</summary>
    public ReadOnlySpan<float> LastLogits => Backend.IsHost
        ? Backend.HostView(Slice(_logits, 0, _lastLogitRows * Config.VocabSize))
        : _hostLogits.AsSpan(0, _lastLogitRows * Config.VocabSize);
    int _lastLogitRows;

    DeviceSpan Slice(in Slot s, long start, int length) => new DeviceSpan(_arena, s.Offset, checked((int)s.Length)).Slice(start, length);

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
        var b = Backend;
        int D = c.DModel;

        // ---- embeddings
        var embed = Slice(_embed, 0, T * D);                          // [T, D]
        b.EmbeddingGather(tokens, Model.Weights.TokenEmbedding, embed);
        Fire(HookKind.Embed, -1, embed, T, p0);
        var resid = Slice(_resid, 0, T * D);                          // [T, D] the residual stream, updated in place
        b.Copy(embed, resid);
        if (c.Positions == PositionKind.Learned)
        {
            var pos = Slice(_posEmbed, 0, T * D);                     // [T, D] wpe rows p0..p0+T-1
            b.TableRows(Model.Weights.PositionEmbedding!.Value, p0, T, pos);
            Fire(HookKind.PosEmbed, -1, pos, T, p0);
            b.AddInPlace(pos, resid);
        }
        if (c.EmbedScale != 1f) b.ScaleInPlace(resid, c.EmbedScale);

        // ---- blocks
        for (int l = 0; l < c.NLayers; l++) Block(l, T, p0, resid);

        // ---- final norm and unembedding
        var lnf = Slice(_lnfNorm, 0, T * D);
        var lnfScale = Slice(_lnfScale, 0, T);
        Norm(resid, T, Model.Weights.FinalNormWeight, Model.Weights.FinalNormBias, lnf, lnfScale);
        Fire(HookKind.LnFinalScale, -1, lnfScale, T, p0);
        Fire(HookKind.LnFinalNormalized, -1, lnf, T, p0);
        int rows = AllLogits ? T : 1;
        var logits = Slice(_logits, 0, rows * c.VocabSize);
        b.MatMul(AllLogits ? lnf : lnf.Slice((long)(T - 1) * D, D), rows, Model.Weights.Unembed, logits);
        _lastLogitRows = rows;
        Length = p0 + T;
        if (b.IsHost) return b.HostView(logits);
        if (_hostLogits.Length < logits.Length) _hostLogits = GC.AllocateUninitializedArray<float>(logits.Length);
        b.Synchronize();
        b.Download(logits, _hostLogits.AsSpan(0, logits.Length));
        return _hostLogits.AsSpan(0, logits.Length);
    }

    void Block(int l, int T, int p0, DeviceSpan resid)
    {
        var c = Config;
        var w = Model.Weights.Layers[l];
        var b = Backend;
        int D = c.DModel;
        Fire(HookKind.ResidPre, l, resid, T, p0);

        var ln1 = Slice(_ln1Norm, 0, T * D);
        var ln1Scale = Slice(_ln1Scale, 0, T);
        Norm(resid, T, w.Ln1Weight, w.Ln1Bias, ln1, ln1Scale);
        Fire(HookKind.Ln1Scale, l, ln1Scale, T, p0);
        Fire(HookKind.Ln1Normalized, l, ln1, T, p0);

        var attnOut = Attention(l, w, T, p0, ln1);                   // [T, D]

        var ln2 = Slice(_ln2Norm, 0, T * D);
        var ln2Scale = Slice(_ln2Scale, 0, T);
        if (c.ParallelResidual)
        {
            // x + attn(ln1(x)) + mlp(ln2(x)): both norms read the block input.
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, T, p0);
            Fire(HookKind.Ln2Normalized, l, ln2, T, p0);
            var mlpOut = Mlp(l, w, T, p0, ln2);
            b.AddInPlace(attnOut, resid);
            b.AddInPlace(mlpOut, resid);
        }
        else
        {
            b.AddInPlace(attnOut, resid);
            Fire(HookKind.ResidMid, l, resid, T, p0);
            Norm(resid, T, w.Ln2Weight, w.Ln2Bias, ln2, ln2Scale);
            Fire(HookKind.Ln2Scale, l, ln2Scale, T, p0);
            Fire(HookKind.Ln2Normalized, l, ln2, T, p0);
            var mlpOut = Mlp(l, w, T, p0, ln2);
            b.AddInPlace(mlpOut, resid);
        }
        Fire(HookKind.ResidPost, l, resid, T, p0);
    }

    DeviceSpan Attention(int l, LayerWeights w, int T, int p0, DeviceSpan x)
    {
        var c = Config;
        var b = Backend;
        int H = c.NHeads, K = c.NKvHeads, d = c.HeadDim, kvDim = c.KvDim;
        long layerBase = (long)l * Capacity * kvDim;
        var q = Slice(_q, 0, T * c.QDim);                                       // [T, H, d]
        var kNew = Slice(_kCache, layerBase + (long)p0 * kvDim, T * kvDim);     // [T, K, d] cache rows p0..
        var vNew = Slice(_vCache, layerBase + (long)p0 * kvDim, T * kvDim);     // [T, K, d]
        if (c.QkvLayout == QkvLayout.Separate)
        {
            b.MatMul(x, T, w.Q!, q);
            b.MatMul(x, T, w.K!, kNew);
            b.MatMul(x, T, w.V!, vNew);
        }
        else
        {
            int width = c.QDim + 2 * kvDim;
            var qkv = Slice(_qkv, 0, T * width);                                // [T, q+k+v]
            b.MatMul(x, T, w.Qkv!, qkv);
            b.SplitQkv(qkv, T, c.QkvLayout, H, K, d, q, kNew, vNew);
        }
        Fire(HookKind.Q, l, q, T, p0);
        Fire(HookKind.K, l, kNew, T, p0);
        Fire(HookKind.V, l, vNew, T, p0);
        if (_rope != null)
        {
            b.Rope(q, T, H, d, p0, _rope);
            b.Rope(kNew, T, K, d, p0, _rope);
            Fire(HookKind.RotQ, l, q, T, p0);
            Fire(HookKind.RotK, l, kNew, T, p0);
        }
        var shape = new AttentionShape(T, p0, H, K, d, c.LayerAttnScale(l));
        var kAll = Slice(_kCache, layerBase, (p0 + T) * kvDim);               // [Tk, K, d]
        var vAll = Slice(_vCache, layerBase, (p0 + T) * kvDim);
        var z = Slice(_z, 0, T * c.QDim);                                       // [T, H, d]
        if (Hooks.Has(HookKind.AttnScores, l) || Hooks.Has(HookKind.Pattern, l))
        {
            int n = H * T * (p0 + T);
            var scores = new DeviceSpan(_attnArena!, _scores.Offset, n);       // [H, T, Tk]
            var pattern = new DeviceSpan(_attnArena!, _pattern.Offset, n);
            b.AttentionScores(q, kAll, shape, scores);
            Fire(HookKind.AttnScores, l, scores, T, p0);
            b.AttentionSoftmax(scores, shape, pattern);
            Fire(HookKind.Pattern, l, pattern, T, p0);
            b.AttentionMix(pattern, vAll, shape, z);
        }
        else b.Attention(q, kAll, vAll, shape, z);
        Fire(HookKind.Z, l, z, T, p0);
        var attnOut = Slice(_attnOut, 0, T * c.DModel);
        b.MatMul(z, T, w.O, attnOut);
        Fire(HookKind.AttnOut, l, attnOut, T, p0);
        return attnOut;
    }

    DeviceSpan Mlp(int l, LayerWeights w, int T, int p0, DeviceSpan x)
    {
        var c = Config;
        var b = Backend;
        int M = c.DMlp;
        var pre = Slice(_mlpPre, 0, T * M);                                    // [T, M]
        var post = Slice(_mlpPost, 0, T * M);
        b.MatMul(x, T, w.MlpIn, pre);
        Fire(HookKind.MlpPre, l, pre, T, p0);
        if (c.GatedMlp)
        {
            var up = Slice(_mlpPreLinear, 0, T * M);
            b.MatMul(x, T, w.MlpUp!, up);
            Fire(HookKind.MlpPreLinear, l, up, T, p0);
            b.GatedActivation(c.Activation, pre, up, post);
        }
        else b.Activation(c.Activation, pre, post);
        Fire(HookKind.MlpPost, l, post, T, p0);
        var mlpOut = Slice(_mlpOut, 0, T * c.DModel);
        b.MatMul(post, T, w.MlpOut, mlpOut);
        Fire(HookKind.MlpOut, l, mlpOut, T, p0);
        return mlpOut;
    }

    void Norm(DeviceSpan x, int T, float[] weight, float[]? bias, DeviceSpan y, DeviceSpan scale)
    {
        var c = Config;
        if (c.Norm == NormKind.LayerNorm) Backend.LayerNorm(x, T, c.DModel, weight, bias, c.NormEps, y, scale);
        else Backend.RmsNorm(x, T, c.DModel, weight, c.NormWeightOffset, c.NormEps, y, scale);
    }

    void Fire(HookKind kind, int layer, DeviceSpan data, int T, int p0)
    {
        if (!Hooks.Has(kind, layer)) return;
        var shape = HookPoints.Shape(Config, kind, T, p0 + T);
        var b = Backend;
        if (b.IsHost)
        {
            Hooks.Fire(kind, layer, b.HostView(data), shape, p0);
            return;
        }
        // A device slot: the hook sees a host copy, and what it leaves there goes back before the next op reads it.
        if (_staging.Length < data.Length) _staging = GC.AllocateUninitializedArray<float>(data.Length);
        var host = _staging.AsSpan(0, data.Length);
        b.Synchronize();
        b.Download(data, host);
        Hooks.Fire(kind, layer, host, shape, p0);
        b.Upload(host, data);
    }

    void EnsureAttentionSlots()
    {
        if (_attnArena != null) return;
        // [H, capacity, capacity] for scores and pattern: only when a tap asks for them.
        long n = (long)Config.NHeads * Capacity * Capacity;
        if (n > int.MaxValue) throw new UsageException($"attention taps need {n} floats per slot at capacity {Capacity}; use a shorter capacity");
        var plan = new SlotPlan();
        _scores = plan.Reserve("attn_scores", n);
        _pattern = plan.Reserve("pattern", n);
        _attnArena = Backend.Allocate(plan.Floats);
    }

    public void Dispose()
    {
        _arena.Dispose();
        _attnArena?.Dispose();
        if (_ownsBackend) Backend.Dispose();
    }
}
