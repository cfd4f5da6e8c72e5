using System.Numerics;

namespace Engine.Training;

/// <summary>Optimizer and schedule settings.</summary>
public sealed record OptimizerSettings
{
    public double LearningRate { get; init; } = 1e-3;
    /// <summary>The cosine decay ends at LearningRate × MinLearningRateFraction.</summary>
    public double MinLearningRateFraction { get; init; } = 0.1;
    public int WarmupSteps { get; init; } = 100;
    public int TotalSteps { get; init; } = 1000;
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.98;
    public double Eps { get; init; } = 1e-8;
    /// <summary>Decoupled weight decay, applied to matrices (embeddings included), not to norm weights or biases.</summary>
    public double WeightDecay { get; init; } = 0.05;
    /// <summary>Gradients are scaled so their global L2 norm is at most this (0 = no clipping).</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>Linear warm-up from 0 to the peak over WarmupSteps, then cosine decay to the minimum at TotalSteps.</summary>
    public double LearningRateAt(int step)
    {
        if (step < WarmupSteps) return LearningRate * (step + 1) / WarmupSteps;
        double min = LearningRate * MinLearningRateFraction;
        double progress = Math.Clamp((step - WarmupSteps) / (double)Math.Max(1, TotalSteps - WarmupSteps), 0, 1);
        return min + 0.5 * (LearningRate - min) * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>AdamW (Loshchilov &amp; Hutter) with bias correction, global-norm clipping and the warm-up + cosine schedule.</summary>
public sealed class AdamW<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    readonly OptimizerSettings _s;
    readonly T[] _m, _v;
    readonly bool[] _decay;
    public int Step { get; private set; }

    public AdamW(ParameterLayout layout, OptimizerSettings settings)
    {
        _s = settings;
        _m = new T[layout.Total]; _v = new T[layout.Total];
        _decay = new bool[layout.Total];
        foreach (var p in layout.Params)
            if (p.Decay) Array.Fill(_decay, true, (int)p.Offset, p.Count);
    }

    /// <summary>Global L2 norm of the gradients.</summary>
    public static double GradNorm(ReadOnlySpan<T> g)
    {
        double s = 0;
        for (int i = 0; i < g.Length; i++) { double v = double.CreateTruncating(g[i]); s += v * v; }
        return Math.Sqrt(s);
    }

    /// <summary>One update: clip, then AdamW at the scheduled rate. Returns (learning rate, gradient norm before clipping).</summary>
    public (double Lr, double GradNorm) Update(T[] parameters, T[] grads)
    {
        double norm = GradNorm(grads);
        double clip = _s.ClipNorm > 0 && norm > _s.ClipNorm ? _s.ClipNorm / norm : 1;
        double lr = _s.LearningRateAt(Step);
        Step++;
        double b1 = _s.Beta1, b2 = _s.Beta2;
        double c1 = 1 - Math.Pow(b1, Step), c2 = 1 - Math.Pow(b2, Step);
        double wd = _s.WeightDecay, eps = _s.Eps;
        var m = _m; var v = _v; var decay = _decay;
        int n = parameters.Length;
        int chunks = Math.Max(1, Math.Min(Environment.ProcessorCount * 2, n / 65536));
        int per = (n + chunks - 1) / chunks;
        Parallel.For(0, chunks, ch =>
        {
            int s = ch * per, e = Math.Min(n, s + per);
            for (int i = s; i < e; i++)
            {
                double g = double.CreateTruncating(grads[i]) * clip;
                double mi = b1 * double.CreateTruncating(m[i]) + (1 - b1) * g;
                double vi = b2 * double.CreateTruncating(v[i]) + (1 - b2) * g * g;
                m[i] = T.CreateTruncating(mi); v[i] = T.CreateTruncating(vi);
                double p = double.CreateTruncating(parameters[i]);
                if (decay[i]) p -= lr * wd * p;
                p -= lr * (mi / c1) / (Math.Sqrt(vi / c2) + eps);
                parameters[i] = T.CreateTruncating(p);
            }
        });
        return (lr, norm);
    }
}
