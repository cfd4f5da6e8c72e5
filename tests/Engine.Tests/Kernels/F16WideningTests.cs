using Engine.Kernels;
using Engine.Kernels.Simd;
using Engine.Loader;
using Xunit;

namespace Engine.Tests.Kernels;

/// <summary>
/// Every finite IEEE half (63,488 values: normals, subnormals, both zeros, both signs) through each F16 matmul path of the
/// SIMD backend, read back exactly: x is the identity (or one of its rows), so y holds the widened weights themselves
/// (1 · w + 0 · ... is exact; with x = c it is c · w rounded once). Guards the shortcut widening used for all-finite F16 weights (sign extension, one mask,
/// one product by 2^112) in the matrix-vector, dot-form and broadcast-form kernels, both weight layouts.
/// </summary>
public class F16WideningTests
{
    const int K = 16;

    static float[] AllFiniteHalves()
    {
        var v = new List<float>(63488);
        for (int bits = 0; bits <= 0xFFFF; bits++)
            if ((bits & 0x7C00) != 0x7C00) v.Add((float)BitConverter.UInt16BitsToHalf((ushort)bits));
        Assert.Equal(63488, v.Count);
        return v.ToArray();
    }

    [Theory]
    [InlineData("cpu", true, 1)]
    [InlineData("cpu", true, K)]
    [InlineData("cpu", false, 1)]
    [InlineData("cpu", false, K)]
    [InlineData("cpu-ref", true, K)]
    // |x| >= 2^15: the input-major matrix-vector product leaves its scaled form (x * 2^112 would overflow) for the rest.
    [InlineData("cpu", true, 1, 40000f)]
    [InlineData("cpu", true, 1, -1e6f)]
    // The out-major matrix-vector product takes x · 2^112 only while every |x| < 2^15.
    [InlineData("cpu", false, 1, 40000f)]
    [InlineData("cpu", false, 1, -1e6f)]
    // 128 rows: input-major F16 weights are widened into a per-thread panel first (Gemm.PanelMinRows: from 32 rows).
    [InlineData("cpu", true, 128, 1f, 128)]
    [InlineData("cpu", false, 128, 1f, 128)]
    public void Every_finite_half_widens_exactly(string backend, bool inputMajor, int rows, float one = 1f, int K = K)
        => Widens_exactly(AllFiniteHalves(), backend, inputMajor, rows, one, K);

    /// <summary>
    /// The routes of finite F16 tensors (Linear.NormalHalves, Linear.SubnormalGroupShare), on a CPU where a subnormal FMA
    /// input is slow and on one where it is not (the probe's answer forced both ways): no subnormal half, or any where
    /// subnormal inputs cost nothing (bit patterns scaled by 2^112 or moved onto x); a few (each group of 16 tested; the
    /// all-finite set above: ~3% of groups); many (every group widened exactly: the 2,046 subnormal halves and as many
    /// normal ones, half of the groups).
    /// </summary>
    [Theory]
    [InlineData("normal", true, 1)]
    [InlineData("normal", false, 1)]
    [InlineData("normal", true, 16)]
    [InlineData("normal", true, 128)]
    [InlineData("normal", false, 128)]
    [InlineData("subnormal-heavy", true, 1)]
    [InlineData("subnormal-heavy", false, 1)]
    [InlineData("subnormal-heavy", true, 16)]
    [InlineData("subnormal-heavy", false, 16)]
    [InlineData("subnormal-heavy", true, 128)]
    [InlineData("subnormal-heavy", false, 128)]
    [InlineData("all", true, 1)]
    [InlineData("all", false, 1)]
    [InlineData("all", true, 16)]
    [InlineData("all", false, 128)]
    public void Finite_halves_widen_exactly_on_every_route(string set, bool inputMajor, int rows)
    {
        var all = AllFiniteHalves();
        bool Subnormal(float v) => v != 0 && MathF.Abs(v) < 6.1035156e-5f;     // below 2^-14
        var chosen = set == "normal" ? all.Where(v => !Subnormal(v)).ToList()
                   : set == "all" ? all.ToList()
                   : all.Where(Subnormal).Concat(all.Where(v => !Subnormal(v)).Where((_, i) => i % 30 == 0)).ToList();
        while (chosen.Count % 128 != 0) chosen.Add(1f);
        int K = rows == 128 ? 128 : 16;
        foreach (bool slow in new[] { true, false })
        {
            var lin = Widens_exactly(chosen.ToArray(), new SimdKernels(null, subnormalInputsSlow: slow), inputMajor, rows, 1f, K);
            if (set == "normal") Assert.True(lin.NormalHalves);
            else if (set == "all") Assert.True(!lin.NormalHalves && lin.SubnormalGroupShare < 0.1, $"share {lin.SubnormalGroupShare}");
            else Assert.True(!lin.NormalHalves && lin.SubnormalGroupShare >= 0.4, $"share {lin.SubnormalGroupShare}");
        }
    }

    static Linear Widens_exactly(float[] halves, string backend, bool inputMajor, int rows, float one, int K)
        => Widens_exactly(halves, KernelRegistry.Create(backend), inputMajor, rows, one, K);

    static Linear Widens_exactly(float[] halves, IKernels kernels, bool inputMajor, int rows, float one, int K)
    {
        int N = halves.Length / K;
        // Element (k, n) of the logical [K, N] matrix is halves[n * K + k]; stored [K, N] (input-major) or [N, K].
        var data = new float[K * N];
        for (int n = 0; n < N; n++)
            for (int k = 0; k < K; k++)
                data[inputMajor ? k * N + n : n * K + k] = halves[n * K + k];
        using var file = TempTensors.Write(DType.F16, false, inputMajor ? [K, N] : [N, K], data);
        var lin = new Linear(file.File.View("w"), inputMajor, null, K, N);
        Assert.True(lin.AllFinite);
        _ = lin.SubnormalGroupShare;                                           // scanned while the file is open
        for (int first = 0; first < K; first += rows)
        {
            var x = new float[rows * K];
            for (int r = 0; r < rows; r++) x[r * K + first + r] = one;
            var y = new float[rows * N];
            kernels.MatMul(x, rows, lin, y);
            for (int r = 0; r < rows; r++)
                for (int n = 0; n < N; n++)
                {
                    float expected = one * halves[n * K + first + r];
                    if (y[r * N + n] != expected)
                        Assert.Fail($"{kernels.Name}, {(inputMajor ? "input" : "output")}-major, rows={rows}: weight ({first + r}, {n}) = {expected:R} " +
                                    $"(x = {one:R}) came out as {y[r * N + n]:R}");
                }
        }
        return lin;
    }
}
