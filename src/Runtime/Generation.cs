namespace Engine.Runtime;

/// <summary>How the next token is chosen. Temperature 0 = greedy (exact ties: the lowest id).</summary>
public sealed record SamplingOptions
{
    public float Temperature { get; init; }
    /// <summary>Keep only the K most likely tokens (0 = all).</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose probability reaches P (1 = all).</summary>
    public float TopP { get; init; } = 1f;
    public int Seed { get; init; } = 1;
    public bool StopAtEos { get; init; } = true;
}

public sealed partial class Session
{
    /// <summary>
    /// Generates up to maxNewTokens after the prompt through the KV cache (the prompt in one forward call, then one token
    /// per call). Stops at an end-of-sequence id when asked (the EOS token is included in the result) or at the capacity.
    /// </summary>
    public List<int> Generate(ReadOnlySpan<int> prompt, int maxNewTokens, SamplingOptions? sampling = null)
    {
        sampling ??= new SamplingOptions();
        if (maxNewTokens < 0) throw new Loader.UsageException($"--max-new-tokens: {maxNewTokens} must not be negative");
        if (sampling.Temperature < 0 || float.IsNaN(sampling.Temperature)) throw new Loader.UsageException($"--temperature: {sampling.Temperature} must be >= 0");
        if (sampling.TopK < 0) throw new Loader.UsageException($"--top-k: {sampling.TopK} must be >= 0");
        if (!(sampling.TopP > 0 && sampling.TopP <= 1)) throw new Loader.UsageException($"--top-p: {sampling.TopP} must be in (0, 1]");
        var rng = new Random(sampling.Seed);
        var output = new List<int>(maxNewTokens);
        if (maxNewTokens == 0) return output;
        Reset();
        var logits = Forward(prompt);
        int V = Config.VocabSize;
        Span<int> one = stackalloc int[1];
        float[] probs = new float[V];
        int[] order = new int[V];
        while (true)
        {
            var last = logits.Slice(logits.Length - V, V);
            int next = sampling.Temperature == 0 ? ArgMax(last) : Sample(last, sampling, rng, probs, order);
            output.Add(next);
            if (output.Count >= maxNewTokens) break;
            if (sampling.StopAtEos && Config.EosTokenIds.Contains(next)) break;
            if (Length >= Capacity) break;
            one[0] = next;
            logits = Forward(one);
        }
        return output;
    }

    /// <summary>Index of the largest value; exact ties go to the lowest index; NaN never wins.</summary>
    public static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        float bestValue = float.NegativeInfinity;
        bool found = false;
        for (int i = 0; i < x.Length; i++)
            if (!float.IsNaN(x[i]) && (!found || x[i] > bestValue)) { best = i; bestValue = x[i]; found = true; }
        return best;
    }

    static int Sample(ReadOnlySpan<float> logits, SamplingOptions s, Random rng, float[] probs, int[] order)
    {
        int V = logits.Length;
        float max = float.NegativeInfinity;
        for (int i = 0; i < V; i++) if (logits[i] > max) max = logits[i];
        double sum = 0;
        for (int i = 0; i < V; i++) { probs[i] = MathF.Exp((logits[i] - max) / s.Temperature); sum += probs[i]; order[i] = i; }
        for (int i = 0; i < V; i++) probs[i] = (float)(probs[i] / sum);
        // Most likely first; ties by id so that sampling is reproducible.
        Array.Sort(order, (a, b) => probs[b] != probs[a] ? probs[b].CompareTo(probs[a]) : a.CompareTo(b));
        int keep = s.TopK > 0 ? Math.Min(s.TopK, V) : V;
        if (s.TopP < 1f)
        {
            double cum = 0;
            for (int i = 0; i < keep; i++) { cum += probs[order[i]]; if (cum >= s.TopP) { keep = i + 1; break; } }
        }
        double total = 0;
        for (int i = 0; i < keep; i++) total += probs[order[i]];
        double r = rng.NextDouble() * total;
        for (int i = 0; i < keep; i++) { r -= probs[order[i]]; if (r <= 0) return order[i]; }
        return order[keep - 1];
    }
}
