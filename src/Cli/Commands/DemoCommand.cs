using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>
/// engine demo: builds (if missing) a small random-weight GPT-2-shaped model under weights/, runs a prompt through it
/// with the real GPT-2 tokenizer, prints the next-token predictions and a per-layer summary read from the taps.
/// </summary>
public static class DemoCommand
{
    public const string DefaultFolder = "weights/demo-gpt2";

    public static CommandSpec Spec { get; } = new("demo", "build (if missing) and run a small demo model offline: predictions and a per-layer summary",
        "engine demo [--prompt TEXT] [--model-dir DIR] [--backend B]",
        [new("--prompt", "text to run", ValueName: "TEXT", Default: "The Eiffel Tower is located in the city of"),
         new("--model-dir", "where the demo model lives (built there if missing)", ValueName: "DIR", Default: DefaultFolder),
         Common.BackendOption], Run);

    static int Run(CliArgs a)
    {
        string folder = a.Get("--model-dir")!;
        var o = a.Out;
        if (DemoModel.EnsureExists(folder)) o.WriteLine($"built the demo model in {folder}");
        o.WriteLine($"NOTE: the demo model's weights are RANDOM (GPT-2 architecture, {DemoModel.Shape.Layers} layers, d_model {DemoModel.Shape.DModel}, " +
                    "deterministic seed): the predictions below are meaningless; the demo shows the pipeline, not a trained model.");
        using var model = Model.Load(folder);
        var tok = Common.Tokenizer(model) ?? throw new UsageException($"{folder}: no tokenizer");
        string prompt = a.Get("--prompt")!;
        var tokens = tok.Encode(prompt);
        if (tokens.Length == 0) throw new UsageException("--prompt: the text gives no tokens");
        if (tokens.Length > model.Config.ContextLength) throw new UsageException($"--prompt: {tokens.Length} tokens is longer than the demo model's context of {model.Config.ContextLength}");
        using var session = Common.OpenSession(a, model, tokens.Length);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (logits, cache) = session.RunWithCache(tokens, n => n.EndsWith("hook_resid_post") || n.EndsWith("hook_pattern"));
        double ms = sw.Elapsed.TotalMilliseconds;
        var c = model.Config;
        int V = c.VocabSize, T = tokens.Length, D = c.DModel;
        o.WriteLine();
        o.WriteLine($"prompt   {RunCommand.Quote(prompt)} -> {T} tokens (GPT-2 BPE): {string.Join(" ", tokens.Select(t => RunCommand.Quote(tok.TokenText(t))))}");
        o.WriteLine($"backend  {session.Kernels.Name}, forward pass with taps {ms:F1} ms");
        o.WriteLine();
        var last = logits.AsSpan((T - 1) * V, V);
        var probs = Common.Softmax(last);
        o.WriteLine("next-token predictions:");
        foreach (var id in Common.TopK(last, 5))
            o.WriteLine($"  {probs[id] * 100,9:F5} %  {id,6}  {RunCommand.Quote(tok.TokenText(id))}");
        o.WriteLine();
        o.WriteLine("per layer, at the last position:");
        o.WriteLine("  layer  |resid_post|  logit-lens top token      most-attended earlier token (head)");
        var lensIn = new float[D];
        var lensNorm = new float[D];
        var lensLogits = new float[V];
        var scale = new float[1];
        for (int l = 0; l < c.NLayers; l++)
        {
            var resid = cache[HookPoints.Name(HookKind.ResidPost, l)].Data.AsSpan((T - 1) * D, D);
            double norm = Math.Sqrt(resid.ToArray().Sum(x => (double)x * x));
            resid.CopyTo(lensIn);
            // logit lens: final norm recomputed from this layer's residual, then the unembedding
            if (c.Norm == NormKind.LayerNorm) session.Kernels.LayerNorm(lensIn, 1, D, model.Weights.FinalNormWeight, model.Weights.FinalNormBias, c.NormEps, lensNorm, scale);
            else session.Kernels.RmsNorm(lensIn, 1, D, model.Weights.FinalNormWeight, c.NormWeightOffset, c.NormEps, lensNorm, scale);
            session.Kernels.MatMul(lensNorm, 1, model.Weights.Unembed, lensLogits);
            int lensTop = Session.ArgMax(lensLogits);
            var pattern = cache[HookPoints.Name(HookKind.Pattern, l)].Data;   // [H, T, T]
            int bestHead = 0, bestSrc = 0; float bestW = -1;
            for (int h = 0; h < c.NHeads; h++)
                for (int j = 0; j < T - 1; j++)
                {
                    float wgt = pattern[(h * T + (T - 1)) * T + j];
                    if (wgt > bestW) { bestW = wgt; bestHead = h; bestSrc = j; }
                }
            string attended = T > 1 ? $"{RunCommand.Quote(tok.TokenText(tokens[bestSrc]))} @{bestSrc} ({bestW:F2}, head {bestHead})" : "-";
            o.WriteLine($"  {l,5}  {norm,12:F3}  {RunCommand.Quote(tok.TokenText(lensTop)),-24}  {attended}");
        }
        o.WriteLine();
        o.WriteLine("next: engine info --model " + folder + "   |   engine run --model " + folder + " --prompt \"...\" --json");
        return 0;
    }
}
