using System.Numerics;
using Engine.Loader;
using Engine.Runtime;
using Engine.Training;

namespace Engine.Interp.Gradients;

/// <summary>
/// A loaded model in the training engine's parameter layout (<see cref="Checkpoint.FromModel{T}"/>: every family the
/// loader binds), for the gradient-based methods: one forward pass of a sequence (optionally editing activations as a
/// hook would), then one backward pass from a metric of the last position's logits, keeping the gradients of the
/// activations asked for. F32 runs on the engine's kernels; F64 is the reference precision. Activations and gradients
/// come back as double arrays in TransformerLens layout ([T, ...], pattern [H, T, T]).
/// </summary>
public sealed class GradientModel
{
    readonly IEngine _e;
    public ModelConfig Config { get; }
    public Precision Precision { get; }

    GradientModel(IEngine e, ModelConfig c, Precision p) { _e = e; Config = c; Precision = p; }

    public static GradientModel Load(Model model, Precision precision = Precision.F32, int threads = 0) =>
        precision == Precision.F64
            ? new(new Engine<double>(Checkpoint.FromModel<double>(model, threads)), model.Config, precision)
            : new(new Engine<float>(Checkpoint.FromModel<float>(model, threads)), model.Config, precision);

    public static string Name(Precision p) => p == Precision.F64 ? "f64" : "f32";

    /// <summary>Runs the sequence; returns the last position's logits. <paramref name="edit"/> may change activations in place.</summary>
    public float[] Forward(int[] tokens, Action<HookKind, int, Span<double>>? edit = null) => _e.Forward(tokens, edit);

    /// <summary>The activation of the last forward pass.</summary>
    public double[] Activation(HookKind kind, int layer) => _e.Activation(kind, layer);

    /// <summary>Backward from d metric / d logits[P] = <paramref name="dLast"/> (the other rows 0), keeping the gradients of <paramref name="keep"/>.</summary>
    public void Backward(double[] dLast, IReadOnlySet<HookKind> keep) => _e.Backward(dLast, keep);

    /// <summary>A gradient kept by the last backward pass.</summary>
    public double[] Gradient(HookKind kind, int layer) => _e.Gradient(kind, layer);

    /// <summary>Value of a metric of the last logits row and its gradient with respect to that row (computed in double).</summary>
    public static (double Value, double[] Grad) Metric(ReadOnlySpan<float> last, OutputMetric metric, int target, int wrong = -1)
    {
        int V = last.Length;
        var g = new double[V];
        switch (metric)
        {
            case OutputMetric.Logit:
                g[target] = 1;
                return (last[target], g);
            case OutputMetric.LogitDiff:
                g[target] += 1; g[wrong] -= 1;
                return ((double)last[target] - last[wrong], g);
            case OutputMetric.Prob:
            case OutputMetric.LogProb:
            {
                double lse = InterpMath.LogSumExp(last);
                double lp = last[target] - lse, p = Math.Exp(lp);
                for (int i = 0; i < V; i++) g[i] = -Math.Exp(last[i] - lse);
                g[target] += 1;
                if (metric == OutputMetric.Prob) for (int i = 0; i < V; i++) g[i] *= p;
                return (metric == OutputMetric.Prob ? p : lp, g);
            }
            default: throw new ArgumentOutOfRangeException(nameof(metric));
        }
    }

    interface IEngine
    {
        float[] Forward(int[] tokens, Action<HookKind, int, Span<double>>? edit);
        double[] Activation(HookKind kind, int layer);
        void Backward(double[] dLast, IReadOnlySet<HookKind> keep);
        double[] Gradient(HookKind kind, int layer);
    }

    sealed class Engine<T>(Transformer<T> t) : IEngine where T : unmanaged, IFloatingPointIeee754<T>
    {
        int _len;

        public float[] Forward(int[] tokens, Action<HookKind, int, Span<double>>? edit)
        {
            _len = tokens.Length;
            ActivationEdit<T>? e = null;
            if (edit != null)
                e = (kind, layer, value) =>
                {
                    var tmp = new double[value.Length];
                    for (int i = 0; i < tmp.Length; i++) tmp[i] = double.CreateTruncating(value[i]);
                    edit(kind, layer, tmp);
                    for (int i = 0; i < tmp.Length; i++) value[i] = T.CreateTruncating(tmp[i]);
                };
            t.Forward(tokens, 1, tokens.Length, e);
            int V = t.Config.VocabSize;
            var last = new float[V];
            var logits = t.Logits.Slice((tokens.Length - 1) * V, V);
            for (int i = 0; i < V; i++) last[i] = float.CreateTruncating(logits[i]);
            return last;
        }

        static double[] ToDouble(ReadOnlySpan<T> s)
        {
            var r = new double[s.Length];
            for (int i = 0; i < r.Length; i++) r[i] = double.CreateTruncating(s[i]);
            return r;
        }

        public double[] Activation(HookKind kind, int layer) => ToDouble(t.Activation(kind, layer));

        public void Backward(double[] dLast, IReadOnlySet<HookKind> keep)
        {
            int V = t.Config.VocabSize;
            var d = t.DLogits;
            d.Clear();
            var row = d.Slice((_len - 1) * V, V);
            for (int i = 0; i < V; i++) row[i] = T.CreateTruncating(dLast[i]);
            t.Backward(new BackwardOptions { ParameterGradients = false, KeepGradients = keep });
        }

        public double[] Gradient(HookKind kind, int layer) => ToDouble(t.Gradient(kind, layer));
    }
}
