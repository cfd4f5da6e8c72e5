using Engine.Loader;
using Engine.Runtime;

namespace Engine.Interp;

/// <summary>Small shared helpers: softmax/log-probabilities of one logits row, top-k, weight access, checks.</summary>
public static class InterpMath
{
    /// <summary>The last row of a logits block ([T, V] or [1, V]).</summary>
    public static ReadOnlySpan<float> LastRow(ReadOnlySpan<float> logits, int vocab) => logits.Slice(logits.Length - vocab, vocab);

    /// <summary>log Σ exp(x) in double.</summary>
    public static double LogSumExp(ReadOnlySpan<float> x)
    {
        double max = double.NegativeInfinity;
        foreach (var v in x) if (v > max) max = v;
        if (double.IsNegativeInfinity(max)) return max;
        double sum = 0;
        foreach (var v in x) sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }

    /// <summary>softmax(x)[id] in double.</summary>
    public static double Prob(ReadOnlySpan<float> x, int id) => Math.Exp(x[id] - LogSumExp(x));

    /// <summary>log softmax(x)[id] in double.</summary>
    public static double LogProb(ReadOnlySpan<float> x, int id) => x[id] - LogSumExp(x);

    /// <summary>
    /// Ids of the k largest values in descending order; exact ties: lower id first (NaN never chosen).
    /// O(V·k) worst case, O(V) typically: meant for small k.
    /// </summary>
    public static int[] TopK(ReadOnlySpan<float> x, int k)
    {
        k = Math.Min(k, x.Length);
        var ids = new int[k];
        var vals = new float[k];
        int n = 0;
        for (int i = 0; i < x.Length; i++)
        {
            float v = x[i];
            if (float.IsNaN(v)) continue;
            // strictly greater than the current k-th (ties keep the earlier, lower id)
            if (n == k && !(v > vals[k - 1])) continue;
            int j = n < k ? n++ : k - 1;
            while (j > 0 && v > vals[j - 1]) { vals[j] = vals[j - 1]; ids[j] = ids[j - 1]; j--; }
            vals[j] = v; ids[j] = i;
        }
        return n == k ? ids : ids[..n];
    }

    /// <summary>0-based rank of x[id] (0 = most probable): values above it, plus equal values with a lower id.</summary>
    public static int Rank(ReadOnlySpan<float> x, int id)
    {
        float v = x[id];
        int r = 0;
        for (int i = 0; i < x.Length; i++)
            if (x[i] > v || (x[i] == v && i < id)) r++;
        return r;
    }

    /// <summary>Element W[o, i] of a projection y = x W^T + b (o &lt; Out, i &lt; In), widened to float, whatever the layout/dtype.</summary>
    public static float Weight(Linear w, int o, int i) =>
        w.InputMajor ? w.W.Get((long)i * w.Out + o) : w.W.Get((long)o * w.In + i);

    /// <summary>Row id of the unembedding ([V, D]) widened to double.</summary>
    public static double[] UnembedRow(Model model, int id)
    {
        var u = model.Weights.Unembed;
        var row = new double[u.In];
        for (int i = 0; i < u.In; i++) row[i] = Weight(u, id, i);
        return row;
    }

    /// <summary>Final norm (statistics recomputed per row) then unembedding, with the session's own kernels. x [rows, D] → logits [rows, V].</summary>
    public static void FinalNormUnembed(Session s, ReadOnlySpan<float> x, int rows, Span<float> logits)
    {
        var c = s.Config;
        var w = s.Model.Weights;
        var y = new float[rows * c.DModel];
        var scale = new float[rows];
        if (c.Norm == NormKind.LayerNorm) s.Kernels.LayerNorm(x, rows, c.DModel, w.FinalNormWeight, w.FinalNormBias, c.NormEps, y, scale);
        else s.Kernels.RmsNorm(x, rows, c.DModel, w.FinalNormWeight, c.NormWeightOffset, c.NormEps, y, scale);
        s.Kernels.MatMul(y, rows, w.Unembed, logits);
    }

    /// <summary>Checks a token id against the vocabulary; the message names the argument.</summary>
    public static void CheckToken(ModelConfig c, int id, string argument)
    {
        if ((uint)id >= (uint)c.VocabSize)
            throw new UsageException($"{argument}: token id {id} is out of range (vocabulary size {c.VocabSize})");
    }

    /// <summary>Checks the prompt: non-empty, ids in range.</summary>
    public static void CheckTokens(Session s, ReadOnlySpan<int> tokens, string argument)
    {
        if (tokens.Length == 0) throw new UsageException($"{argument}: empty input: at least one token is needed");
        s.Model.ValidateTokens(tokens, argument);
        if (tokens.Length > s.Capacity)
            throw new UsageException($"{argument}: {tokens.Length} tokens exceed the session's capacity of {s.Capacity} positions");
    }

    /// <summary>Runs tokens with the given extra hooks (removed afterwards); returns a copy of the last logits row.</summary>
    public static float[] RunLast(Session s, ReadOnlySpan<int> tokens, IEnumerable<(HookKind Kind, int Layer, HookFn Fn)> hooks) =>
        RunLastWith(s, tokens, hooks.Select(h => (Func<IDisposable>)(() => s.Hooks.Add(h.Kind, h.Layer, h.Fn))));

    /// <summary>
    /// Runs tokens with the given edits registered as interventions (removed afterwards; on a GPU backend they run as
    /// kernels, no tap is copied to the host); returns a copy of the last logits row.
    /// </summary>
    public static float[] RunLastEdited(Session s, ReadOnlySpan<int> tokens, IEnumerable<EditHook> edits) =>
        RunLastWith(s, tokens, edits.Select(e => (Func<IDisposable>)(() => e.Register(s))));

    static float[] RunLastWith(Session s, ReadOnlySpan<int> tokens, IEnumerable<Func<IDisposable>> registrations)
    {
        var handles = new List<IDisposable>();
        try
        {
            foreach (var register in registrations) handles.Add(register());
            return LastRow(s.Run(tokens), s.Config.VocabSize).ToArray();
        }
        finally
        {
            foreach (var h in handles) h.Dispose();
        }
    }
}
