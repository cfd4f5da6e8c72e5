using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// Rotary position embedding in HF's rotate_half convention: pairs (i, i + RotaryDim/2), angle p * invFreq[i].
/// Holds the inverse frequencies (double) and float cos/sin tables [MaxPositions, RotaryDim/2] computed in double.
/// </summary>
public sealed class RopeTable
{
    public int RotaryDim { get; }
    public int MaxPositions { get; }
    public double[] InverseFrequencies { get; }
    public float[] Cos { get; }
    public float[] Sin { get; }

    public RopeTable(int rotaryDim, double theta, int maxPositions, RopeScaling? scaling = null)
    {
        RotaryDim = rotaryDim;
        MaxPositions = maxPositions;
        InverseFrequencies = ComputeInverseFrequencies(rotaryDim, theta, scaling);
        int half = rotaryDim / 2;
        Cos = new float[(long)maxPositions * half > int.MaxValue ? throw new ArgumentException("RoPE table too large") : maxPositions * half];
        Sin = new float[maxPositions * half];
        for (int p = 0; p < maxPositions; p++)
            for (int i = 0; i < half; i++)
            {
                double a = p * InverseFrequencies[i];
                Cos[p * half + i] = (float)Math.Cos(a);
                Sin[p * half + i] = (float)Math.Sin(a);
            }
    }

    public static RopeTable? For(ModelConfig c, int maxPositions) =>
        c.Positions == PositionKind.Rotary ? new RopeTable(c.RotaryDim, c.RopeTheta, maxPositions, c.RopeScaling) : null;

    /// <summary>invFreq[i] = theta^(-2i/rotDim), adjusted by linear or llama3 scaling as HF does.</summary>
    public static double[] ComputeInverseFrequencies(int rotaryDim, double theta, RopeScaling? scaling)
    {
        int half = rotaryDim / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++) inv[i] = Math.Pow(theta, -2.0 * i / rotaryDim);
        if (scaling == null) return inv;
        if (scaling.Type == "linear")
        {
            for (int i = 0; i < half; i++) inv[i] /= scaling.Factor;
        }
        else if (scaling.Type == "llama3")
        {
            double lowWavelen = scaling.OriginalContext / scaling.LowFreqFactor;
            double highWavelen = scaling.OriginalContext / scaling.HighFreqFactor;
            for (int i = 0; i < half; i++)
            {
                double wavelen = 2 * Math.PI / inv[i];
                if (wavelen < highWavelen) continue;                                   // high frequencies kept
                if (wavelen > lowWavelen) { inv[i] /= scaling.Factor; continue; }      // low frequencies scaled
                double smooth = (scaling.OriginalContext / wavelen - scaling.LowFreqFactor) / (scaling.HighFreqFactor - scaling.LowFreqFactor);
                inv[i] = (1 - smooth) * inv[i] / scaling.Factor + smooth * inv[i];
            }
        }
        return inv;
    }
}
