using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine generate: continue a prompt through the KV cache.</summary>
public static class GenerateCommand
{
    public static CommandSpec Spec { get; } = new("generate", "continue a prompt (greedy, or sampled with a seed), stopping at EOS",
        "engine generate --model M (--prompt TEXT | --tokens IDS) [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--no-stop] [--json]",
        [Common.ModelOption, .. Common.InputOptions,
         new("--max-new-tokens", "tokens to generate at most", ValueName: "N", Default: "32"),
         new("--temperature", "0 = greedy (ties: lowest id); > 0 samples", ValueName: "T", Default: "0"),
         new("--top-k", "sample among the K most likely tokens (0 = all)", ValueName: "K", Default: "0"),
         new("--top-p", "sample among the most likely tokens reaching probability P", ValueName: "P", Default: "1"),
         new("--seed", "random seed of the sampler", ValueName: "S", Default: "1"),
         new("--no-stop", "do not stop at the end-of-sequence token", IsFlag: true),
         Common.BackendOption, Common.CheckFiniteOption, Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        int maxNew = a.Int("--max-new-tokens", 32, 0, 1_000_000);
        var sampling = new SamplingOptions
        {
            Temperature = (float)a.Double("--temperature", 0),
            TopK = a.Int("--top-k", 0, 0),
            TopP = (float)a.Double("--top-p", 1),
            Seed = a.Int("--seed", 1),
            StopAtEos = !a.Flag("--no-stop"),
        };
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        using var session = Common.OpenSession(a, model, Math.Min(model.Config.ContextLength, tokens.Length + maxNew), allLogits: false, skipUnusedRows: true);
        using var watch = Common.WatchFinite(a, session);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var output = session.Generate(tokens, maxNew, sampling);
        double seconds = sw.Elapsed.TotalSeconds;
        var tok = Common.Tokenizer(model);
        // Decode prompt and continuation together (SentencePiece drops a leading space when a piece is decoded alone).
        string? full = tok?.Decode([.. tokens, .. output]);
        string? promptText = tok?.Decode(tokens);
        string? text = full == null ? null : full.StartsWith(promptText!, StringComparison.Ordinal) ? full[promptText!.Length..] : tok!.Decode(output.ToArray());
        bool hitContext = output.Count < maxNew && !(output.Count > 0 && model.Config.EosTokenIds.Contains(output[^1]) && sampling.StopAtEos);
        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("generate", model, session.Kernels.Name);
                w.Ints("prompt_tokens", tokens);
                w.Ints("tokens", output);
                if (text != null) w.WriteString("text", text);
                w.WriteString("stop_reason", output.Count == maxNew ? "max_new_tokens" : hitContext ? "context" : "eos");
                w.WriteNumber("seconds", seconds);
                w.CheckFiniteJson(watch);
                w.WriteEndObject();
            });
            watch?.ThrowIfFound();
            return 0;
        }
        if (full != null) a.Out.WriteLine(full.TrimEnd());
        a.Out.WriteLine($"tokens: {string.Join(",", output)}");
        if (hitContext) a.Out.WriteLine($"(stopped: the context of {session.Capacity} positions is full)");
        a.Err.WriteLine($"{output.Count} tokens in {seconds:F2} s");
        watch?.ThrowIfFound();
        return 0;
    }
}
