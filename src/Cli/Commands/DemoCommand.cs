using System.Globalization;
using System.Text.Json;
using Engine.Interp;
using Engine.Loader;
using Engine.Runtime;
using Engine.Training;

namespace Engine.Cli.Commands;

/// <summary>
/// engine demo: runs the trained demo model committed under weights/demo (recipe `demo` of `engine train`: facts,
/// arithmetic, indirect-object identification and induction over a word-level vocabulary) and shows what the
/// interpretability methods find in it: the logit lens on a fact, a causal trace of its subject, and the ablation of
/// the induction heads found from their attention. --random: the previous demo, a random-weight GPT-2-shaped model
/// built under weights/demo-gpt2, run through the pipeline (predictions and a per-layer summary read from the taps).
/// </summary>
public static class DemoCommand
{
    public const string DefaultFolder = "weights/demo";
    public const string RandomFolder = "weights/demo-gpt2";
    const string FactPrompt = "Smith lives in";
    const string RandomPrompt = "The Eiffel Tower is located in the city of";

    public static CommandSpec Spec { get; } = new("demo",
        "run the trained demo model: predictions, logit lens on a fact, causal trace of its subject, induction-head ablation",
        "engine demo [--prompt TEXT] [--subject TEXT] [--model-dir DIR] [--random] [--backend B]\n\n" +
        "The default model is weights/demo (trained by `engine train --recipe demo --seed 1`; see weights/README.md),\n" +
        "looked up in the working directory and its parents. --prompt is a fact's prompt (\"SUBJECT RELATION\", e.g.\n" +
        "\"Garcia plays the\"); --subject the words the causal trace corrupts (default: the prompt's first word).\n" +
        "--random: the random-weight GPT-2-shaped model of earlier versions (built in --model-dir, default\n" +
        $"{RandomFolder}, when missing): its predictions are meaningless; it shows the pipeline.",
        [new("--prompt", $"text to run (default \"{FactPrompt}\"; with --random \"{RandomPrompt}\")", ValueName: "TEXT"),
         new("--subject", "the subject words of --prompt for the causal trace (default: its first word)", ValueName: "TEXT"),
         new("--model-dir", $"the model folder (default {DefaultFolder}; with --random {RandomFolder}, built there if missing)", ValueName: "DIR"),
         new("--random", "run the random-weight GPT-2-shaped model instead (the pipeline only)", IsFlag: true),
         Common.BackendOption], Run);

    static int Run(CliArgs a)
    {
        if (a.Flag("--random")) return RunRandom(a, a.Get("--model-dir") ?? RandomFolder);
        string folder = a.Get("--model-dir") ?? FindDefault()
            ?? throw new UsageException($"engine demo: no {DefaultFolder} in the working directory or its parents; run from the repository, " +
                                        $"pass --model-dir, or train it: engine train --recipe demo --out {DefaultFolder}");
        if (!Directory.Exists(folder)) throw new UsageException($"--model-dir: '{folder}' is not a folder");
        using var model = Model.Load(folder);
        if (TrainedRecipe(folder) != "demo")
        {
            a.Out.WriteLine($"NOTE: {folder} was not trained by the demo recipe: showing the generic per-layer summary only.");
            return Summary(a, model, folder, a.Get("--prompt") ?? RandomPrompt);
        }
        return RunTrained(a, model, folder);
    }

    /// <summary>weights/demo in the working directory or one of its parents (null if none).</summary>
    static string? FindDefault()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir != null; dir = dir.Parent)
        {
            string p = Path.Combine(dir.FullName, DefaultFolder);
            if (File.Exists(Path.Combine(p, "config.json"))) return Path.GetRelativePath(Directory.GetCurrentDirectory(), p);
        }
        return null;
    }

    /// <summary>The recipe in config.json's engine_training block (null when absent or unreadable).</summary>
    static string? TrainedRecipe(string folder)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "config.json")));
            return doc.RootElement.TryGetProperty("engine_training", out var t) && t.TryGetProperty("recipe", out var r) ? r.GetString() : null;
        }
        catch (Exception e) when (e is IOException or JsonException or InvalidOperationException) { return null; }
    }

    static string Q(string s) => RunCommand.Quote(s);
    static string Pct(double v) => (v * 100).ToString("F1", CultureInfo.InvariantCulture) + "%";

    static int RunTrained(CliArgs a, Model model, string folder)
    {
        var o = a.Out;
        var inv = CultureInfo.InvariantCulture;
        var tok = model.Tokenizer ?? throw new ModelFormatException($"{folder}: the demo model has no tokenizer.json");
        var c = model.Config;
        using var session = Common.OpenSession(a, model, c.ContextLength);
        var text = InterpCommands.TokenTexts(model);

        // 1. the model and its training record
        o.WriteLine($"demo model {folder}: {c.ModelType}, {c.NLayers} layers, d_model {c.DModel}, {c.NHeads} heads, d_mlp {c.DMlp}, " +
                    $"vocabulary {c.VocabSize} (word-level), trained by engine train");
        ulong seed = 1;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, Trainer.ReportFile)));
            var r = doc.RootElement;
            seed = r.GetProperty("seed").GetUInt64();
            var timing = r.GetProperty("timing");
            int steps = r.GetProperty("optimizer").GetProperty("steps").GetInt32(), threads = timing.GetProperty("threads").GetInt32();
            double minutes = timing.GetProperty("wall_seconds").GetDouble() / 60;
            string acc = string.Join(", ", r.GetProperty("held_out_accuracy").EnumerateObject().Select(p => $"{p.Name} {Pct(p.Value.GetDouble())}"));
            o.WriteLine(string.Create(inv, $"  recipe demo, seed {seed}: {steps} steps in {minutes:F1} min on {threads} threads; held-out accuracy: {acc}"));
        }
        catch (Exception e) when (e is IOException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            o.WriteLine($"  ({Trainer.ReportFile} missing or unreadable: {e.Message})");
        }

        // 2. one prompt of each task, greedy
        o.WriteLine();
        o.WriteLine("greedy completions (one prompt per task of the recipe):");
        var indEx = TextTasks.Get("induction").HeldOut(TextTasks.Tokenizer, seed).Examples[1];
        int indK = indEx.Positions.Length / 2;
        string indPrompt = tok.Decode(indEx.Tokens[..(indEx.Positions[indK] + 1)], skipSpecialTokens: true);
        string[] prompts = [FactPrompt, "23+45=", "When Mary and John went to the store, John gave a drink to", indPrompt];
        foreach (var p in prompts)
        {
            var ids = tok.Encode(p);
            // the induction prompt: as many words as the repeated span has left
            var gen = session.Generate(ids, p == indPrompt ? indEx.Positions.Length - indK : 4, new SamplingOptions { Temperature = 0 });
            int stop = gen.FindIndex(t => text(t) is "." or "<|bos|>");
            var shown = stop >= 0 ? gen.Take(stop + 1) : gen;
            o.WriteLine($"  {Q(p)} -> {Q(string.Concat(shown.Select(text)))}");
        }

        // 3. logit lens on a fact
        string prompt = a.Get("--prompt") ?? FactPrompt;
        var tokens = tok.Encode(prompt);
        if (tokens.Length < 2) throw new UsageException("--prompt: the text gives no tokens");
        if (tokens.Length > c.ContextLength) throw new UsageException($"--prompt: {tokens.Length} tokens is longer than the context of {c.ContextLength}");
        var logits = session.Run(tokens);
        var last = InterpMath.LastRow(logits, c.VocabSize);
        int answer = Session.ArgMax(last);
        var probs = Common.Softmax(last);
        o.WriteLine();
        o.WriteLine($"logit lens on the fact {Q(prompt)} -> {Q(text(answer))} (p = {probs[answer]:F3}): the last position's residual stream after each");
        o.WriteLine("layer, read through the final norm and the unembedding (LogitLens.Run):");
        var lens = LogitLens.Run(session, tokens, 3, answer);
        int P = tokens.Length - 1;
        o.WriteLine($"  layer  top-3 tokens (probability)                         p({text(answer).Trim()})  rank");
        for (int l = 0; l < c.NLayers; l++)
        {
            var tops = string.Join("  ", Enumerable.Range(0, lens.K).Select(k => string.Create(inv, $"{Q(text(lens.TopIds[l][P][k]))} {lens.TopProbs[l][P][k]:F3}")));
            o.WriteLine(string.Create(inv, $"  {l,5}  {tops,-52} {lens.TargetProb![l, P],8:F3}  {lens.TargetRank![l, P],4}"));
        }

        // 4. causal trace of the subject
        string subject = a.Get("--subject") ?? tok.Decode([tokens[1]], skipSpecialTokens: true).Trim();
        var subjectPos = SubjectLocator.Find(tok, tokens, subject);
        var noise = TraceNoise.Generate(model, subjectPos.Length, subjectPos.Select(i => tokens[i]).ToArray());
        var trace = CausalTrace.Run(session, tokens, subjectPos, noise, answer, new TraceOptions { Window = 1 });
        o.WriteLine();
        o.WriteLine(string.Create(inv, $"causal trace of the subject {Q(subject)} (CausalTrace.Run, ROME: the subject's embedding + noise 3 x std, {noise.Samples} samples;"));
        o.WriteLine(string.Create(inv, $"one state restored at a time, window 1): p({text(answer).Trim()}) clean {trace.CleanProb:F3}, corrupted {trace.CorruptProb:F3}"));
        var pos = InterpCommands.PositionLabel(tokens, text);
        foreach (var (name, grid) in new[] { ("residual stream (resid_post)", trace.Resid!), ("MLP output", trace.Mlp!), ("attention output", trace.Attn!) })
        {
            o.WriteLine($"  restoring the {name}: p({text(answer).Trim()})");
            var sw = new StringWriter();
            InterpCommands.Table(sw, grid, "  layer", l => $"  L{l}", t => pos(t) + (subjectPos.Contains(t) ? "*" : ""), "F3");
            o.Write(sw.ToString());
        }
        var (bl, bt) = ArgMax(trace.Mlp!);
        var (rl, rt) = ArgMax(trace.Resid!, subjectPos);
        o.WriteLine(string.Create(inv, $"  strongest MLP restoration: layer {bl} at {pos(bt)} ({trace.Mlp![bl, bt]:F3}); at the subject, the residual after layer {rl} ({trace.Resid![rl, rt]:F3})"));

        // 5. induction heads: find them from their attention, ablate them
        var task = TextTasks.Get("induction").HeldOut(TextTasks.Tokenizer, seed);
        task = task with { Examples = task.Examples.Take(48).ToArray() };
        var scores = GroundTruth.InductionScores(session, task);
        var heads = (from l in Enumerable.Range(0, c.NLayers) from h in Enumerable.Range(0, c.NHeads) orderby scores[l][h] descending select (l, h)).ToArray();
        var (il, ih) = heads[0];
        var inductionHeads = heads.Where(x => scores[x.l][x.h] >= 0.3).ToArray();
        if (inductionHeads.Length == 0) inductionHeads = [heads[0]];
        o.WriteLine();
        o.WriteLine($"induction: {task.Examples.Count} held-out word sequences with a repeated span, e.g.");
        o.WriteLine($"  {Q(task.Examples[0].Text ?? "")}");
        o.WriteLine("  attention from each word of the repeat to the word after its first occurrence (GroundTruth.InductionScores):");
        var scoreGrid = new Grid(c.NLayers, c.NHeads);
        for (int l = 0; l < c.NLayers; l++) for (int h = 0; h < c.NHeads; h++) scoreGrid[l, h] = scores[l][h];
        var tw = new StringWriter();
        InterpCommands.Table(tw, scoreGrid, "  layer", l => $"  L{l}", h => $"H{h}", "F3");
        o.Write(tw.ToString());
        double baseAcc = GroundTruth.Accuracy(session, task);
        double oneAcc = GroundTruth.Accuracy(session, task, GroundTruth.ZeroHeads(c, [(il, ih)]));
        double allAcc = GroundTruth.Accuracy(session, task, GroundTruth.ZeroHeads(c, inductionHeads));
        var (ll, lh) = heads[^1];
        double ctrlAcc = GroundTruth.Accuracy(session, task, GroundTruth.ZeroHeads(c, [(ll, lh)]));
        o.WriteLine($"  accuracy on the repeated half: {Pct(baseAcc)}; zero-ablating the top induction head L{il}H{ih}: {Pct(oneAcc)}; " +
                    $"the heads scoring >= 0.3 ({string.Join(" ", inductionHeads.Select(x => $"L{x.l}H{x.h}"))}): {Pct(allAcc)}; " +
                    $"the lowest-scoring head L{ll}H{lh} (control): {Pct(ctrlAcc)}");
        // the per-head sweep of the library on one example: the induction head should rank first
        var ex = task.Examples[0];
        int k0 = ex.Positions.Length / 2;
        var sweep = HeadAblation.Run(session, ex.Tokens[..(ex.Positions[k0] + 1)], ex.Expected[k0], new AblationOptions { Metric = OutputMetric.LogProb });
        var rank = sweep.Ranked.Take(3).Select(e => string.Create(inv, $"{e.Label} {e.Delta:+0.00;-0.00;0.00}"));
        o.WriteLine($"  HeadAblation.Run on the example, predicting {Q(text(ex.Expected[k0]))}: largest changes of log p: {string.Join(", ", rank)}");

        o.WriteLine();
        o.WriteLine("next:");
        o.WriteLine($"  engine trace --model {folder} --prompt \"{prompt}\" --subject \"{subject}\" --window 1 --out trace-report");
        o.WriteLine($"  engine attrib-patch --model {folder} --clean-prompt \"Smith lives in\" --corrupt-prompt \"Garcia lives in\" --compare --out attrib-report");
        o.WriteLine("  weights/README.md: how the model was trained, its accuracies, and the numbers the tests check");
        return 0;
    }

    static (int Row, int Col) ArgMax(Grid g, int[]? cols = null)
    {
        (int, int) best = (0, cols?[0] ?? 0);
        double bv = double.NegativeInfinity;
        for (int r = 0; r < g.Shape[0]; r++)
            for (int col = 0; col < g.Shape[1]; col++)
                if ((cols == null || cols.Contains(col)) && g[r, col] > bv) { bv = g[r, col]; best = (r, col); }
        return best;
    }

    static int RunRandom(CliArgs a, string folder)
    {
        var o = a.Out;
        if (DemoModel.EnsureExists(folder)) o.WriteLine($"built the random-weight demo model in {folder}");
        o.WriteLine($"NOTE: this model's weights are RANDOM (GPT-2 architecture, {DemoModel.Shape.Layers} layers, d_model {DemoModel.Shape.DModel}, " +
                    "deterministic seed): the predictions below are meaningless; it shows the pipeline. Without --random, engine demo runs the trained model.");
        using var model = Model.Load(folder);
        return Summary(a, model, folder, a.Get("--prompt") ?? RandomPrompt);
    }

    /// <summary>Next-token predictions and a per-layer summary read from the taps (any model with a tokenizer).</summary>
    static int Summary(CliArgs a, Model model, string folder, string prompt)
    {
        var o = a.Out;
        var tok = Common.Tokenizer(model) ?? throw new UsageException($"{folder}: no tokenizer");
        var tokens = tok.Encode(prompt);
        if (tokens.Length == 0) throw new UsageException("--prompt: the text gives no tokens");
        if (tokens.Length > model.Config.ContextLength) throw new UsageException($"--prompt: {tokens.Length} tokens is longer than the model's context of {model.Config.ContextLength}");
        using var session = Common.OpenSession(a, model, tokens.Length);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var (logits, cache) = session.RunWithCache(tokens, n => n.EndsWith("hook_resid_post") || n.EndsWith("hook_pattern"));
        double ms = sw.Elapsed.TotalMilliseconds;
        var c = model.Config;
        int V = c.VocabSize, T = tokens.Length, D = c.DModel;
        o.WriteLine();
        o.WriteLine($"prompt   {Q(prompt)} -> {T} tokens: {string.Join(" ", tokens.Select(t => Q(tok.TokenText(t))))}");
        o.WriteLine($"backend  {session.Kernels.Name}, forward pass with taps {ms:F1} ms");
        o.WriteLine();
        var last = logits.AsSpan((T - 1) * V, V);
        var probs = Common.Softmax(last);
        o.WriteLine("next-token predictions:");
        foreach (var id in Common.TopK(last, 5))
            o.WriteLine($"  {probs[id] * 100,9:F5} %  {id,6}  {Q(tok.TokenText(id))}");
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
            string attended = T > 1 ? $"{Q(tok.TokenText(tokens[bestSrc]))} @{bestSrc} ({bestW:F2}, head {bestHead})" : "-";
            o.WriteLine($"  {l,5}  {norm,12:F3}  {Q(tok.TokenText(lensTop)),-24}  {attended}");
        }
        o.WriteLine();
        o.WriteLine("next: engine info --model " + folder + "   |   engine run --model " + folder + " --prompt \"...\" --json");
        return 0;
    }
}
