using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Engine.Kernels.Simd;

/// <summary>
/// Whether a fused multiply-add with a subnormal input runs much slower than with normal inputs on this CPU: Intel
/// cores take a microcode assist (Xeon model 207, 2026-12-07: GPT-2-small F16 c_proj decoded at a third of c_fc's
/// speed), AMD Zen 5 does not (same day: 8 chains of 16 000 FMAs, subnormal/normal time 0.84-1.25). The F16 kernels
/// move a half's bits into float position only where that costs nothing (<see cref="SimdKernels"/>). Probed once per
/// process, well under a millisecond where there is no assist.
/// </summary>
public static class SubnormalProbe
{
    static int s_state;   // 0 not probed, 1 fast, 2 slow
    static float s_sink;

    /// <summary>True when a subnormal FMA input costs at least 3x a normal one (probed on first use).</summary>
    public static bool InputsSlow
    {
        get
        {
            if (s_state == 0) s_state = Measure() ? 2 : 1;
            return s_state == 2;
        }
    }

    static bool Measure()
    {
        // The subnormal factor times 2^100 gives a normal product and a normal sum, as in the F16 kernels, where the
        // subnormal bit pattern meets x · 2^112: only the input is subnormal.
        float x = MathF.Pow(2, 100);
        Chains(1e-30f, x, 64);
        Chains(1e-40f, x, 64);
        long normal = long.MaxValue, subnormal = long.MaxValue;
        for (int round = 0; round < 3; round++)
        {
            normal = Math.Min(normal, Chains(1e-30f, x, 2000));
            subnormal = Math.Min(subnormal, Chains(1e-40f, x, 2000));
        }
        return subnormal > 3 * normal;
    }

    /// <summary>Stopwatch ticks for 8 independent chains of <paramref name="steps"/> FMAs each (w · x + acc).</summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    static long Chains(float w, float x, int steps)
    {
        var a = Vector256.Create(w);
        var b = Vector256.Create(x);
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < steps; i++)
        {
            c0 = Vector256.FusedMultiplyAdd(a, b, c0); c1 = Vector256.FusedMultiplyAdd(a, b, c1);
            c2 = Vector256.FusedMultiplyAdd(a, b, c2); c3 = Vector256.FusedMultiplyAdd(a, b, c3);
            c4 = Vector256.FusedMultiplyAdd(a, b, c4); c5 = Vector256.FusedMultiplyAdd(a, b, c5);
            c6 = Vector256.FusedMultiplyAdd(a, b, c6); c7 = Vector256.FusedMultiplyAdd(a, b, c7);
        }
        long ticks = Stopwatch.GetTimestamp() - start;
        s_sink = ((c0 + c1) + (c2 + c3) + ((c4 + c5) + (c6 + c7))).GetElement(0);
        return ticks;
    }
}
