// Norms (a group of 32 lanes per row; sums combined through shared memory in lane order) and the elementwise ops
// (grid-stride loops: any launch size is correct, the backend picks one per accelerator). Activations call the float
// definitions of Engine.Kernels.ScalarMath, the same functions the reference and SIMD tails are checked against.
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using Engine.Loader;
using Half = ILGPU.Half;

namespace Engine.Kernels.Ilgpu;

internal static class ElementwiseKernels
{
    public const int Lanes = 32;

    static int Stride => Grid.DimX * Group.DimX;

    /// <summary>Sum of one value per lane, in lane order (identical in every lane). One group barrier.</summary>
    static float LaneSum(ArrayView<float> shared, float v)
    {
        shared[Group.IdxX] = v;
        Group.Barrier();
        float t = 0;
        for (int l = 0; l < Lanes; l++) t += shared[l];
        return t;
    }

    /// <summary>y = (x - mean) / s * w + b per row, s = sqrt(var + eps), scale[row] = s. Grid.IdxX = row.</summary>
    public static void LayerNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> b, ArrayView<float> y, ArrayView<float> scale,
        int dim, float eps, int hasBias)
    {
        var sa = SharedMemory.Allocate<float>(Lanes);
        var sb = SharedMemory.Allocate<float>(Lanes);
        int lane = Group.IdxX, off = Grid.IdxX * dim;
        float s = 0;
        for (int i = lane; i < dim; i += Lanes) s += x[off + i];
        float mean = LaneSum(sa, s) / dim;
        float v = 0;
        for (int i = lane; i < dim; i += Lanes) { float c = x[off + i] - mean; v += c * c; }
        float sd = XMath.Sqrt(LaneSum(sb, v) / dim + eps);
        if (lane == 0) scale[Grid.IdxX] = sd;
        for (int i = lane; i < dim; i += Lanes)
            y[off + i] = hasBias != 0 ? (x[off + i] - mean) / sd * w[i] + b[i] : (x[off + i] - mean) / sd * w[i];
    }

    /// <summary>y = x / s * (offset + w) per row, s = sqrt(mean(x^2) + eps), scale[row] = s. Grid.IdxX = row.</summary>
    public static void RmsNorm(ArrayView<float> x, ArrayView<float> w, ArrayView<float> y, ArrayView<float> scale, int dim, float offset, float eps)
    {
        var sa = SharedMemory.Allocate<float>(Lanes);
        int lane = Group.IdxX, off = Grid.IdxX * dim;
        float s = 0;
        for (int i = lane; i < dim; i += Lanes) { float a = x[off + i]; s += a * a; }
        float sd = XMath.Sqrt(LaneSum(sa, s) / dim + eps);
        if (lane == 0) scale[Grid.IdxX] = sd;
        for (int i = lane; i < dim; i += Lanes) y[off + i] = x[off + i] / sd * (offset + w[i]);
    }

    /// <summary>rotate_half RoPE in place on the first rotDim dims of each head, flat over rows x heads x rotDim/2.</summary>
    public static void Rope(ArrayView<float> x, ArrayView<float> cos, ArrayView<float> sin, int rows, int heads, int headDim, int half, int pos0)
    {
        int total = rows * heads * half;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += Stride)
        {
            int i = idx % half, th = idx / half, t = th / heads;
            int tb = (pos0 + t) * half + i, xb = th * headDim + i;
            float c = cos[tb], sn = sin[tb], x1 = x[xb], x2 = x[xb + half];
            x[xb] = x1 * c - x2 * sn;
            x[xb + half] = x2 * c + x1 * sn;
        }
    }

    /// <summary>dst[t, :] = table[ids[t], :] widened; dtype 0 F32, 1 F16, 2 BF16.</summary>
    public static void Gather(ArrayView<int> ids, ArrayView<float> tf, ArrayView<Half> th, ArrayView<ushort> tb, ArrayView<float> dst,
        int count, int dim, SpecializedValue<int> dtype)
    {
        int total = count * dim;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += Stride)
        {
            int t = idx / dim, i = idx - t * dim;
            dst[idx] = MatMulKernels.Weight(dtype.Value, tf, th, tb, ids[t] * dim + i);
        }
    }

    /// <summary>dst[i] = table[first + i] widened (learned position rows).</summary>
    public static void Widen(ArrayView<float> tf, ArrayView<Half> th, ArrayView<ushort> tb, ArrayView<float> dst, int first, int count, SpecializedValue<int> dtype)
    {
        for (int idx = Grid.GlobalIndex.X; idx < count; idx += Stride)
            dst[idx] = MatMulKernels.Weight(dtype.Value, tf, th, tb, first + idx);
    }

    public static float Act(int kind, float x) => kind switch
    {
        (int)ActivationKind.GeluTanh => ScalarMath.GeluTanh(x),
        (int)ActivationKind.GeluErf => ScalarMath.GeluErf(x),
        (int)ActivationKind.Silu => ScalarMath.Silu(x),
        (int)ActivationKind.Relu => ScalarMath.Relu(x),
        _ => ScalarMath.QuickGelu(x),
    };

    public static void Activation(ArrayView<float> x, ArrayView<float> y, int n, SpecializedValue<int> kind)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Stride) y[i] = Act(kind.Value, x[i]);
    }

    public static void Gated(ArrayView<float> gate, ArrayView<float> up, ArrayView<float> y, int n, SpecializedValue<int> kind)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Stride) y[i] = Act(kind.Value, gate[i]) * up[i];
    }

    public static void Add(ArrayView<float> x, ArrayView<float> acc, int n)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Stride) acc[i] += x[i];
    }

    public static void Scale(ArrayView<float> x, int n, float s)
    {
        for (int i = Grid.GlobalIndex.X; i < n; i += Stride) x[i] *= s;
    }

    /// <summary>Splits [rows, q + 2 kv] into q [rows, H, d], k, v [rows, K, d]; perHead: the row is [H, 3, d] (GPT-NeoX).</summary>
    public static void SplitQkv(ArrayView<float> qkv, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
        int rows, int heads, int kvHeads, int d, int perHead)
    {
        int qd = heads * d, kvd = kvHeads * d, width = qd + 2 * kvd, total = rows * width;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += Stride)
        {
            int t = idx / width, c = idx - t * width;
            float val = qkv[idx];
            if (perHead != 0)
            {
                int h = c / (3 * d), r = c - h * 3 * d, part = r / d, i = r - part * d;
                int dst = t * qd + h * d + i;
                if (part == 0) q[dst] = val; else if (part == 1) k[dst] = val; else v[dst] = val;
            }
            else if (c < qd) q[t * qd + c] = val;
            else if (c < qd + kvd) k[t * kvd + c - qd] = val;
            else v[t * kvd + c - qd - kvd] = val;
        }
    }

    /// <summary>
    /// A device-side intervention on a [rows, cols] tap: rows r0.., columns c0.. of extent nr x nc. op 0 Set (x = v),
    /// 1 Add (x += alpha v), 2 Scale (x *= alpha), 3 Zero (x = 0). v is [nr, nc] with row stride vStride (0: one row for all).
    /// </summary>
    public static void Intervene(ArrayView<float> x, ArrayView<float> v, int cols, int r0, int c0, int nr, int nc, int vStride, float alpha,
        SpecializedValue<int> op)
    {
        int total = nr * nc;
        for (int idx = Grid.GlobalIndex.X; idx < total; idx += Stride)
        {
            int r = idx / nc, c = idx - r * nc, xi = (r0 + r) * cols + c0 + c;
            int o = op.Value;
            if (o == 0) x[xi] = v[r * vStride + c];
            else if (o == 1) x[xi] += alpha * v[r * vStride + c];
            else if (o == 2) x[xi] *= alpha;
            else x[xi] = 0f;
        }
    }
}
