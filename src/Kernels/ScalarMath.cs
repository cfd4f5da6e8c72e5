using System.Runtime.CompilerServices;
using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// The scalar definition of every nonlinearity, in double (the reference) and float (the SIMD tails and GPU kernels).
/// One definition per function; vector versions elsewhere must agree with these within float rounding.
/// </summary>
public static class ScalarMath
{
    public const double Sqrt2OverPi = 0.7978845608028654;   // sqrt(2 / pi)
    public const double GeluCoeff = 0.044715;
    public const double InvSqrt2 = 0.7071067811865476;

    /// <summary>GELU, tanh approximation (gelu_new / gelu_pytorch_tanh).</summary>
    public static double GeluTanh(double x) => 0.5 * x * (1.0 + Math.Tanh(Sqrt2OverPi * (x + GeluCoeff * x * x * x)));

    /// <summary>GELU, exact: 0.5 x (1 + erf(x / sqrt 2)).</summary>
    public static double GeluErf(double x) => 0.5 * x * (1.0 + Erf(x * InvSqrt2));

    public static double Silu(double x) => x / (1.0 + Math.Exp(-x));
    public static double Relu(double x) => x > 0 ? x : (double.IsNaN(x) ? x : 0.0);
    public static double QuickGelu(double x) => x / (1.0 + Math.Exp(-1.702 * x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Apply(ActivationKind kind, double x) => kind switch
    {
        ActivationKind.GeluTanh => GeluTanh(x),
        ActivationKind.GeluErf => GeluErf(x),
        ActivationKind.Silu => Silu(x),
        ActivationKind.Relu => Relu(x),
        ActivationKind.QuickGelu => QuickGelu(x),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    public static float GeluTanh(float x) => 0.5f * x * (1f + MathF.Tanh((float)Sqrt2OverPi * (x + (float)GeluCoeff * x * x * x)));
    public static float GeluErf(float x) => (float)GeluErf((double)x);
    public static float Silu(float x) => x / (1f + MathF.Exp(-x));
    public static float Relu(float x) => x > 0 ? x : (float.IsNaN(x) ? x : 0f);
    public static float QuickGelu(float x) => x / (1f + MathF.Exp(-1.702f * x));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Apply(ActivationKind kind, float x) => kind switch
    {
        ActivationKind.GeluTanh => GeluTanh(x),
        ActivationKind.GeluErf => GeluErf(x),
        ActivationKind.Silu => Silu(x),
        ActivationKind.Relu => Relu(x),
        ActivationKind.QuickGelu => QuickGelu(x),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>
    /// erf to double precision: Maclaurin series for |x| &lt;= 3 (alternating terms peak near 1e2, so ~1e-14 absolute),
    /// and 1 - erfc(x) from erfc's continued fraction (evaluated bottom-up, 80 levels) beyond.
    /// </summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        if (ax <= 3.0)
        {
            double x2 = x * x, term = x, sum = x;
            for (int n = 1; n < 200; n++)
            {
                term *= -x2 / n;                  // (-1)^n x^(2n+1) / n!
                double t = term / (2 * n + 1);
                sum += t;
                if (Math.Abs(t) < 1e-17 * Math.Abs(sum)) break;
            }
            return sum * 1.1283791670955126;      // 2 / sqrt(pi)
        }
        // (x < 0 ? -1 : 1), not Math.Sign: x is not 0 or NaN here, and Math.Sign's NaN throw does not compile in ILGPU kernels.
        double sign = x < 0 ? -1.0 : 1.0;
        if (ax > 27) return sign;
        // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
        double f = ax;
        for (int n = 80; n >= 1; n--) f = ax + (n * 0.5) / f;
        double erfc = Math.Exp(-ax * ax) / 1.7724538509055159 / f;
        return sign * (1.0 - erfc);
    }
}
