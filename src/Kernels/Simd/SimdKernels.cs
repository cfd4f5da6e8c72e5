using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;
using Engine.Kernels.Threading;
using Engine.Loader;

namespace Engine.Kernels.Simd;

/// <summary>
/// "cpu": vectorised (TensorPrimitives picks Vector512/256/128 or scalar at run time) and multi-threaded over a
/// <see cref="WorkerPool"/>. Allocates nothing per call after warm-up: work items are reusable objects, per-thread
/// scratch is grown once. Work is split so that every output element is computed by the same sequence of float
/// operations whatever the thread count: results are deterministic across runs and thread counts.
/// </summary>
public sealed unsafe class SimdKernels : IKernels
{
    public string Name => "cpu";
    readonly WorkerPool _pool;

    /// <param name="pool">Worker threads (default: the shared pool).</param>
    /// <param name="subnormalInputsSlow">Whether a subnormal FMA input is slow on this CPU, which decides how F16 weights
    /// with subnormal halves are widened (every route is exact); null: <see cref="SubnormalProbe.InputsSlow"/>, probed on
    /// the first F16 product.</param>
    public SimdKernels(WorkerPool? pool = null, bool? subnormalInputsSlow = null)
    {
        _pool = pool ?? WorkerPool.Shared;
        _subnormalInputsSlow = subnormalInputsSlow;
        _matNk = new MatMulOutMajorWork(); _matKn = new MatMulInMajorWork(); _norm = new NormWork();
        _attn = new AttentionWork(); _act = new ActivationWork(); _rope = new RopeWork();
    }

    [ThreadStatic] static float[]? t_scratchA, t_scratchB;

    static Span<float> ScratchA(int n) => (t_scratchA is { } a && a.Length >= n ? a : (t_scratchA = new float[Math.Max(n, 1024)])).AsSpan(0, n);
    static Span<float> ScratchB(int n) => (t_scratchB is { } a && a.Length >= n ? a : (t_scratchB = new float[Math.Max(n, 1024)])).AsSpan(0, n);

    /// <summary>Splits n units into items of at least minPerItem units, at most 4 items per thread.</summary>
    int Items(long n, long minPerItem) => (int)Math.Clamp(n / Math.Max(1, minPerItem), 1, Math.Max(1, Math.Min(n, _pool.Threads * 4L)));

    // ---------------------------------------------------------------- embedding

    public void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst)
    {
        int d = (int)table.Shape[1];
        for (int t = 0; t < ids.Length; t++) table.Widen((long)ids[t] * d, dst.Slice(t * d, d));
    }

    // ---------------------------------------------------------------- matmul

    /// <summary>
    /// Largest share of 16-half groups holding a subnormal half for which the F16 matrix-vector products test each group
    /// (<see cref="F16BitsCheckedLoad"/>); above it they widen every group exactly (<see cref="F16Load"/>). GPT-2-small
    /// F16 random weights, decode (engine profile): c_fc (4% of groups) exact 11.9 -> tested 17.3-18.5 GB/s, c_proj
    /// (18%) exact 12.4 -> tested 10.5-10.8.
    /// </summary>
    const double CheckedMaxShare = 0.1;

    readonly bool? _subnormalInputsSlow;     // null: probed on the first F16 product

    /// <summary>
    /// F16 weights widened by moving the bits into float position (<see cref="F16FiniteLoad"/>, <see cref="F16BitsLoad"/>):
    /// finite, and without subnormal halves unless a subnormal FMA input costs nothing here (the bit pattern of a
    /// subnormal half is a subnormal float: exact either way, only the speed differs). False for other dtypes.
    /// </summary>
    bool F16ByBits(Linear w) =>
        w.DType == DType.F16 && (w.NormalHalves || (w.AllFinite && !(_subnormalInputsSlow ?? SubnormalProbe.InputsSlow)));

    /// <summary>Finite F16 weights with subnormal halves in few enough groups for the decode products to test each group.</summary>
    bool TestsF16Groups(Linear w) => w.DType == DType.F16 && !F16ByBits(w) && w.AllFinite && w.SubnormalGroupShare < CheckedMaxShare;

    readonly GemmWork _gemm = new();
    /// <summary>Register-tiled kernels of <see cref="Gemm"/> (AVX-512); items are blocks of Gemm.NBlock output columns.</summary>
    sealed class GemmWork : IParallelWork
    {
        public float* X, Y, Bias; public int Rows, Threads = 1; public Linear W = null!;
        /// <summary>F16 weights read through <see cref="F16FiniteLoad"/> (<see cref="SimdKernels.F16ByBits(Linear)"/>), else <see cref="F16Load"/>.</summary>
        public bool F16ByBits;

        /// <summary>The item a thread most likely takes after the one at n0: the pool hands items out in turn.</summary>
        int NextN0(int n0) => n0 + Threads * Gemm.NBlock;

        public void Execute(int index)
        {
            int n0 = index * Gemm.NBlock, n1 = Math.Min(W.Out, n0 + Gemm.NBlock);
            byte* w = W.W.Data;
            switch (W.DType, W.InputMajor)
            {
                case (DType.F32, false): Gemm.OutMajor<F32Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1); break;
                case (DType.BF16, false): Gemm.OutMajor<BF16Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1); break;
                case (DType.F16, false):
                    if (F16ByBits) Gemm.OutMajor<F16FiniteLoad>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1);
                    else Gemm.OutMajor<F16Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1);
                    break;
                case (DType.F32, true): Gemm.InMajor<F32Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1, NextN0(n0)); break;
                case (DType.BF16, true): Gemm.InMajor<BF16Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1, NextN0(n0)); break;
                case (DType.F16, true):
                    if (F16ByBits) Gemm.InMajor<F16FiniteLoad>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1, NextN0(n0));
                    else Gemm.InMajor<F16Load>(X, Rows, W.In, w, Bias, Y, W.Out, n0, n1, NextN0(n0));
                    break;
                default: throw new NotSupportedException($"matmul weights of dtype {W.DType}");
            }
        }
    }

    readonly GemvInMajorWork _gemvIn = new();
    readonly GemvOutMajorWork _gemvOut = new();
    float[]? _partial;                                // per-chunk partial rows of the input-major decode path
    float[]? _xScaled;                                // x · 2^112 for the F16 out-major decode path, grown once

    /// <summary>
    /// xs = x · 2^112 (exact) when every |x| &lt; 2^15, so that the products stay finite; false (xs unusable) otherwise,
    /// NaN included.
    /// </summary>
    static bool ScaleForF16Bits(float* x, int n, float* xs)
    {
        for (int i = 0; i < n; i++)
        {
            float v = x[i];
            if (!(MathF.Abs(v) < 32768f)) return false;
            xs[i] = v * F16FiniteLoad.Scale;
        }
        return true;
    }

    /// <summary>One row through input-major weights (decode): chunks of Gemm.RowChunk weight rows, then the ordered sum.</summary>
    sealed class GemvInMajorWork : IParallelWork
    {
        public float* X, Y, Bias, Partial; public int Chunks; public bool Reduce; public Linear W = null!;
        /// <summary>F16 routes: <see cref="SimdKernels.F16ByBits(Linear)"/>, else <see cref="SimdKernels.TestsF16Groups(Linear)"/>, else exact widening.</summary>
        public bool F16ByBits, F16Tested;
        public void Execute(int index)
        {
            if (Reduce)
            {
                int n0 = index * 256;
                Gemm.SumChunks(Partial, Chunks, W.Out, Bias, Y, n0, Math.Min(W.Out, n0 + 256));
                return;
            }
            byte* w = W.W.Data;
            switch (W.DType)
            {
                case DType.F32: Gemm.InMajorRowChunk<F32Load>(X, W.In, W.Out, w, index, Partial); break;
                case DType.BF16: Gemm.InMajorRowChunk<BF16Load>(X, W.In, W.Out, w, index, Partial); break;
                case DType.F16:
                    if (F16ByBits) Gemm.InMajorRowChunk<F16FiniteLoad>(X, W.In, W.Out, w, index, Partial);
                    else if (F16Tested) Gemm.InMajorRowChunk<F16SubnormalLoad>(X, W.In, W.Out, w, index, Partial);
                    else Gemm.InMajorRowChunk<F16Load>(X, W.In, W.Out, w, index, Partial);
                    break;
                default: throw new NotSupportedException($"matmul weights of dtype {W.DType}");
            }
        }
    }

    /// <summary>One row through out-major weights (decode): blocks of weight rows, each streamed in memory order.</summary>
    sealed class GemvOutMajorWork : IParallelWork
    {
        /// <summary>
        /// Weight rows per item: N / 32 (at least 64, a multiple of 16), so that each item is one long stream in memory
        /// order while a busy core still leaves its share to the other. Measured 2026-12-07 on an AMD Zen 4 guest (2
        /// threads, 40 rotating BF16 matrices, paired with a plain read of the same bytes): the LM head 768 -> 50257 in
        /// items of 64 rows 0.73-0.75 of the plain read, of N / 32 rows (1584) 0.96-0.97; 768 -> 3072 (96 rows) 0.94 ->
        /// 1.01.
        /// </summary>
        public static int RowsPerItem(int n) => Math.Max(64, (n / 32 + 15) & ~15);
        public int Rows;
        public float* X, Y, Bias; public Linear W = null!;
        /// <summary>X holds x · 2^112 and the F16 weights are read without their product by 2^112 (F16BitsLoad).</summary>
        public bool Scaled;
        /// <summary>F16 weights read by their bits (<see cref="SimdKernels.F16ByBits(Linear)"/>); else tested per group when Scaled, or exact.</summary>
        public bool F16ByBits;
        public void Execute(int index)
        {
            int n0 = index * Rows, n1 = Math.Min(W.Out, n0 + Rows);
            byte* w = W.W.Data;
            switch (W.DType)
            {
                case DType.F32: Gemm.OutMajorRow<F32Load>(X, W.In, w, Bias, Y, n0, n1); break;
                case DType.BF16: Gemm.OutMajorRow<BF16Load>(X, W.In, w, Bias, Y, n0, n1); break;
                case DType.F16:
                    if (Scaled && F16ByBits) Gemm.OutMajorRow<F16BitsLoad>(X, W.In, w, Bias, Y, n0, n1);
                    else if (Scaled) Gemm.OutMajorRow<F16BitsCheckedLoad>(X, W.In, w, Bias, Y, n0, n1);
                    else if (F16ByBits) Gemm.OutMajorRow<F16FiniteLoad>(X, W.In, w, Bias, Y, n0, n1);
                    else Gemm.OutMajorRow<F16Load>(X, W.In, w, Bias, Y, n0, n1);
                    break;
                default: throw new NotSupportedException($"matmul weights of dtype {W.DType}");
            }
        }
    }

    float[]? _xpack;                                  // xᵀ packed for the out-major broadcast path, grown once

    [ThreadStatic] static float[]? t_packScratch;
    static float* PackScratch(long floats)
    {
        if (t_packScratch == null || t_packScratch.Length < floats) t_packScratch = GC.AllocateUninitializedArray<float>((int)Math.Max(floats, 16384), pinned: true);
        return (float*)Unsafe.AsPointer(ref t_packScratch[0]);
    }

    /// <summary>
    /// Rows from which out-major weights take <see cref="OutMajorBcast"/> (below: the dot form of <see cref="Gemm"/>).
    /// Measured from memory, 2 threads, [T×768]·[768×3072]: F32 at 64 rows 272 vs 231 GFLOP/s, at 128 278 vs 245, at 512
    /// 302 vs 249 (the former packed path); BF16 at 64 233 vs 274, at 128 260 vs 263, at 256 282 vs 215.
    /// </summary>
    static int OutBcastMinRows(DType dtype) => dtype == DType.F32 ? 64 : 128;
    readonly OutBcastPackWork _obPack = new();
    readonly OutBcastWork _ob = new();

    /// <summary>Packs xᵀ once per call as [K][64] panels (out-major broadcast path).</summary>
    sealed class OutBcastPackWork : IParallelWork
    {
        public float* X, Packed; public int Rows, K;
        public void Execute(int index) => OutMajorBcast.PackPanel(X, Rows, K, index, Packed);
    }

    /// <summary>Many rows through out-major weights read in place: items are blocks of 24 weight rows.</summary>
    sealed class OutBcastWork : IParallelWork
    {
        public float* XP, Y, Bias; public int Rows, ItemRows; public Linear W = null!;
        /// <summary>F16 weights read through <see cref="F16FiniteLoad"/> (<see cref="SimdKernels.F16ByBits(Linear)"/>), else <see cref="F16Load"/>.</summary>
        public bool F16ByBits;
        public void Execute(int index)
        {
            float* scratch = PackScratch(OutMajorBcast.ScratchFloats(Rows));
            byte* w = W.W.Data;
            switch (W.DType)
            {
                case DType.F32: OutMajorBcast.Item<F32Load>(XP, Rows, W.In, w, Bias, Y, W.Out, index, ItemRows, scratch); break;
                case DType.BF16: OutMajorBcast.Item<BF16Load>(XP, Rows, W.In, w, Bias, Y, W.Out, index, ItemRows, scratch); break;
                case DType.F16:
                    if (F16ByBits) OutMajorBcast.Item<F16FiniteLoad>(XP, Rows, W.In, w, Bias, Y, W.Out, index, ItemRows, scratch);
                    else OutMajorBcast.Item<F16Load>(XP, Rows, W.In, w, Bias, Y, W.Out, index, ItemRows, scratch);
                    break;
                default: throw new NotSupportedException($"matmul weights of dtype {W.DType}");
            }
        }
    }

    readonly MatMulOutMajorWork _matNk;
    readonly MatMulInMajorWork _matKn;

    public void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y)
    {
        if (x.Length < rows * w.In || y.Length < rows * w.Out) throw new ArgumentException("matmul buffers too small");
        fixed (float* px = x, py = y)
        {
            if (Gemm.Supported && !w.InputMajor && rows >= OutBcastMinRows(w.DType))
            {
                fixed (float* pb = w.Bias)
                {
                    long need = OutMajorBcast.PackedFloats(rows, w.In);
                    if (_xpack == null || _xpack.Length < need) _xpack = GC.AllocateUninitializedArray<float>((int)need, pinned: true);
                    fixed (float* pxp = _xpack)
                    {
                        var pack = _obPack;
                        pack.X = px; pack.Packed = pxp; pack.Rows = rows; pack.K = w.In;
                        _pool.Run(pack, (rows + OutMajorBcast.PanelRows - 1) / OutMajorBcast.PanelRows);
                        var job = _ob;
                        job.XP = pxp; job.Y = py; job.Bias = pb; job.Rows = rows; job.W = w;
                        job.F16ByBits = F16ByBits(w);
                        job.ItemRows = OutMajorBcast.RowsPerItem(w.Out, rows);
                        _pool.Run(job, (w.Out + job.ItemRows - 1) / job.ItemRows);
                        job.W = null!;
                    }
                }
            }
            else if (Gemm.Supported && rows == 1)
            {
                fixed (float* pb = w.Bias)
                {
                    if (w.InputMajor)
                    {
                        int chunks = (w.In + Gemm.RowChunk - 1) / Gemm.RowChunk;
                        long need = (long)chunks * w.Out;
                        if (_partial == null || _partial.Length < need) _partial = GC.AllocateUninitializedArray<float>((int)need, pinned: true);
                        fixed (float* pp = _partial)
                        {
                            var job = _gemvIn;
                            job.X = px; job.Y = py; job.Bias = pb; job.Partial = pp; job.Chunks = chunks; job.W = w;
                            job.F16ByBits = F16ByBits(w);
                            job.F16Tested = TestsF16Groups(w);
                            job.Reduce = false;
                            _pool.Run(job, chunks);
                            job.Reduce = true;
                            _pool.Run(job, (w.Out + 255) / 256);
                            job.W = null!;
                        }
                    }
                    else
                    {
                        var job = _gemvOut;
                        job.X = px; job.Y = py; job.Bias = pb; job.W = w;
                        job.Scaled = false;
                        job.F16ByBits = F16ByBits(w);
                        if (job.F16ByBits || TestsF16Groups(w))
                        {
                            // One operation fewer per 16 weights: x · 2^112 once, the weights' widening without its product.
                            if (_xScaled == null || _xScaled.Length < w.In) _xScaled = GC.AllocateUninitializedArray<float>(w.In, pinned: true);
                            fixed (float* pxs = _xScaled)
                                if (ScaleForF16Bits(px, w.In, pxs)) { job.X = pxs; job.Scaled = true; }
                        }
                        job.Rows = GemvOutMajorWork.RowsPerItem(w.Out);
                        _pool.Run(job, (w.Out + job.Rows - 1) / job.Rows);
                        job.W = null!;
                    }
                }
            }
            else if (Gemm.Supported)
            {
                var job = _gemm;
                job.X = px; job.Y = py; job.Rows = rows; job.W = w; job.Threads = _pool.Threads;
                job.F16ByBits = F16ByBits(w);
                fixed (float* pb = w.Bias)
                {
                    job.Bias = pb;
                    _pool.Run(job, (w.Out + Gemm.NBlock - 1) / Gemm.NBlock);
                }
                job.W = null!;
            }
            else if (w.InputMajor)
            {
                var job = _matKn;
                job.X = px; job.Y = py; job.Rows = rows; job.W = w;
                job.Chunk = 64;
                job.Packed = rows > 1 && GemmAvx2.Supported;
                job.Direct = rows == 1 && GemmAvx2.Supported && w.DType is DType.F32 or DType.BF16;
                int chunks = (w.Out + job.Chunk - 1) / job.Chunk;
                _pool.Run(job, chunks);
                job.W = null!;
            }
            else
            {
                var job = _matNk;
                job.X = px; job.Y = py; job.Rows = rows; job.W = w;
                int items = Items((long)w.Out * rows * w.In, 1 << 16);
                job.PerItem = (w.Out + items - 1) / items;
                _pool.Run(job, (w.Out + job.PerItem - 1) / job.PerItem);
                job.W = null!;
            }
        }
    }

    /// <summary>W [Out, In]: y[m, o] = dot(x[m], W[o]) + b[o]; items are ranges of output columns.</summary>
    sealed class MatMulOutMajorWork : IParallelWork
    {
        public float* X, Y; public int Rows, PerItem; public Linear W = null!;
        public void Execute(int index)
        {
            int k = W.In, n = W.Out;
            int o0 = index * PerItem, o1 = Math.Min(n, o0 + PerItem);
            var wv = W.W;
            var bias = W.Bias;
            for (int o = o0; o < o1; o++)
            {
                ReadOnlySpan<float> wrow;
                if (wv.DType == DType.F32) wrow = new ReadOnlySpan<float>(wv.Data + (long)o * k * 4, k);
                else { var buf = ScratchA(k); wv.Widen((long)o * k, buf); wrow = buf; }
                float b = bias != null ? bias[o] : 0f;
                for (int m = 0; m < Rows; m++)
                    Y[(long)m * n + o] = TensorPrimitives.Dot(new ReadOnlySpan<float>(X + (long)m * k, k), wrow) + b;
            }
        }
    }

    /// <summary>W [In, Out] (Conv1D): y[m, seg] = b[seg] + sum_k x[m, k] W[k, seg], k ascending; items are column segments.</summary>
    sealed class MatMulInMajorWork : IParallelWork
    {
        public float* X, Y; public int Rows, Chunk; public bool Packed, Direct; public Linear W = null!;
        public void Execute(int index)
        {
            int k = W.In, n = W.Out;
            int c0 = index * Chunk, width = Math.Min(n, c0 + Chunk) - c0;
            var wv = W.W;
            if (Packed) { ExecutePacked(k, n, c0, width); return; }
            if (Direct)
            {
                int blocks = width / 64, strips = (width - blocks * 64) / GemmAvx2.Strip, done = blocks * 64 + strips * GemmAvx2.Strip;
                fixed (float* pb = W.Bias) GemmAvx2.Row(X, k, wv.Data, n, wv.DType == DType.BF16, c0, blocks, strips, pb, Y);
                for (int j = c0 + done; j < c0 + width; j++)
                {
                    float acc = 0f;
                    for (int i = 0; i < k; i++) acc = MathF.FusedMultiplyAdd(WeightAt(wv, (long)i * n + j), X[i], acc);
                    Y[j] = W.Bias != null ? acc + W.Bias[j] : acc;
                }
                return;
            }
            for (int m = 0; m < Rows; m++)
            {
                var yseg = new Span<float>(Y + (long)m * n + c0, width);
                if (W.Bias != null) W.Bias.AsSpan(c0, width).CopyTo(yseg); else yseg.Clear();
            }
            var buf = wv.DType == DType.F32 ? default : ScratchA(width);
            for (int i = 0; i < k; i++)
            {
                ReadOnlySpan<float> wseg;
                if (wv.DType == DType.F32) wseg = new ReadOnlySpan<float>(wv.Data + ((long)i * n + c0) * 4, width);
                else { wv.Widen((long)i * n + c0, buf); wseg = buf; }
                for (int m = 0; m < Rows; m++)
                {
                    var yseg = new Span<float>(Y + (long)m * n + c0, width);
                    TensorPrimitives.MultiplyAdd(wseg, X[(long)m * k + i], yseg, yseg);
                }
            }
        }

        /// <summary>AVX2 + FMA without AVX-512: whole 16-column strips through <see cref="GemmAvx2"/>, the last columns as scalar FMA chains.</summary>
        void ExecutePacked(int k, int n, int c0, int width)
        {
            var wv = W.W;
            int strips = width / GemmAvx2.Strip;
            var panel = ScratchA(Math.Max(1, strips * k * GemmAvx2.Strip));
            var row = ScratchB(width);
            // [strip][k][16]: each strip contiguous, k ascending
            for (int i = 0; i < k; i++)
            {
                ReadOnlySpan<float> wrow;
                if (wv.DType == DType.F32) wrow = new ReadOnlySpan<float>(wv.Data + ((long)i * n + c0) * 4, width);
                else { wv.Widen((long)i * n + c0, row); wrow = row; }
                for (int s = 0; s < strips; s++)
                    wrow.Slice(s * GemmAvx2.Strip, GemmAvx2.Strip).CopyTo(panel.Slice((s * k + i) * GemmAvx2.Strip, GemmAvx2.Strip));
            }
            fixed (float* pp = panel, pb = W.Bias)
                GemmAvx2.Strips(X, Rows, k, pp, strips, pb, Y, n, c0);
            // column tail: one FMA chain per element, k ascending, then + bias (as the strips)
            for (int j = c0 + strips * GemmAvx2.Strip; j < c0 + width; j++)
            {
                for (int m = 0; m < Rows; m++)
                {
                    float acc = 0f;
                    for (int i = 0; i < k; i++) acc = MathF.FusedMultiplyAdd(WeightAt(wv, (long)i * n + j), X[(long)m * k + i], acc);
                    Y[(long)m * n + j] = W.Bias != null ? acc + W.Bias[j] : acc;
                }
            }
        }

        static float WeightAt(TensorView w, long index)
        {
            if (w.DType == DType.F32) return ((float*)w.Data)[index];
            Span<float> one = stackalloc float[1];
            w.Widen(index, one);
            return one[0];
        }
    }

    // ---------------------------------------------------------------- norms

    readonly NormWork _norm;

    public void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale)
        => RunNorm(true, x, rows, dim, weight, bias, 0f, eps, y, scale);

    public void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale)
        => RunNorm(false, x, rows, dim, weight, default, weightOffset, eps, y, scale);

    void RunNorm(bool layer, ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float offset, float eps, Span<float> y, Span<float> scale)
    {
        fixed (float* px = x, py = y, ps = scale, pw = weight, pb = bias)
        {
            var job = _norm;
            job.X = px; job.Y = py; job.S = ps; job.Wt = pw; job.B = bias.IsEmpty ? null : pb;
            job.Dim = dim; job.Eps = eps; job.Offset = offset; job.Layer = layer; job.Rows = rows;
            int items = Items((long)rows * dim, 1 << 14);
            job.PerItem = (rows + items - 1) / items;
            _pool.Run(job, (rows + job.PerItem - 1) / job.PerItem);
        }
    }

    sealed class NormWork : IParallelWork
    {
        public float* X, Y, S, Wt, B; public int Dim, Rows, PerItem; public float Eps, Offset; public bool Layer;
        public void Execute(int index)
        {
            int r1 = Math.Min(Rows, (index + 1) * PerItem);
            var w = new ReadOnlySpan<float>(Wt, Dim);
            for (int r = index * PerItem; r < r1; r++)
            {
                var x = new ReadOnlySpan<float>(X + (long)r * Dim, Dim);
                var y = new Span<float>(Y + (long)r * Dim, Dim);
                if (Layer)
                {
                    float mean = TensorPrimitives.Sum(x) / Dim;
                    TensorPrimitives.Subtract(x, mean, y);                 // y = x - mean
                    float s = MathF.Sqrt(TensorPrimitives.SumOfSquares(y) / Dim + Eps);
                    S[r] = s;
                    TensorPrimitives.Multiply(y, 1f / s, y);
                    if (B != null) TensorPrimitives.MultiplyAdd(y, w, new ReadOnlySpan<float>(B, Dim), y);
                    else TensorPrimitives.Multiply(y, w, y);
                }
                else
                {
                    float s = MathF.Sqrt(TensorPrimitives.SumOfSquares(x) / Dim + Eps);
                    S[r] = s;
                    TensorPrimitives.Multiply(x, 1f / s, y);
                    if (Offset != 0f)
                    {
                        var wo = ScratchA(Dim);
                        TensorPrimitives.Add(w, Offset, wo);
                        TensorPrimitives.Multiply(y, wo, y);
                    }
                    else TensorPrimitives.Multiply(y, w, y);
                }
            }
        }
    }

    // ---------------------------------------------------------------- rope

    readonly RopeWork _rope;

    public void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope)
    {
        if (pos0 + rows > rope.MaxPositions) throw new ArgumentOutOfRangeException(nameof(rows), "position beyond the RoPE table");
        fixed (float* px = x)
        {
            var job = _rope;
            job.X = px; job.Heads = heads; job.HeadDim = headDim; job.Pos0 = pos0; job.Table = rope;
            _pool.Run(job, rows);
            job.Table = null!;
        }
    }

    sealed class RopeWork : IParallelWork
    {
        public float* X; public int Heads, HeadDim, Pos0; public RopeTable Table = null!;
        public void Execute(int t)
        {
            int half = Table.RotaryDim / 2, p = Pos0 + t;
            var cos = Table.Cos.AsSpan(p * half, half);
            var sin = Table.Sin.AsSpan(p * half, half);
            for (int h = 0; h < Heads; h++)
            {
                float* v = X + ((long)t * Heads + h) * HeadDim;
                for (int i = 0; i < half; i++)
                {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cos[i] - x2 * sin[i];
                    v[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
    }

    // ---------------------------------------------------------------- attention

    readonly AttentionWork _attn;

    enum AttnStep { Scores, Softmax, Mix, Fused }

    public void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores)
    {
        fixed (float* pq = q, pk = k, ps = scores) RunAttention(AttnStep.Scores, pq, pk, null, ps, null, s);
    }

    public void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern)
    {
        fixed (float* ps = scores, pp = pattern) RunAttention(AttnStep.Softmax, null, null, null, ps, pp, s);
    }

    public void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        fixed (float* pp = pattern, pv = v, pz = z)
        {
            var job = _attn;
            job.Z = pz;
            RunAttention(AttnStep.Mix, null, null, pv, null, pp, s);
        }
    }

    public void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z)
    {
        fixed (float* pq = q, pk = k, pv = v, pz = z)
        {
            _attn.Z = pz;
            RunAttention(AttnStep.Fused, pq, pk, pv, null, null, s);
        }
    }

    void RunAttention(AttnStep step, float* q, float* k, float* v, float* scores, float* pattern, in AttentionShape s)
    {
        if (Gemm.Supported && step != AttnStep.Softmax)
        {
            var tiled = _attnTiled;
            tiled.Step = step; tiled.Q = q; tiled.K = k; tiled.V = v; tiled.Z = _attn.Z; tiled.Scores = scores; tiled.Pattern = pattern; tiled.Shape = s;
            _pool.Run(tiled, s.Heads * ((s.Rows + TiledAttentionWork.Block - 1) / TiledAttentionWork.Block));
            return;
        }
        var job = _attn;
        job.Step = step; job.Q = q; job.K = k; job.V = v; job.Scores = scores; job.Pattern = pattern; job.Shape = s;
        _pool.Run(job, s.Heads * s.Rows);
    }

    readonly TiledAttentionWork _attnTiled = new();

    /// <summary>
    /// Attention on the <see cref="Gemm"/> kernels: items are (head, block of query rows). Scores = Q Kᵀ (4 × 4 tiles of
    /// <see cref="ScoresTiles"/>, keys read in place from the cache; GPT-2-small prefill 512, engine profile: attention
    /// 46.0 -> 26.6 ms, against the dot form's per-element lane sums), × scale, row softmax over the visible keys, then Z = P V (broadcast form) — over
    /// the keys all rows of the block see, then each row continues its own FMA chain over the keys only it sees.
    /// Every element goes through the same operations whether the scores/pattern are materialised or kept in scratch,
    /// so the fused step is bit-identical to Scores → Softmax → Mix.
    /// </summary>
    sealed class TiledAttentionWork : IParallelWork
    {
        public const int Block = 16;
        public AttnStep Step; public float* Q, K, V, Z, Scores, Pattern; public AttentionShape Shape;

        public void Execute(int index)
        {
            var s = Shape;
            int blocks = (s.Rows + Block - 1) / Block;
            int h = index / blocks, t0 = (index % blocks) * Block, t1 = Math.Min(s.Rows, t0 + Block), rows = t1 - t0;
            int kvh = h / s.Group, d = s.HeadDim, tk = s.Keys;
            int nMax = s.Pos0 + t1;                                    // keys the block's last row sees
            switch (Step)
            {
                case AttnStep.Scores:
                {
                    float* sc = Scores + ((long)h * s.Rows + t0) * tk;
                    ScoresBlock(h, kvh, t0, rows, nMax, sc, tk);
                    for (int r = 0; r < rows; r++) new Span<float>(sc + (long)r * tk + s.Pos0 + t0 + r + 1, tk - (s.Pos0 + t0 + r + 1)).Fill(float.NegativeInfinity);
                    break;
                }
                case AttnStep.Mix:
                    MixBlock(h, kvh, t0, rows, Pattern + ((long)h * s.Rows + t0) * tk, tk);
                    break;
                case AttnStep.Fused:
                {
                    if (rows == 1 && Sse.IsSupported) PrefetchKv(kvh, nMax);
                    var scratch = ScratchA(rows * nMax);
                    fixed (float* sc = scratch)
                    {
                        ScoresBlock(h, kvh, t0, rows, nMax, sc, nMax);
                        for (int r = 0; r < rows; r++)
                        {
                            var row = new Span<float>(sc + (long)r * nMax, nMax);
                            AttentionWork.SoftmaxRow(row, s.Pos0 + t0 + r + 1, row);
                        }
                        MixBlock(h, kvh, t0, rows, sc, nMax);
                    }
                    break;
                }
            }
        }

        /// <summary>
        /// Prefetches the head's key and value rows j &lt; n into L2 (a decode step reads them once, mostly from memory: the
        /// weights streamed since the previous step have evicted them), at most <see cref="KvPrefetchBytes"/> of them so
        /// that a long context does not flood the prefetch queue or evict its own first rows.
        /// </summary>
        void PrefetchKv(int kvh, int n)
        {
            var s = Shape;
            long ld = (long)s.KvHeads * s.HeadDim * sizeof(float);
            int bytes = s.HeadDim * sizeof(float);
            n = Math.Min(n, KvPrefetchBytes / (2 * bytes));
            byte* k = (byte*)(K + (long)kvh * s.HeadDim), v = (byte*)(V + (long)kvh * s.HeadDim);
            for (int j = 0; j < n; j++, k += ld)
                for (int b = 0; b < bytes; b += 64) Sse.Prefetch1(k + b);
            for (int j = 0; j < n; j++, v += ld)
                for (int b = 0; b < bytes; b += 64) Sse.Prefetch1(v + b);
        }

        /// <summary>
        /// Measured 2026-12-08 (AMD Zen 4 guest, GPT-2-small BF16 decode, in one process alternating no prefetch and this,
        /// paired medians): 16-token prompt + 128 steps +5.9%, 800-token prompt + 64 steps +4.1% (1 MiB: +4.8%).
        /// </summary>
        const int KvPrefetchBytes = 256 << 10;

        /// <summary>sc[r, j] = (q[t0 + r, h] . k[j, kvh]) * scale for j &lt; nMax (entries past a row's own keys are overwritten by the caller).</summary>
        void ScoresBlock(int h, int kvh, int t0, int rows, int nMax, float* sc, long ldS)
        {
            var s = Shape;
            int d = s.HeadDim;
            ScoresTiles.Compute(Q + ((long)t0 * s.Heads + h) * d, (long)s.Heads * d, rows, d, K + (long)kvh * d, (long)s.KvHeads * d, nMax, sc, ldS);
            for (int r = 0; r < rows; r++)
                TensorPrimitives.Multiply(new ReadOnlySpan<float>(sc + r * ldS, s.Pos0 + t0 + r + 1), s.Scale, new Span<float>(sc + r * ldS, s.Pos0 + t0 + r + 1));
        }

        /// <summary>z[t0 + r, h] = sum over j &lt; n_r of p[r, j] v[j, kvh], keys ascending.</summary>
        void MixBlock(int h, int kvh, int t0, int rows, float* p, long ldP)
        {
            var s = Shape;
            int d = s.HeadDim;
            int nMin = s.Pos0 + t0 + 1;
            byte* v = (byte*)(V + (long)kvh * d);
            long ldv = (long)s.KvHeads * d * sizeof(float), ldz = (long)s.Heads * d;
            float* z = Z + ((long)t0 * s.Heads + h) * d;
            Gemm.InMajor<F32Load>(p, ldP, rows, 0, nMin, v, ldv, null, z, ldz, 0, d, accumulate: false);
            for (int r = 1; r < rows; r++)
                Gemm.InMajor<F32Load>(p + r * ldP, ldP, 1, nMin, nMin + r, v, ldv, null, z + r * ldz, ldz, 0, d, accumulate: true);
        }
    }

    /// <summary>Items are (head, query row) pairs. The fused step runs the same three row functions on scratch.</summary>
    sealed class AttentionWork : IParallelWork
    {
        public AttnStep Step; public float* Q, K, V, Z, Scores, Pattern; public AttentionShape Shape;

        public void Execute(int index)
        {
            var s = Shape;
            int h = index / s.Rows, t = index % s.Rows;
            int tk = s.Keys, n = s.Pos0 + t + 1;
            long rowOff = ((long)h * s.Rows + t) * tk;
            switch (Step)
            {
                case AttnStep.Scores: ScoreRow(h, t, new Span<float>(Scores + rowOff, tk)); break;
                case AttnStep.Softmax: SoftmaxRow(new ReadOnlySpan<float>(Scores + rowOff, tk), n, new Span<float>(Pattern + rowOff, tk)); break;
                case AttnStep.Mix: MixRow(h, t, new ReadOnlySpan<float>(Pattern + rowOff, tk)); break;
                default:
                {
                    var sc = ScratchA(tk);
                    var p = ScratchB(tk);
                    ScoreRow(h, t, sc);
                    SoftmaxRow(sc, n, p);
                    MixRow(h, t, p);
                    break;
                }
            }
        }

        void ScoreRow(int h, int t, Span<float> dst)
        {
            var s = Shape;
            int d = s.HeadDim, n = s.Pos0 + t + 1, kvh = h / s.Group;
            var q = new ReadOnlySpan<float>(Q + ((long)t * s.Heads + h) * d, d);
            for (int j = 0; j < n; j++)
                dst[j] = TensorPrimitives.Dot(q, new ReadOnlySpan<float>(K + ((long)j * s.KvHeads + kvh) * d, d)) * s.Scale;
            dst[n..].Fill(float.NegativeInfinity);
        }

        internal static void SoftmaxRow(ReadOnlySpan<float> src, int n, Span<float> dst)
        {
            if (VectorMath.Supported)
            {
                fixed (float* ps = src, pd = dst) VectorMath.Softmax(ps, pd, n);
                dst[n..].Clear();
                return;
            }
            var row = dst[..n];
            float max = TensorPrimitives.Max(src[..n]);
            TensorPrimitives.Subtract(src[..n], max, row);
            TensorPrimitives.Exp(row, row);
            float sum = TensorPrimitives.Sum(row);
            TensorPrimitives.Divide(row, sum, row);
            dst[n..].Clear();
        }

        void MixRow(int h, int t, ReadOnlySpan<float> p)
        {
            var s = Shape;
            int d = s.HeadDim, n = s.Pos0 + t + 1, kvh = h / s.Group;
            var z = new Span<float>(Z + ((long)t * s.Heads + h) * d, d);
            z.Clear();
            for (int j = 0; j < n; j++)
                TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(V + ((long)j * s.KvHeads + kvh) * d, d), p[j], z, z);
        }
    }

    // ---------------------------------------------------------------- elementwise

    readonly ActivationWork _act;
    const int ElementChunk = 4096;

    public void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y) => RunActivation(kind, x, default, y, false);

    public void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y) => RunActivation(kind, gate, up, y, true);

    void RunActivation(ActivationKind kind, ReadOnlySpan<float> x, ReadOnlySpan<float> up, Span<float> y, bool gated)
    {
        fixed (float* px = x, pu = up, py = y)
        {
            var job = _act;
            job.X = px; job.Up = pu; job.Y = py; job.N = x.Length; job.Kind = kind; job.Gated = gated;
            _pool.Run(job, (x.Length + ElementChunk - 1) / ElementChunk);
        }
    }

    sealed class ActivationWork : IParallelWork
    {
        public float* X, Up, Y; public int N; public ActivationKind Kind; public bool Gated;
        public void Execute(int index)
        {
            int i0 = index * ElementChunk, len = Math.Min(N, i0 + ElementChunk) - i0;
            if (VectorMath.Supported && VectorMath.Activation(Kind, X + i0, Gated ? Up + i0 : null, Y + i0, len)) return;
            var x = new ReadOnlySpan<float>(X + i0, len);
            var tmp = ScratchA(len);
            Apply(Kind, x, tmp);
            var y = new Span<float>(Y + i0, len);
            if (Gated) TensorPrimitives.Multiply(tmp, new ReadOnlySpan<float>(Up + i0, len), y);
            else tmp.CopyTo(y);
        }
    }

    /// <summary>Vector forms of <see cref="ScalarMath"/>'s activations; dst must not alias x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Apply(ActivationKind kind, ReadOnlySpan<float> x, Span<float> dst)
    {
        switch (kind)
        {
            case ActivationKind.GeluTanh:
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                TensorPrimitives.Multiply(x, x, dst);
                TensorPrimitives.Multiply(dst, (float)ScalarMath.GeluCoeff, dst);
                TensorPrimitives.MultiplyAdd(dst, x, x, dst);            // x + c x^3
                TensorPrimitives.Multiply(dst, (float)ScalarMath.Sqrt2OverPi, dst);
                TensorPrimitives.Tanh(dst, dst);
                TensorPrimitives.Add(dst, 1f, dst);
                TensorPrimitives.Multiply(dst, 0.5f, dst);              // halve before * x (exact): (1 + tanh) x overflows for |x| > 1.7e38
                TensorPrimitives.Multiply(dst, x, dst);
                break;
            case ActivationKind.Silu:
                TensorPrimitives.Sigmoid(x, dst);
                TensorPrimitives.Multiply(dst, x, dst);
                break;
            case ActivationKind.QuickGelu:
                TensorPrimitives.Multiply(x, 1.702f, dst);
                TensorPrimitives.Sigmoid(dst, dst);
                TensorPrimitives.Multiply(dst, x, dst);
                break;
            case ActivationKind.Relu:
                for (int i = 0; i < x.Length; i++) dst[i] = ScalarMath.Relu(x[i]);
                break;
            default:
                for (int i = 0; i < x.Length; i++) dst[i] = ScalarMath.Apply(kind, x[i]);
                break;
        }
    }

    public void AddInPlace(ReadOnlySpan<float> x, Span<float> acc)
    {
        if (x.Length > acc.Length) throw new ArgumentException("add: x longer than acc");
        if (VectorMath.Supported) { fixed (float* px = x, pa = acc) VectorMath.Add(px, pa, x.Length); }
        else TensorPrimitives.Add(acc, x, acc);
    }

    public void ScaleInPlace(Span<float> x, float s) => TensorPrimitives.Multiply(x, s, x);
}
