using System.Numerics;
using System.Numerics.Tensors;
using Engine.Kernels;
using Engine.Kernels.Threading;
using Engine.Loader;

namespace Engine.Training;

/// <summary>
/// The three matrix products of a linear layer y = x Wᵀ + b with W out-major [Out, In]: the forward product, the input
/// gradient dx = dy W, and the weight gradient dW += dyᵀ x (db += Σ dy).
/// </summary>
public interface IMatOps<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    string Name { get; }
    /// <summary>y [rows, outDim] = x [rows, inDim] Wᵀ (+ b when not empty).</summary>
    void Forward(ReadOnlySpan<T> x, int rows, int inDim, ReadOnlySpan<T> w, int outDim, ReadOnlySpan<T> b, Span<T> y);
    /// <summary>dx [rows, inDim] = dy [rows, outDim] W, added to dx when <paramref name="accumulate"/>.</summary>
    void BackwardInput(ReadOnlySpan<T> dy, int rows, int outDim, ReadOnlySpan<T> w, int inDim, Span<T> dx, bool accumulate);
    /// <summary>dW [outDim, inDim] += dyᵀ x; db [outDim] += column sums of dy (when not empty).</summary>
    void BackwardWeight(ReadOnlySpan<T> dy, ReadOnlySpan<T> x, int rows, int outDim, int inDim, Span<T> dw, Span<T> db);
}

/// <summary>Runs loops over independent items on up to <see cref="Threads"/> threads (each item's result never depends on the thread count).</summary>
public sealed class Par(int threads)
{
    public int Threads { get; } = Math.Max(1, threads);

    public void For(int n, Action<int> body)
    {
        if (n <= 0) return;
        if (Threads == 1 || n == 1) { for (int i = 0; i < n; i++) body(i); return; }
        Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = Threads }, body);
    }

    /// <summary>Splits [0, n) into contiguous chunks (at least <paramref name="minChunk"/> long) run in parallel: body(start, end).</summary>
    public void Chunks(int n, int minChunk, Action<int, int> body)
    {
        if (n <= 0) return;
        int chunks = Math.Clamp(n / Math.Max(1, minChunk), 1, Threads * 4);
        if (chunks == 1 || Threads == 1) { body(0, n); return; }
        int per = (n + chunks - 1) / chunks;
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = Threads }, c =>
        {
            int s = c * per, e = Math.Min(n, s + per);
            if (s < e) body(s, e);
        });
    }
}

/// <summary>
/// Plain loops (TensorPrimitives dot products and multiply-adds), any precision: the F64 reference mode of the gradient
/// checks, and a fallback for float. Items are rows (forward, input gradient) or output units (weight gradient), so the
/// result does not depend on the thread count.
/// </summary>
public sealed class LoopMatOps<T>(Par par) : IMatOps<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public string Name => "loops";

    public void Forward(ReadOnlySpan<T> x, int rows, int inDim, ReadOnlySpan<T> w, int outDim, ReadOnlySpan<T> b, Span<T> y)
    {
        unsafe
        {
            fixed (T* px = x, pw = w, pb = b, py = y)
            {
                T* cx = px, cw = pw, cb = pb, cy = py;
                bool hasB = b.Length > 0;
                par.Chunks(rows, 8, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        var xr = new ReadOnlySpan<T>(cx + (long)r * inDim, inDim);
                        for (int o = 0; o < outDim; o++)
                            cy[(long)r * outDim + o] = TensorPrimitives.Dot(xr, new ReadOnlySpan<T>(cw + (long)o * inDim, inDim)) + (hasB ? cb[o] : T.Zero);
                    }
                });
            }
        }
    }

    public void BackwardInput(ReadOnlySpan<T> dy, int rows, int outDim, ReadOnlySpan<T> w, int inDim, Span<T> dx, bool accumulate)
    {
        unsafe
        {
            fixed (T* pdy = dy, pw = w, pdx = dx)
            {
                T* cdy = pdy, cw = pw, cdx = pdx;
                par.Chunks(rows, 8, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        var dxr = new Span<T>(cdx + (long)r * inDim, inDim);
                        if (!accumulate) dxr.Clear();
                        for (int o = 0; o < outDim; o++)
                        {
                            T g = cdy[(long)r * outDim + o];
                            if (g == T.Zero) continue;
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>(cw + (long)o * inDim, inDim), g, dxr, dxr);
                        }
                    }
                });
            }
        }
    }

    public void BackwardWeight(ReadOnlySpan<T> dy, ReadOnlySpan<T> x, int rows, int outDim, int inDim, Span<T> dw, Span<T> db)
    {
        unsafe
        {
            fixed (T* pdy = dy, px = x, pdw = dw, pdb = db)
            {
                T* cdy = pdy, cx = px, cdw = pdw, cdb = pdb;
                bool hasB = db.Length > 0;
                par.Chunks(outDim, 4, (o0, o1) =>
                {
                    for (int o = o0; o < o1; o++)
                    {
                        var dwo = new Span<T>(cdw + (long)o * inDim, inDim);
                        T bsum = T.Zero;
                        for (int r = 0; r < rows; r++)
                        {
                            T g = cdy[(long)r * outDim + o];
                            bsum += g;
                            if (g == T.Zero) continue;
                            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<T>(cx + (long)r * inDim, inDim), g, dwo, dwo);
                        }
                        if (hasB) cdb[o] += bsum;
                    }
                });
            }
        }
    }
}

/// <summary>
/// Float matrix products on the engine's own kernels (<see cref="IKernels.MatMul"/>, the packed AVX-512 GEMM of "cpu"):
/// the forward product uses W as an out-major weight; dx = dy W reads the same memory as an input-major weight
/// [In' = Out, Out' = In]; dW = dyᵀ x transposes dy once and reads x as an input-major weight [In' = rows, Out' = In].
/// No weight is copied. Buffers must be pinned (the training engine allocates them on the pinned heap).
/// </summary>
public sealed unsafe class KernelMatOps(IKernels kernels, Par par) : IMatOps<float>
{
    public string Name => "kernels:" + kernels.Name;
    float[] _scratch = [];
    float[] _scratchT = [];

    static Linear View(float* data, int rowsOfStorage, int colsOfStorage, bool inputMajor, int inDim, int outDim)
    {
        var info = new TensorInfo("train", DType.F32, [rowsOfStorage, colsOfStorage], 0, (long)rowsOfStorage * colsOfStorage * 4, "");
        return new Linear(new TensorView(info, (byte*)data), inputMajor, null, inDim, outDim);
    }

    Span<float> Scratch(ref float[] buf, long n)
    {
        if (buf.Length < n) buf = GC.AllocateUninitializedArray<float>((int)n, pinned: true);
        return buf.AsSpan(0, (int)n);
    }

    public void Forward(ReadOnlySpan<float> x, int rows, int inDim, ReadOnlySpan<float> w, int outDim, ReadOnlySpan<float> b, Span<float> y)
    {
        fixed (float* pw = w)
            kernels.MatMul(x, rows, View(pw, outDim, inDim, false, inDim, outDim), y);
        if (b.Length > 0)
            for (int r = 0; r < rows; r++) TensorPrimitives.Add(y.Slice(r * outDim, outDim), b, y.Slice(r * outDim, outDim));
    }

    public void BackwardInput(ReadOnlySpan<float> dy, int rows, int outDim, ReadOnlySpan<float> w, int inDim, Span<float> dx, bool accumulate)
    {
        fixed (float* pw = w)
        {
            var lin = View(pw, outDim, inDim, true, outDim, inDim);
            if (!accumulate) { kernels.MatMul(dy, rows, lin, dx); return; }
            var tmp = Scratch(ref _scratch, (long)rows * inDim);
            kernels.MatMul(dy, rows, lin, tmp);
            TensorPrimitives.Add(dx[..tmp.Length], tmp, dx);
        }
    }

    public void BackwardWeight(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, int rows, int outDim, int inDim, Span<float> dw, Span<float> db)
    {
        var dyT = Scratch(ref _scratchT, (long)outDim * rows);
        Transpose(dy, rows, outDim, dyT);
        if (db.Length > 0)
            for (int o = 0; o < outDim; o++) db[o] += TensorPrimitives.Sum<float>(dyT.Slice(o * rows, rows));
        var tmp = Scratch(ref _scratch, (long)outDim * inDim);
        fixed (float* px = x)
            kernels.MatMul(dyT, outDim, View(px, rows, inDim, true, rows, inDim), tmp);
        TensorPrimitives.Add(dw[..tmp.Length], tmp, dw);
    }

    void Transpose(ReadOnlySpan<float> a, int rows, int cols, Span<float> t)
    {
        fixed (float* pa = a, pt = t)
        {
            float* ca = pa, ct = pt;
            const int B = 32;
            par.Chunks((cols + B - 1) / B, 1, (b0, b1) =>
            {
                for (int cb = b0 * B; cb < Math.Min(cols, b1 * B); cb += B)
                    for (int rb = 0; rb < rows; rb += B)
                    {
                        int ce = Math.Min(cols, cb + B), re = Math.Min(rows, rb + B);
                        for (int c = cb; c < ce; c++)
                            for (int r = rb; r < re; r++) ct[(long)c * rows + r] = ca[(long)r * cols + c];
                    }
            });
        }
    }
}
