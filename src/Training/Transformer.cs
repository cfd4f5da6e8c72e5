using System.Numerics;
using System.Numerics.Tensors;
using Engine.Kernels;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Training;

/// <summary>Precision of a training engine: F32 (training, on the engine's kernels) or F64 (reference, gradient checks).</summary>
public enum Precision { F32, F64 }

/// <summary>Changes an activation in place during the forward pass (as a runtime hook does); the backward treats the edited value as the activation.</summary>
public delegate void ActivationEdit<T>(HookKind kind, int layer, Span<T> value);

/// <summary>What the backward pass computes besides the activation gradients it needs.</summary>
public sealed record BackwardOptions
{
    /// <summary>Accumulate parameter gradients (training). False for gradients with respect to activations only.</summary>
    public bool ParameterGradients { get; init; } = true;
    /// <summary>Activation kinds whose gradients are kept for every layer (ResidPre, ResidMid, ResidPost, AttnOut, MlpOut, Z, Q, K, V, Pattern, MlpPost).</summary>
    public IReadOnlySet<HookKind>? KeepGradients { get; init; }
}

/// <summary>
/// A transformer that can be trained: parameters in one flat array (<see cref="ParameterLayout"/>), a forward pass over a
/// batch of equal-length sequences that keeps every activation the backward needs (llm.c style: all layers' activations
/// at once), and a backward pass for every op. The architecture is a <see cref="ModelConfig"/>, the same immutable
/// description the inference runtime reads, so every family the loader knows (gpt2, llama/mistral, qwen2, gemma,
/// gpt_neox) runs here; <see cref="Checkpoint"/> writes gpt2 and llama folders and reads any loaded model.
/// Independent of the inference <see cref="Session"/> (which keeps one block's scratch, has no backward).
/// </summary>
public sealed class Transformer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public ModelConfig Config { get; }
    public ParameterLayout Layout { get; }
    public T[] Params { get; }
    public T[] Grads { get; }
    public int Threads => _par.Threads;
    public string MatOpsName => _mm.Name;

    readonly IMatOps<T> _mm;
    readonly Par _par;
    T[] _cos = [], _sin = [];
    int _ropeRows;

    // shapes of the current batch
    int _b, _s, _n;
    int[] _tokens = [];
    Acts? _a;

    public int Batch => _b;
    public int SeqLen => _s;

    public Transformer(ModelConfig config, int threads = 0, bool useKernels = true, int? positionRows = null)
    {
        Config = config;
        Layout = new ParameterLayout(config, positionRows);
        Params = Alloc(Layout.Total);
        Grads = Alloc(Layout.Total);
        _par = new Par(threads > 0 ? threads : Environment.ProcessorCount);
        if (typeof(T) == typeof(float) && useKernels)
            _mm = (IMatOps<T>)(object)new KernelMatOps(new Engine.Kernels.Simd.SimdKernels(new Engine.Kernels.Threading.WorkerPool(_par.Threads)), _par);
        else _mm = new LoopMatOps<T>(_par);
    }

    static T[] Alloc(long n) => GC.AllocateArray<T>(checked((int)n), pinned: true);
    static T C(double v) => T.CreateTruncating(v);
    static double D(T v) => double.CreateTruncating(v);

    public Span<T> P(string name) => Layout.Slice(Params, name);
    public Span<T> G(string name) => Layout.Slice(Grads, name);
    Span<T> POpt(string name) => Layout.SliceOrEmpty(Params, name);
    Span<T> GOpt(string name) => Layout.SliceOrEmpty(Grads, name);
    T[] PArr => Params;

    // ------------------------------------------------------------------ initialisation

    /// <summary>
    /// Seeded initialisation (GPT-2 style): matrices N(0, std), the output projections of attention and MLP
    /// N(0, std/sqrt(2·layers)), norm weights 1 (Gemma-style offset norms: 0), biases 0.
    /// </summary>
    public void Initialize(ulong seed, double std = 0.02)
    {
        var rng = Rng.Derive(seed, "init");
        double resid = std / Math.Sqrt(2.0 * Config.NLayers);
        foreach (var p in Layout.Params)
        {
            var s = Layout.Slice(Params, p);
            string kind = p.Name[(p.Name.LastIndexOf('.') + 1)..];
            bool isNorm = p.Name.Contains("ln") && kind == "w";
            if (p.Shape.Length == 1)
            {
                s.Fill(isNorm ? C(Config.NormWeightOffset != 0 ? 0 : 1) : T.Zero);
                continue;
            }
            double sd = p.Name.EndsWith(".o.w") || p.Name.EndsWith(".out.w") ? resid : std;
            for (int i = 0; i < s.Length; i++) s[i] = C(rng.Normal() * sd);
        }
    }

    // ------------------------------------------------------------------ activations

    sealed class Acts
    {
        public required T[][] ResidPre;              // [L + 1][N, D]; ResidPre[l + 1] is also resid_post of layer l
        public required T[][] Xhat1, Rstd1, Ln1Out;
        public required T[][] Q, K, V, Qr, Kr;       // [N, H·d], [N, K·d]
        public required T[][] Pattern;               // [B, H, S, S]
        public required T[][] Z, AttnOut, ResidMid;
        public required T[][] Xhat2, Rstd2, Ln2Out;
        public required T[][] Pre, Post, MlpOut;     // Pre [N, M or 2M] (gated rows: gate then up)
        public required T[] XhatF, RstdF, LnfOut, Logits, DLogits;
        public required T[] Qkv;                     // scratch [N, H·d + 2·K·d]
        // backward scratch
        public required T[] DResid, DLn, DQkv, DQ, DK, DV, DZ, DPre, DPost, DPattern;
        public Dictionary<(HookKind, int), T[]> KeptGrads { get; } = new();
    }

    void Ensure(int batch, int seqLen)
    {
        if (seqLen > Config.ContextLength) throw new UsageException($"sequence of {seqLen} tokens is longer than the model's context of {Config.ContextLength}");
        if (Config.Positions == PositionKind.Learned && seqLen > Layout.PositionRows) throw new UsageException($"sequence of {seqLen} tokens is longer than the position table ({Layout.PositionRows})");
        int n = batch * seqLen;
        if (_a != null && _b == batch && _s == seqLen) return;
        var c = Config;
        int L = c.NLayers, D = c.DModel, Q = c.QDim, Kv = c.KvDim, M = c.DMlp, H = c.NHeads, V = c.VocabSize;
        int pre = c.GatedMlp ? 2 * M : M;
        T[][] Many(int count, long size) => Enumerable.Range(0, count).Select(_ => Alloc(size)).ToArray();
        bool rope = c.Positions == PositionKind.Rotary;
        var q = Many(L, (long)n * Q); var k = Many(L, (long)n * Kv);
        _a = new Acts
        {
            ResidPre = Many(L + 1, (long)n * D),
            Xhat1 = Many(L, (long)n * D), Rstd1 = Many(L, n), Ln1Out = Many(L, (long)n * D),
            Q = q, K = k, V = Many(L, (long)n * Kv),
            Qr = rope ? Many(L, (long)n * Q) : q, Kr = rope ? Many(L, (long)n * Kv) : k,
            Pattern = Many(L, (long)batch * H * seqLen * seqLen),
            Z = Many(L, (long)n * Q), AttnOut = Many(L, (long)n * D), ResidMid = c.ParallelResidual ? [] : Many(L, (long)n * D),
            Xhat2 = Many(L, (long)n * D), Rstd2 = Many(L, n), Ln2Out = Many(L, (long)n * D),
            Pre = Many(L, (long)n * pre), Post = Many(L, (long)n * M), MlpOut = Many(L, (long)n * D),
            XhatF = Alloc((long)n * D), RstdF = Alloc(n), LnfOut = Alloc((long)n * D), Logits = Alloc((long)n * V), DLogits = Alloc((long)n * V),
            Qkv = Alloc((long)n * (Q + 2 * Kv)),
            DResid = Alloc((long)n * D), DLn = Alloc((long)n * D), DQkv = Alloc((long)n * (Q + 2 * Kv)),
            DQ = Alloc((long)n * Q), DK = Alloc((long)n * Kv), DV = Alloc((long)n * Kv), DZ = Alloc((long)n * Q),
            DPre = Alloc((long)n * pre), DPost = Alloc((long)n * M), DPattern = Alloc((long)batch * H * seqLen * seqLen),
        };
        _b = batch; _s = seqLen; _n = n;
        if (rope && _ropeRows < seqLen)
        {
            int half = c.RotaryDim / 2;
            var inv = RopeTable.ComputeInverseFrequencies(c.RotaryDim, c.RopeTheta, c.RopeScaling);
            _cos = new T[seqLen * half]; _sin = new T[seqLen * half];
            for (int p = 0; p < seqLen; p++)
                for (int i = 0; i < half; i++)
                {
                    double ang = p * inv[i];
                    _cos[p * half + i] = C(Math.Cos(ang)); _sin[p * half + i] = C(Math.Sin(ang));
                }
            _ropeRows = seqLen;
        }
    }

    /// <summary>Frees the activation buffers (they are reallocated by the next forward).</summary>
    public void ReleaseActivations() { _a = null; _b = _s = _n = 0; }

    /// <summary>Logits [batch·seqLen, V] of the last forward pass.</summary>
    public ReadOnlySpan<T> Logits => _a!.Logits.AsSpan(0, _n * Config.VocabSize);
    /// <summary>∂loss/∂logits buffer [batch·seqLen, V] (written by <see cref="Loss"/>, or by the caller before <see cref="Backward"/>).</summary>
    public Span<T> DLogits => _a!.DLogits.AsSpan(0, _n * Config.VocabSize);

    /// <summary>
    /// A stored activation of the last forward pass in TransformerLens layout over all batch rows: [N, ...] for per-row
    /// taps (N = batch·seqLen), [B, H, S, S] for the pattern. Kinds: ResidPre, ResidMid, ResidPost, AttnOut, MlpOut,
    /// Ln1Normalized, Ln2Normalized, Q, K, V, RotQ, RotK, Z, Pattern, MlpPost, MlpPre (non-gated), LnFinalNormalized.
    /// </summary>
    public ReadOnlySpan<T> Activation(HookKind kind, int layer)
    {
        var a = _a ?? throw new InvalidOperationException("no forward pass yet");
        return kind switch
        {
            HookKind.ResidPre => a.ResidPre[layer],
            HookKind.ResidPost => a.ResidPre[layer + 1],
            HookKind.ResidMid => Config.ParallelResidual ? throw new InvalidOperationException("parallel-residual models have no resid_mid") : a.ResidMid[layer],
            HookKind.AttnOut => a.AttnOut[layer],
            HookKind.MlpOut => a.MlpOut[layer],
            HookKind.Ln1Normalized => a.Ln1Out[layer],
            HookKind.Ln2Normalized => a.Ln2Out[layer],
            HookKind.Q => a.Q[layer], HookKind.K => a.K[layer], HookKind.V => a.V[layer],
            HookKind.RotQ => a.Qr[layer], HookKind.RotK => a.Kr[layer],
            HookKind.Z => a.Z[layer],
            HookKind.Pattern => a.Pattern[layer],
            HookKind.MlpPost => a.Post[layer],
            HookKind.MlpPre when !Config.GatedMlp => a.Pre[layer],
            HookKind.LnFinalNormalized => a.LnfOut,
            _ => throw new NotSupportedException($"activation {kind} is not kept by the training engine"),
        };
    }

    /// <summary>A gradient kept by the last backward (<see cref="BackwardOptions.KeepGradients"/>), same layout as <see cref="Activation"/>.</summary>
    public ReadOnlySpan<T> Gradient(HookKind kind, int layer) =>
        (_a ?? throw new InvalidOperationException("no backward pass yet")).KeptGrads.TryGetValue((kind, layer), out var g) ? g
        : throw new InvalidOperationException($"the gradient of {HookPoints.Name(kind, layer)} was not kept");

    // ------------------------------------------------------------------ forward

    /// <summary>Forward pass of <paramref name="batch"/> sequences of <paramref name="seqLen"/> tokens (row-major). Logits in <see cref="Logits"/>.</summary>
    public void Forward(ReadOnlySpan<int> tokens, int batch, int seqLen, ActivationEdit<T>? edit = null)
    {
        if (tokens.Length != batch * seqLen) throw new ArgumentException($"{tokens.Length} tokens for a batch of {batch} x {seqLen}");
        var c = Config;
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)c.VocabSize) throw new UsageException($"token id {tokens[i]} at index {i} is out of range (vocabulary size {c.VocabSize})");
        Ensure(batch, seqLen);
        var a = _a!;
        if (_tokens.Length != tokens.Length) _tokens = new int[tokens.Length];
        tokens.CopyTo(_tokens);
        int N = _n, D = c.DModel, Q = c.QDim, Kv = c.KvDim, M = c.DMlp, H = c.NHeads, Dh = c.HeadDim, S = seqLen;
        int qkvW = Q + 2 * Kv, preW = c.GatedMlp ? 2 * M : M;

        // embeddings
        {
            var x = a.ResidPre[0].AsSpan(0, N * D);
            var emb = P("embed");
            T scale = C(c.EmbedScale);
            bool learned = c.Positions == PositionKind.Learned;
            var pos = learned ? P("pos") : Span<T>.Empty;
            for (int r = 0; r < N; r++)
            {
                var row = x.Slice(r * D, D);
                emb.Slice(tokens[r] * D, D).CopyTo(row);
                if (scale != T.One) TensorPrimitives.Multiply(row, scale, row);
                if (learned) TensorPrimitives.Add(row, pos.Slice((r % S) * D, D), row);
            }
        }
        for (int l = 0; l < c.NLayers; l++)
        {
            string p = l + ".";
            var resid = a.ResidPre[l];
            edit?.Invoke(HookKind.ResidPre, l, resid.AsSpan(0, N * D));
            Norm(resid, l, 1);
            _mm.Forward(a.Ln1Out[l].AsSpan(0, N * D), N, D, P(p + "qkv.w"), qkvW, POpt(p + "qkv.b"), a.Qkv.AsSpan(0, N * qkvW));
            {
                var qkv = a.Qkv; var q = a.Q[l]; var k = a.K[l]; var v = a.V[l];
                for (int r = 0; r < N; r++)
                {
                    qkv.AsSpan(r * qkvW, Q).CopyTo(q.AsSpan(r * Q, Q));
                    qkv.AsSpan(r * qkvW + Q, Kv).CopyTo(k.AsSpan(r * Kv, Kv));
                    qkv.AsSpan(r * qkvW + Q + Kv, Kv).CopyTo(v.AsSpan(r * Kv, Kv));
                }
                if (edit != null)
                {
                    edit(HookKind.Q, l, q.AsSpan(0, N * Q)); edit(HookKind.K, l, k.AsSpan(0, N * Kv)); edit(HookKind.V, l, v.AsSpan(0, N * Kv));
                }
                if (c.Positions == PositionKind.Rotary)
                {
                    q.AsSpan(0, N * Q).CopyTo(a.Qr[l]); k.AsSpan(0, N * Kv).CopyTo(a.Kr[l]);
                    RopeRows(a.Qr[l], H, false); RopeRows(a.Kr[l], c.NKvHeads, false);
                }
            }
            {
                var qr = a.Qr[l]; var kr = a.Kr[l]; var v = a.V[l]; var pat = a.Pattern[l]; var z = a.Z[l];
                double scale = c.LayerAttnScale(l);
                int B = batch, K = c.NKvHeads;
                _par.For(B * H, item =>
                {
                    int b = item / H, h = item % H;
                    Ops<T>.AttentionHead(qr.AsSpan(b * S * Q, S * Q), kr.AsSpan(b * S * Kv, S * Kv), v.AsSpan(b * S * Kv, S * Kv), S, H, K, Dh, h, scale,
                        pat.AsSpan((b * H + h) * S * S, S * S), z.AsSpan(b * S * Q, S * Q));
                });
            }
            if (edit != null)
            {
                // an edited pattern is mixed again: z = pattern · v
                var pat = a.Pattern[l]; var before = pat.AsSpan(0, batch * H * S * S).ToArray();
                edit(HookKind.Pattern, l, pat.AsSpan(0, batch * H * S * S));
                if (!pat.AsSpan(0, before.Length).SequenceEqual(before))
                {
                    var v = a.V[l]; var z = a.Z[l]; int K = c.NKvHeads;
                    _par.For(batch * H, item =>
                    {
                        int b = item / H, h = item % H;
                        Ops<T>.AttentionMix(pat.AsSpan((b * H + h) * S * S, S * S), v.AsSpan(b * S * Kv, S * Kv), S, H, K, Dh, h, z.AsSpan(b * S * Q, S * Q));
                    });
                }
            }
            edit?.Invoke(HookKind.Z, l, a.Z[l].AsSpan(0, N * Q));
            _mm.Forward(a.Z[l].AsSpan(0, N * Q), N, Q, P(p + "o.w"), D, POpt(p + "o.b"), a.AttnOut[l].AsSpan(0, N * D));
            edit?.Invoke(HookKind.AttnOut, l, a.AttnOut[l].AsSpan(0, N * D));
            T[] mlpIn;
            if (!c.ParallelResidual)
            {
                TensorPrimitives.Add(resid.AsSpan(0, N * D), a.AttnOut[l].AsSpan(0, N * D), a.ResidMid[l].AsSpan(0, N * D));
                edit?.Invoke(HookKind.ResidMid, l, a.ResidMid[l].AsSpan(0, N * D));
                mlpIn = a.ResidMid[l];
            }
            else mlpIn = resid;
            Norm(mlpIn, l, 2);
            _mm.Forward(a.Ln2Out[l].AsSpan(0, N * D), N, D, P(p + "in.w"), preW, POpt(p + "in.b"), a.Pre[l].AsSpan(0, N * preW));
            {
                var pre = a.Pre[l]; var post = a.Post[l]; var act = c.Activation; bool gated = c.GatedMlp;
                _par.Chunks(N, 16, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        if (gated) Ops<T>.Gated(act, pre.AsSpan(r * preW, M), pre.AsSpan(r * preW + M, M), post.AsSpan(r * M, M));
                        else Ops<T>.Activation(act, pre.AsSpan(r * M, M), post.AsSpan(r * M, M));
                    }
                });
            }
            edit?.Invoke(HookKind.MlpPost, l, a.Post[l].AsSpan(0, N * M));
            _mm.Forward(a.Post[l].AsSpan(0, N * M), N, M, P(p + "out.w"), D, POpt(p + "out.b"), a.MlpOut[l].AsSpan(0, N * D));
            edit?.Invoke(HookKind.MlpOut, l, a.MlpOut[l].AsSpan(0, N * D));
            var next = a.ResidPre[l + 1].AsSpan(0, N * D);
            if (!c.ParallelResidual) TensorPrimitives.Add(a.ResidMid[l].AsSpan(0, N * D), a.MlpOut[l].AsSpan(0, N * D), next);
            else
            {
                TensorPrimitives.Add(resid.AsSpan(0, N * D), a.AttnOut[l].AsSpan(0, N * D), next);
                TensorPrimitives.Add(next, a.MlpOut[l].AsSpan(0, N * D), next);
            }
            edit?.Invoke(HookKind.ResidPost, l, next);
        }
        Norm(a.ResidPre[c.NLayers], -1, 0);
        _mm.Forward(a.LnfOut.AsSpan(0, N * D), N, D, UnembedW, c.VocabSize, Span<T>.Empty, a.Logits.AsSpan(0, N * c.VocabSize));
    }

    Span<T> UnembedW => Config.TiedEmbeddings ? P("embed") : P("unembed");
    Span<T> UnembedG => Config.TiedEmbeddings ? G("embed") : G("unembed");

    /// <summary>Norm of an [N, D] buffer: which = 1 (ln1 of layer l), 2 (ln2), 0 (final).</summary>
    void Norm(T[] x, int l, int which)
    {
        var a = _a!; var c = Config;
        int N = _n, D = c.DModel;
        string w = which == 0 ? "lnf.w" : $"{l}.ln{which}.w", b = which == 0 ? "lnf.b" : $"{l}.ln{which}.b";
        T[] y = which == 0 ? a.LnfOut : which == 1 ? a.Ln1Out[l] : a.Ln2Out[l];
        T[] xh = which == 0 ? a.XhatF : which == 1 ? a.Xhat1[l] : a.Xhat2[l];
        T[] rs = which == 0 ? a.RstdF : which == 1 ? a.Rstd1[l] : a.Rstd2[l];
        var pw = Layout[w]; var pb = Layout.Find(b);
        var par = Params;
        bool ln = c.Norm == NormKind.LayerNorm;
        double eps = c.NormEps, off = c.NormWeightOffset;
        _par.Chunks(N, 32, (r0, r1) =>
        {
            int n = r1 - r0;
            var wS = par.AsSpan((int)pw.Offset, D);
            if (ln) Ops<T>.LayerNorm(x.AsSpan(r0 * D, n * D), n, D, wS, pb != null ? par.AsSpan((int)pb.Offset, D) : Span<T>.Empty, eps,
                y.AsSpan(r0 * D, n * D), xh.AsSpan(r0 * D, n * D), rs.AsSpan(r0, n));
            else Ops<T>.RmsNorm(x.AsSpan(r0 * D, n * D), n, D, wS, off, eps, y.AsSpan(r0 * D, n * D), xh.AsSpan(r0 * D, n * D), rs.AsSpan(r0, n));
        });
    }

    /// <summary>dx += norm backward of dy; parameter gradients (when asked) in a fixed-order pass.</summary>
    void NormBackward(T[] dy, int l, int which, T[] dx, bool paramGrads)
    {
        var a = _a!; var c = Config;
        int N = _n, D = c.DModel;
        string w = which == 0 ? "lnf.w" : $"{l}.ln{which}.w", b = which == 0 ? "lnf.b" : $"{l}.ln{which}.b";
        T[] xh = which == 0 ? a.XhatF : which == 1 ? a.Xhat1[l] : a.Xhat2[l];
        T[] rs = which == 0 ? a.RstdF : which == 1 ? a.Rstd1[l] : a.Rstd2[l];
        var pw = Layout[w];
        var par = Params;
        bool ln = c.Norm == NormKind.LayerNorm;
        double off = c.NormWeightOffset;
        _par.Chunks(N, 32, (r0, r1) =>
        {
            int n = r1 - r0;
            var wS = par.AsSpan((int)pw.Offset, D);
            if (ln) Ops<T>.LayerNormBackward(dy.AsSpan(r0 * D, n * D), xh.AsSpan(r0 * D, n * D), rs.AsSpan(r0, n), n, D, wS, dx.AsSpan(r0 * D, n * D), Span<T>.Empty, Span<T>.Empty);
            else Ops<T>.RmsNormBackward(dy.AsSpan(r0 * D, n * D), xh.AsSpan(r0 * D, n * D), rs.AsSpan(r0, n), n, D, wS, off, dx.AsSpan(r0 * D, n * D), Span<T>.Empty);
        });
        if (!paramGrads) return;
        var dw = G(w);
        var db = GOpt(b);
        for (int r = 0; r < N; r++)
        {
            var dyr = dy.AsSpan(r * D, D);
            var xr = xh.AsSpan(r * D, D);
            for (int i = 0; i < D; i++) dw[i] += dyr[i] * xr[i];
            if (db.Length > 0) TensorPrimitives.Add(db, dyr, db);
        }
    }

    void RopeRows(T[] x, int heads, bool inverse)
    {
        var c = Config;
        int N = _n, S = _s, width = heads * c.HeadDim;
        var cos = _cos; var sin = _sin;
        _par.Chunks(N, 32, (r0, r1) =>
        {
            // rows r0.. start at position r0 mod S: pass the slice with its own position offset
            for (int r = r0; r < r1; r++)
                Ops<T>.Rope(x.AsSpan(r * width, width), 1, heads, c.HeadDim, c.RotaryDim, 1,
                    cos.AsSpan((r % S) * (c.RotaryDim / 2), c.RotaryDim / 2), sin.AsSpan((r % S) * (c.RotaryDim / 2), c.RotaryDim / 2), inverse);
        });
    }

    // ------------------------------------------------------------------ loss and backward

    /// <summary>
    /// Weighted cross-entropy of the last forward's logits against <paramref name="targets"/> (−1 = no target), writing
    /// <see cref="DLogits"/>. Returns the mean loss over the weighted targets.
    /// </summary>
    public double Loss(ReadOnlySpan<int> targets, ReadOnlySpan<float> weights = default)
    {
        var a = _a ?? throw new InvalidOperationException("no forward pass yet");
        int V = Config.VocabSize, N = _n;
        if (targets.Length != N) throw new ArgumentException("one target per row");
        double wsum = 0;
        for (int r = 0; r < N; r++) if (targets[r] >= 0) wsum += weights.Length > 0 ? weights[r] : 1;
        var logits = a.Logits; var dl = a.DLogits;
        var tg = targets.ToArray(); var wt = weights.ToArray();
        var part = new double[N];
        _par.Chunks(N, 16, (r0, r1) =>
        {
            for (int r = r0; r < r1; r++)
            {
                double w = tg[r] < 0 ? 0 : wt.Length > 0 ? wt[r] : 1;
                if (w == 0 || wsum == 0) { dl.AsSpan(r * V, V).Clear(); continue; }
                part[r] = w * Ops<T>.CrossEntropyRow(logits.AsSpan(r * V, V), tg[r], w / wsum, dl.AsSpan(r * V, V));
            }
        });
        double loss = 0;
        for (int r = 0; r < N; r++) loss += part[r];
        return wsum > 0 ? loss / wsum : 0;
    }

    /// <summary>Zeroes the parameter gradients.</summary>
    public void ZeroGrad() => Array.Clear(Grads);

    /// <summary>
    /// Backward pass from <see cref="DLogits"/> (the gradient of the objective with respect to the logits of the last
    /// forward). Parameter gradients are added to <see cref="Grads"/>; activation gradients are kept as asked.
    /// </summary>
    public void Backward(BackwardOptions? options = null)
    {
        options ??= new BackwardOptions();
        var a = _a ?? throw new InvalidOperationException("no forward pass yet");
        var c = Config;
        bool pg = options.ParameterGradients;
        var keep = options.KeepGradients;
        a.KeptGrads.Clear();
        int N = _n, D = c.DModel, Q = c.QDim, Kv = c.KvDim, M = c.DMlp, H = c.NHeads, K = c.NKvHeads, Dh = c.HeadDim, S = _s, V = c.VocabSize;
        int qkvW = Q + 2 * Kv, preW = c.GatedMlp ? 2 * M : M;
        void Keep(HookKind kind, int l, T[] src, int count)
        {
            if (keep != null && keep.Contains(kind)) a.KeptGrads[(kind, l)] = src.AsSpan(0, count).ToArray();
        }

        // unembedding and final norm
        var dResid = a.DResid;
        _mm.BackwardInput(a.DLogits.AsSpan(0, N * V), N, V, UnembedW, D, a.DLn.AsSpan(0, N * D), accumulate: false);
        if (pg) _mm.BackwardWeight(a.DLogits.AsSpan(0, N * V), a.LnfOut.AsSpan(0, N * D), N, V, D, UnembedG, Span<T>.Empty);
        Array.Clear(dResid, 0, N * D);
        NormBackward(a.DLn, -1, 0, dResid, pg);

        for (int l = c.NLayers - 1; l >= 0; l--)
        {
            string p = l + ".";
            Keep(HookKind.ResidPost, l, dResid, N * D);
            Keep(HookKind.MlpOut, l, dResid, N * D);
            // MLP
            _mm.BackwardInput(dResid.AsSpan(0, N * D), N, D, P(p + "out.w"), M, a.DPost.AsSpan(0, N * M), accumulate: false);
            if (pg) _mm.BackwardWeight(dResid.AsSpan(0, N * D), a.Post[l].AsSpan(0, N * M), N, D, M, G(p + "out.w"), GOpt(p + "out.b"));
            Keep(HookKind.MlpPost, l, a.DPost, N * M);
            {
                var pre = a.Pre[l]; var dpre = a.DPre; var dpost = a.DPost; var act = c.Activation; bool gated = c.GatedMlp;
                Array.Clear(dpre, 0, N * preW);
                _par.Chunks(N, 16, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        if (gated) Ops<T>.GatedBackward(act, pre.AsSpan(r * preW, M), pre.AsSpan(r * preW + M, M), dpost.AsSpan(r * M, M), dpre.AsSpan(r * preW, M), dpre.AsSpan(r * preW + M, M));
                        else Ops<T>.ActivationBackward(act, pre.AsSpan(r * M, M), dpost.AsSpan(r * M, M), dpre.AsSpan(r * M, M));
                    }
                });
            }
            _mm.BackwardInput(a.DPre.AsSpan(0, N * preW), N, preW, P(p + "in.w"), D, a.DLn.AsSpan(0, N * D), accumulate: false);
            if (pg) _mm.BackwardWeight(a.DPre.AsSpan(0, N * preW), a.Ln2Out[l].AsSpan(0, N * D), N, preW, D, G(p + "in.w"), GOpt(p + "in.b"));
            T[] dAttnOut;
            T[]? dParallelMlp = null;
            if (!c.ParallelResidual)
            {
                NormBackward(a.DLn, l, 2, dResid, pg);      // dResid is now ∂/∂resid_mid
                Keep(HookKind.ResidMid, l, dResid, N * D);
                dAttnOut = dResid;
            }
            else
            {
                dParallelMlp = a.DLn.AsSpan(0, N * D).ToArray();   // ln2 input gradient, added to resid_pre below
                dAttnOut = dResid;                                  // ∂/∂resid_post
            }
            Keep(HookKind.AttnOut, l, dAttnOut, N * D);
            // attention output projection
            _mm.BackwardInput(dAttnOut.AsSpan(0, N * D), N, D, P(p + "o.w"), Q, a.DZ.AsSpan(0, N * Q), accumulate: false);
            if (pg) _mm.BackwardWeight(dAttnOut.AsSpan(0, N * D), a.Z[l].AsSpan(0, N * Q), N, D, Q, G(p + "o.w"), GOpt(p + "o.b"));
            Keep(HookKind.Z, l, a.DZ, N * Q);
            // attention
            {
                var qr = a.Qr[l]; var kr = a.Kr[l]; var v = a.V[l]; var pat = a.Pattern[l]; var dz = a.DZ;
                var dq = a.DQ; var dk = a.DK; var dv = a.DV; var dpat = a.DPattern;
                Array.Clear(dq, 0, N * Q); Array.Clear(dk, 0, N * Kv); Array.Clear(dv, 0, N * Kv);
                double scale = c.LayerAttnScale(l);
                int group = H / K, B = _b;
                _par.For(B * K, item =>
                {
                    int b = item / K, kvh = item % K;
                    for (int h = kvh * group; h < (kvh + 1) * group; h++)
                        Ops<T>.AttentionHeadBackward(qr.AsSpan(b * S * Q, S * Q), kr.AsSpan(b * S * Kv, S * Kv), v.AsSpan(b * S * Kv, S * Kv),
                            pat.AsSpan((b * H + h) * S * S, S * S), dz.AsSpan(b * S * Q, S * Q), S, H, K, Dh, h, scale,
                            dq.AsSpan(b * S * Q, S * Q), dk.AsSpan(b * S * Kv, S * Kv), dv.AsSpan(b * S * Kv, S * Kv), dpat.AsSpan((b * H + h) * S * S, S * S));
                });
                Keep(HookKind.Pattern, l, dpat, _b * H * S * S);
                if (c.Positions == PositionKind.Rotary) { RopeRows(dq, H, true); RopeRows(dk, K, true); }
                Keep(HookKind.Q, l, dq, N * Q); Keep(HookKind.K, l, dk, N * Kv); Keep(HookKind.V, l, dv, N * Kv);
                var dqkv = a.DQkv;
                for (int r = 0; r < N; r++)
                {
                    dq.AsSpan(r * Q, Q).CopyTo(dqkv.AsSpan(r * qkvW, Q));
                    dk.AsSpan(r * Kv, Kv).CopyTo(dqkv.AsSpan(r * qkvW + Q, Kv));
                    dv.AsSpan(r * Kv, Kv).CopyTo(dqkv.AsSpan(r * qkvW + Q + Kv, Kv));
                }
            }
            _mm.BackwardInput(a.DQkv.AsSpan(0, N * qkvW), N, qkvW, P(p + "qkv.w"), D, a.DLn.AsSpan(0, N * D), accumulate: false);
            if (pg) _mm.BackwardWeight(a.DQkv.AsSpan(0, N * qkvW), a.Ln1Out[l].AsSpan(0, N * D), N, qkvW, D, G(p + "qkv.w"), GOpt(p + "qkv.b"));
            if (c.ParallelResidual)
            {
                // resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))
                var tmp = dParallelMlp!;
                var dln1 = a.DLn.AsSpan(0, N * D).ToArray();
                Array.Copy(tmp, a.DLn, N * D);
                NormBackward(a.DLn, l, 2, dResid, pg);
                Array.Copy(dln1, a.DLn, N * D);
            }
            NormBackward(a.DLn, l, 1, dResid, pg);
            Keep(HookKind.ResidPre, l, dResid, N * D);
        }
        if (!pg) return;
        // embeddings
        var gEmb = G("embed");
        T scaleE = C(c.EmbedScale);
        bool learned = c.Positions == PositionKind.Learned;
        var gPos = learned ? G("pos") : Span<T>.Empty;
        for (int r = 0; r < N; r++)
        {
            var row = dResid.AsSpan(r * D, D);
            var e = gEmb.Slice(_tokens[r] * D, D);
            if (scaleE == T.One) TensorPrimitives.Add(e, row, e);
            else TensorPrimitives.MultiplyAdd(row, scaleE, e, e);
            if (learned) { var pr = gPos.Slice((r % S) * D, D); TensorPrimitives.Add(pr, row, pr); }
        }
    }

    // ------------------------------------------------------------------ conveniences

    /// <summary>Copies parameters from another engine of the same config (any precision).</summary>
    public void CopyParametersFrom<U>(Transformer<U> other) where U : unmanaged, IFloatingPointIeee754<U>
    {
        if (other.Layout.Total != Layout.Total) throw new ArgumentException("different parameter layouts");
        for (long i = 0; i < Layout.Total; i++) Params[i] = T.CreateTruncating(other.Params[i]);
    }

    /// <summary>Number of parameters.</summary>
    public long ParameterCount => Layout.Total;
}
