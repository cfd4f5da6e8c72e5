// Matrix multiply kernels: y[M, N] = x[M, K] W^T + b, with W [N, K] (out-major, nn.Linear) or [K, N] (input-major,
// GPT-2 Conv1D), stored F32, F16 (ILGPU.Half) or BF16 (ushort, widened in the kernel as bits << 16).
//   MatMulTiled   prefill (M > 1): shared-memory tiles of BK = 32 along K, each thread a 4x4 register tile, so a group of
//                 TX x TY threads owns a (4 TY) x (4 TX) tile of y. K loops to K (not M: the ILGPU sample's M<K bug).
//   GemvOutMajor  decode (M = 1), W [N, K]: a warp per output row (lanes stride K, coalesced), partial sums reduced
//                 through shared memory in lane order; RowsPerWarp > 1 lets one warp own several rows.
//   GemvInMajor   decode (M = 1), W [K, N]: a lane per output column (coalesced along N), the warps of a group split K.
// Tile sizes, warps and dtype/layout are SpecializedValue<int>: each combination is compiled once, loop bounds constant.
// Test: tests/Engine.Tests/Ilgpu (op grid on the CPU accelerator). Bench: README.md "On a real GPU".
using ILGPU;
using ILGPU.Runtime;
using Half = ILGPU.Half;

namespace Engine.Kernels.Ilgpu;

/// <summary>Shapes of one MatMul call (passed by value to the kernels).</summary>
public struct MatMulDims
{
    public int M, K, N, HasBias;
}

internal static class MatMulKernels
{
    public const int BK = 32;
    /// <summary>Row stride of the shared tiles: at most 64 rows/columns per tile, +1 against bank conflicts.</summary>
    public const int TileStride = 65;
    public const int MaxTile = 64;

    /// <summary>Element i of a weight tensor widened to float; dtype 0 = F32, 1 = F16, 2 = BF16 (specialised away).</summary>
    public static float Weight(int dtype, ArrayView<float> wf, ArrayView<Half> wh, ArrayView<ushort> wb, int i)
    {
        if (dtype == 0) return wf[i];
        if (dtype == 1) return (float)wh[i];
        return Interop.IntAsFloat((uint)wb[i] << 16);
    }

    public static void MatMulTiled(ArrayView<float> x, ArrayView<float> wf, ArrayView<Half> wh, ArrayView<ushort> wb,
        ArrayView<float> bias, ArrayView<float> y, MatMulDims d,
        SpecializedValue<int> dtype, SpecializedValue<int> inputMajor, SpecializedValue<int> tileX, SpecializedValue<int> tileY)
    {
        var As = SharedMemory.Allocate<float>(BK * TileStride);   // [BK][BM] x tile, transposed
        var Bs = SharedMemory.Allocate<float>(BK * TileStride);   // [BK][BN] weight tile
        int tx = tileX.Value, ty = tileY.Value, dt = dtype.Value;
        bool inMajor = inputMajor.Value != 0;
        int bm = 4 * ty, bn = 4 * tx, threads = tx * ty;
        int tid = Group.IdxX, lx = tid % tx, ly = tid / tx;
        int n0 = Grid.IdxX * bn, m0 = Grid.IdxY * bm;
        int M = d.M, K = d.K, N = d.N;

        float c00 = 0, c01 = 0, c02 = 0, c03 = 0, c10 = 0, c11 = 0, c12 = 0, c13 = 0;
        float c20 = 0, c21 = 0, c22 = 0, c23 = 0, c30 = 0, c31 = 0, c32 = 0, c33 = 0;

        for (int k0 = 0; k0 < K; k0 += BK)
        {
            // x tile: consecutive threads read consecutive k (coalesced), stored transposed [k][m].
            for (int idx = tid; idx < bm * BK; idx += threads)
            {
                int m = idx / BK, kk = idx - m * BK, gm = m0 + m, gk = k0 + kk;
                As[kk * TileStride + m] = gm < M && gk < K ? x[gm * K + gk] : 0f;
            }
            // weight tile: read along the stored minor dimension (k for out-major, n for input-major).
            if (inMajor)
            {
                for (int idx = tid; idx < bn * BK; idx += threads)
                {
                    int kk = idx / bn, n = idx - kk * bn, gn = n0 + n, gk = k0 + kk;
                    Bs[kk * TileStride + n] = gn < N && gk < K ? Weight(dt, wf, wh, wb, gk * N + gn) : 0f;
                }
            }
            else
            {
                for (int idx = tid; idx < bn * BK; idx += threads)
                {
                    int n = idx / BK, kk = idx - n * BK, gn = n0 + n, gk = k0 + kk;
                    Bs[kk * TileStride + n] = gn < N && gk < K ? Weight(dt, wf, wh, wb, gn * K + gk) : 0f;
                }
            }
            Group.Barrier();
            int kmax = K - k0 < BK ? K - k0 : BK;
            for (int kk = 0; kk < kmax; kk++)
            {
                int ab = kk * TileStride + ly, bb = kk * TileStride + lx;
                float a0 = As[ab], a1 = As[ab + ty], a2 = As[ab + 2 * ty], a3 = As[ab + 3 * ty];
                float b0 = Bs[bb], b1 = Bs[bb + tx], b2 = Bs[bb + 2 * tx], b3 = Bs[bb + 3 * tx];
                c00 += a0 * b0; c01 += a0 * b1; c02 += a0 * b2; c03 += a0 * b3;
                c10 += a1 * b0; c11 += a1 * b1; c12 += a1 * b2; c13 += a1 * b3;
                c20 += a2 * b0; c21 += a2 * b1; c22 += a2 * b2; c23 += a2 * b3;
                c30 += a3 * b0; c31 += a3 * b1; c32 += a3 * b2; c33 += a3 * b3;
            }
            Group.Barrier();
        }

        int mA = m0 + ly, nA = n0 + lx;
        StoreRow(y, bias, d, mA, nA, tx, c00, c01, c02, c03);
        StoreRow(y, bias, d, mA + ty, nA, tx, c10, c11, c12, c13);
        StoreRow(y, bias, d, mA + 2 * ty, nA, tx, c20, c21, c22, c23);
        StoreRow(y, bias, d, mA + 3 * ty, nA, tx, c30, c31, c32, c33);
    }

    static void StoreRow(ArrayView<float> y, ArrayView<float> bias, MatMulDims d, int m, int n, int tx, float v0, float v1, float v2, float v3)
    {
        if (m >= d.M) return;
        int row = m * d.N;
        Store(y, bias, d, row, n, v0);
        Store(y, bias, d, row, n + tx, v1);
        Store(y, bias, d, row, n + 2 * tx, v2);
        Store(y, bias, d, row, n + 3 * tx, v3);
    }

    static void Store(ArrayView<float> y, ArrayView<float> bias, MatMulDims d, int row, int n, float v)
    {
        if (n < d.N) y[row + n] = d.HasBias != 0 ? v + bias[n] : v;
    }

    /// <summary>Shared floats per group of the GEMV kernels: warps x rows-per-warp partial rows of 32 lanes (+1 pad).</summary>
    public const int GemvShared = 32 * 33;

    /// <summary>y[n] = x . W[n, :] (+ b[n]); group = warps x 32 lanes, each warp owns rowsPerWarp consecutive rows.</summary>
    public static void GemvOutMajor(ArrayView<float> x, ArrayView<float> wf, ArrayView<Half> wh, ArrayView<ushort> wb,
        ArrayView<float> bias, ArrayView<float> y, MatMulDims d, SpecializedValue<int> dtype, SpecializedValue<int> rowsPerWarp)
    {
        var partial = SharedMemory.Allocate<float>(GemvShared);
        int dt = dtype.Value, rpw = rowsPerWarp.Value;
        int lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int warpsPerGroup = Group.DimX / Warp.WarpSize;
        int row0 = (Grid.IdxX * warpsPerGroup + warp) * rpw;
        int K = d.K;
        for (int r = 0; r < rpw; r++)
        {
            int row = row0 + r;
            float s = 0;
            if (row < d.N)
            {
                int wrow = row * K;
                for (int k = lane; k < K; k += 32) s += x[k] * Weight(dt, wf, wh, wb, wrow + k);
            }
            partial[(warp * rpw + r) * 33 + lane] = s;
        }
        Warp.Barrier();
        if (lane < rpw)
        {
            int row = row0 + lane;
            if (row < d.N)
            {
                int pb = (warp * rpw + lane) * 33;
                float t = 0;
                for (int l = 0; l < 32; l++) t += partial[pb + l];
                y[row] = d.HasBias != 0 ? t + bias[row] : t;
            }
        }
    }

    /// <summary>y[n] = sum_k x[k] W[k, n] (+ b[n]); a lane per column n, the group's warps split K and add in warp order.</summary>
    public static void GemvInMajor(ArrayView<float> x, ArrayView<float> wf, ArrayView<Half> wh, ArrayView<ushort> wb,
        ArrayView<float> bias, ArrayView<float> y, MatMulDims d, SpecializedValue<int> dtype, SpecializedValue<int> warps)
    {
        var partial = SharedMemory.Allocate<float>(GemvShared);
        int dt = dtype.Value, nw = warps.Value;
        int lane = Warp.LaneIdx, warp = Warp.WarpIdx;
        int n = Grid.IdxX * 32 + lane;
        int K = d.K, N = d.N;
        int chunk = (K + nw - 1) / nw;
        int kBegin = warp * chunk, kEnd = kBegin + chunk < K ? kBegin + chunk : K;
        float s = 0;
        if (n < N)
            for (int k = kBegin; k < kEnd; k++) s += x[k] * Weight(dt, wf, wh, wb, k * N + n);
        if (nw == 1)
        {
            if (n < N) y[n] = d.HasBias != 0 ? s + bias[n] : s;
            return;
        }
        partial[warp * 33 + lane] = s;
        Group.Barrier();
        if (warp == 0 && n < N)
        {
            float t = 0;
            for (int w = 0; w < nw; w++) t += partial[w * 33 + lane];
            y[n] = d.HasBias != 0 ? t + bias[n] : t;
        }
    }
}
