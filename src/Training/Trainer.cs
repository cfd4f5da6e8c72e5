using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Training;

/// <summary>Everything a training run needs; null fields take the recipe's defaults.</summary>
public sealed record TrainSettings
{
    public required Recipe Recipe { get; init; }
    public string? Family { get; init; }
    public int? Steps { get; init; }
    public int? Batch { get; init; }
    public double? LearningRate { get; init; }
    public int? WarmupSteps { get; init; }
    public double? WeightDecay { get; init; }
    public double? InitStd { get; init; }
    /// <summary>Where the cosine decay ends, as a fraction of the peak rate (1 = constant after warm-up); default 0.1.</summary>
    public double? MinLearningRateFraction { get; init; }
    public ulong Seed { get; init; } = 1;
    public int Threads { get; init; }
    /// <summary>Held-out evaluation every this many steps (and at the end); 0 = only at the end.</summary>
    public int EvalEvery { get; init; } = 250;
    /// <summary>Override of the architecture (tests use smaller models).</summary>
    public ArchSpec? Arch { get; init; }
}

public sealed record StepRecord(int Step, double Loss, double LearningRate, double GradNorm, double Seconds);
public sealed record EvalRecord(int Step, double Seconds, IReadOnlyDictionary<string, double> Accuracy);

/// <summary>The outcome of a training run: the trained engine and what happened.</summary>
public sealed class TrainRun
{
    public required Transformer<float> Model { get; init; }
    public required ArchSpec Arch { get; init; }
    public required TrainSettings Settings { get; init; }
    public required OptimizerSettings Optimizer { get; init; }
    public required int Batch { get; init; }
    public required IReadOnlyList<StepRecord> Steps { get; init; }
    public required IReadOnlyList<EvalRecord> Evals { get; init; }
    public required double Seconds { get; init; }
    public required double[] LoadAverage { get; init; }       // start, end, mean of samples (1-minute load average; NaN off Linux)
    public IReadOnlyDictionary<string, double> Final => Evals[^1].Accuracy;
}

/// <summary>The training loop: seeded init and data, AdamW with warm-up + cosine decay and clipping, periodic held-out evaluation.</summary>
public static class Trainer
{
    public static TrainRun Train(TrainSettings s, Action<string>? log = null)
    {
        var recipe = s.Recipe;
        var d = recipe.Defaults;
        var arch = s.Arch ?? recipe.Arch(s.Family);
        int steps = s.Steps ?? d.Steps, batch = s.Batch ?? d.Batch;
        var opt = new OptimizerSettings
        {
            LearningRate = s.LearningRate ?? d.LearningRate, WarmupSteps = Math.Min(s.WarmupSteps ?? d.WarmupSteps, Math.Max(1, steps / 5)),
            TotalSteps = steps, WeightDecay = s.WeightDecay ?? d.WeightDecay, MinLearningRateFraction = s.MinLearningRateFraction ?? 0.1,
        };
        var model = new Transformer<float>(arch.ToModelConfig(), s.Threads);
        model.Initialize(s.Seed, s.InitStd ?? d.InitStd);
        var adam = new AdamW<float>(model.Layout, opt);
        var data = Rng.Derive(s.Seed, "data:" + recipe.Name);
        var heldOut = recipe.HeldOut(s.Seed);
        var records = new List<StepRecord>(steps);
        var evals = new List<EvalRecord>();
        var loads = new List<double>();
        double load0 = LoadAverage();
        log?.Invoke($"train {recipe.Name}: {arch.Family} {arch.Layers} layers, d_model {arch.DModel}, {arch.Heads} heads, d_mlp {arch.DMlp}, vocab {arch.Vocab}; " +
                    $"{model.ParameterCount:N0} parameters; {steps} steps of {batch} sequences, lr {opt.LearningRate}, seed {s.Seed}, {model.Threads} threads ({model.MatOpsName})");
        var sw = Stopwatch.StartNew();
        double lastLog = 0, lastLoad = 0;
        double emaLoss = double.NaN;
        for (int step = 0; step < steps; step++)
        {
            var (tokens, targets, weights, S) = MakeBatch(recipe, data, batch);
            model.Forward(tokens, batch, S);
            double loss = model.Loss(targets, weights);
            model.ZeroGrad();
            model.Backward();
            var (lr, gn) = adam.Update(model.Params, model.Grads);
            if (!double.IsFinite(loss)) throw new InvalidOperationException($"training diverged at step {step} (loss {loss})");
            double t = sw.Elapsed.TotalSeconds;
            records.Add(new StepRecord(step, loss, lr, gn, t));
            emaLoss = double.IsNaN(emaLoss) ? loss : 0.95 * emaLoss + 0.05 * loss;
            if (t - lastLoad >= 5) { loads.Add(LoadAverage()); lastLoad = t; }
            bool evalNow = step == steps - 1 || (s.EvalEvery > 0 && (step + 1) % s.EvalEvery == 0);
            if (evalNow)
            {
                var acc = Evaluate(model, heldOut, recipe.Bos);
                evals.Add(new EvalRecord(step + 1, sw.Elapsed.TotalSeconds, acc));
                log?.Invoke($"step {step + 1,6}/{steps}  loss {emaLoss:F4}  lr {lr:G3}  {t,7:F1} s  held-out: {string.Join(", ", acc.Select(kv => $"{kv.Key} {kv.Value:P1}"))}");
                lastLog = t;
            }
            else if (t - lastLog >= 10)
            {
                log?.Invoke($"step {step + 1,6}/{steps}  loss {emaLoss:F4}  lr {lr:G3}  |g| {gn:F2}  {t,7:F1} s  ({(step + 1) / t:F1} steps/s)");
                lastLog = t;
            }
        }
        double total = sw.Elapsed.TotalSeconds;
        double load1 = LoadAverage();
        loads.Add(load1);
        return new TrainRun
        {
            Model = model, Arch = arch, Settings = s, Optimizer = opt, Batch = batch, Steps = records, Evals = evals, Seconds = total,
            LoadAverage = [load0, load1, loads.Count > 0 ? loads.Average() : double.NaN],
        };
    }

    /// <summary>B examples padded with BOS to the longest (padded positions have no target).</summary>
    public static (int[] Tokens, int[] Targets, float[] Weights, int SeqLen) MakeBatch(Recipe recipe, Rng rng, int batch)
    {
        var ex = new Example[batch];
        for (int i = 0; i < batch; i++) ex[i] = recipe.Sample(rng);
        int S = ex.Max(e => e.Tokens.Length);
        var tokens = new int[batch * S]; var targets = new int[batch * S]; var weights = new float[batch * S];
        Array.Fill(tokens, recipe.Bos); Array.Fill(targets, -1);
        for (int b = 0; b < batch; b++)
        {
            var e = ex[b];
            e.Tokens.CopyTo(tokens, b * S);
            e.Targets.CopyTo(targets, b * S);
            for (int i = 0; i < e.Tokens.Length; i++) weights[b * S + i] = e.Weights?[i] ?? 1f;
        }
        return (tokens, targets, weights, S);
    }

    /// <summary>Accuracy of every held-out task with the training engine's forward pass.</summary>
    public static Dictionary<string, double> Evaluate(Transformer<float> model, IReadOnlyList<EvalTask> tasks, int pad)
    {
        var result = new Dictionary<string, double>();
        int V = model.Config.VocabSize;
        foreach (var task in tasks)
        {
            var preds = new List<int[]>();
            foreach (var chunk in task.Examples.Chunk(32))
            {
                int S = chunk.Max(e => e.Tokens.Length), B = chunk.Length;
                var tokens = new int[B * S];
                Array.Fill(tokens, pad);
                for (int b = 0; b < B; b++) chunk[b].Tokens.CopyTo(tokens, b * S);
                model.Forward(tokens, B, S);
                var logits = model.Logits;
                for (int b = 0; b < B; b++)
                {
                    var pos = chunk[b].Positions;
                    var pr = new int[pos.Length];
                    for (int k = 0; k < pos.Length; k++) pr[k] = ArgMax(logits.Slice((b * S + pos[k]) * V, V));
                    preds.Add(pr);
                }
            }
            result[task.Name] = Score(task, preds);
        }
        return result;
    }

    /// <summary>Accuracy of a task given the predicted tokens at each example's scored positions.</summary>
    public static double Score(EvalTask task, IReadOnlyList<int[]> predictions)
    {
        long right = 0, total = 0;
        for (int i = 0; i < task.Examples.Count; i++)
        {
            var e = task.Examples[i];
            int ok = 0;
            for (int k = 0; k < e.Expected.Length; k++) if (predictions[i][k] == e.Expected[k]) ok++;
            if (task.ExactMatch) { right += ok == e.Expected.Length ? 1 : 0; total++; }
            else { right += ok; total += e.Expected.Length; }
        }
        return total > 0 ? (double)right / total : double.NaN;
    }

    public static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    /// <summary>The 1-minute load average (Linux /proc/loadavg), NaN elsewhere.</summary>
    public static double LoadAverage()
    {
        try
        {
            var text = File.ReadAllText("/proc/loadavg");
            return double.Parse(text.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (Exception) { return double.NaN; }
    }

    /// <summary>
    /// Writes the trained model as a Hugging Face folder: config.json (with the training recipe and seed),
    /// model.safetensors, the tokenizer (text recipes) and training.json (settings, timing, load, loss and accuracy curves).
    /// </summary>
    public static void WriteFolder(TrainRun run, string folder, string? commandLine = null)
    {
        Directory.CreateDirectory(folder);
        var recipe = run.Settings.Recipe;
        var extra = new Dictionary<string, object>
        {
            ["engine_training"] = new Dictionary<string, object>
            {
                ["recipe"] = recipe.Name, ["seed"] = (long)run.Settings.Seed, ["steps"] = run.Steps.Count, ["batch"] = run.Batch,
                ["train_seconds"] = Math.Round(run.Seconds, 1),
                ["note"] = "trained by `engine train`; reproducible from the recipe and the seed (see training.json)",
            },
        };
        Checkpoint.Save(run.Model, run.Arch, folder, extra, new Dictionary<string, string> { ["engine_recipe"] = recipe.Name, ["engine_seed"] = run.Settings.Seed.ToString(CultureInfo.InvariantCulture) });
        recipe.Tokenizer?.Write(folder);
        AtomicFile.WriteText(Path.Combine(folder, "training.json"), ReportJson(run, commandLine));
    }

    public const string ReportFile = "training.json";

    public static string ReportJson(TrainRun run, string? commandLine)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("schema_version", 1);
            w.WriteString("recipe", run.Settings.Recipe.Name);
            w.WriteString("description", run.Settings.Recipe.Description);
            if (commandLine != null) w.WriteString("command", commandLine);
            w.WriteNumber("seed", run.Settings.Seed);
            w.WriteStartObject("architecture");
            w.WriteString("family", run.Arch.Family); w.WriteNumber("layers", run.Arch.Layers); w.WriteNumber("d_model", run.Arch.DModel);
            w.WriteNumber("heads", run.Arch.Heads); w.WriteNumber("kv_heads", run.Arch.KvHeads > 0 ? run.Arch.KvHeads : run.Arch.Heads);
            w.WriteNumber("d_mlp", run.Arch.DMlp); w.WriteNumber("vocab", run.Arch.Vocab); w.WriteNumber("context", run.Arch.Context);
            w.WriteNumber("parameters", run.Model.ParameterCount);
            w.WriteEndObject();
            w.WriteStartObject("optimizer");
            w.WriteString("kind", "AdamW, linear warm-up + cosine decay, global-norm clipping");
            w.WriteNumber("steps", run.Steps.Count); w.WriteNumber("batch", run.Batch);
            w.WriteNumber("learning_rate", run.Optimizer.LearningRate); w.WriteNumber("min_learning_rate_fraction", run.Optimizer.MinLearningRateFraction);
            w.WriteNumber("warmup_steps", run.Optimizer.WarmupSteps); w.WriteNumber("weight_decay", run.Optimizer.WeightDecay);
            w.WriteNumber("beta1", run.Optimizer.Beta1); w.WriteNumber("beta2", run.Optimizer.Beta2); w.WriteNumber("clip_norm", run.Optimizer.ClipNorm);
            w.WriteNumber("init_std", run.Settings.InitStd ?? run.Settings.Recipe.Defaults.InitStd);
            w.WriteEndObject();
            w.WriteStartObject("timing");
            w.WriteNumber("wall_seconds", Math.Round(run.Seconds, 2));
            w.WriteNumber("steps_per_second", Math.Round(run.Steps.Count / run.Seconds, 3));
            w.WriteNumber("threads", run.Model.Threads);
            w.WriteString("matmul", run.Model.MatOpsName);
            w.WriteNumber("processors", Environment.ProcessorCount);
            w.WriteStartObject("load_average_1min");
            WriteD(w, "start", run.LoadAverage[0]); WriteD(w, "end", run.LoadAverage[1]); WriteD(w, "mean_of_samples", run.LoadAverage[2]);
            w.WriteEndObject();
            w.WriteString("finished_utc", DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture));
            w.WriteEndObject();
            w.WriteStartObject("held_out_accuracy");
            foreach (var kv in run.Final) WriteD(w, kv.Key, kv.Value);
            w.WriteEndObject();
            w.WriteStartObject("tasks");
            foreach (var t in run.Settings.Recipe.HeldOut(run.Settings.Seed))
            {
                w.WriteStartObject(t.Name);
                w.WriteString("metric", t.ExactMatch ? "exact match" : "token accuracy");
                w.WriteString("description", t.Description);
                w.WriteNumber("examples", t.Examples.Count);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteStartArray("evaluations");
            foreach (var e in run.Evals)
            {
                w.WriteStartObject();
                w.WriteNumber("step", e.Step); w.WriteNumber("seconds", Math.Round(e.Seconds, 2));
                foreach (var kv in e.Accuracy) WriteD(w, kv.Key, kv.Value);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartObject("loss_curve");
            w.WriteStartArray("loss"); foreach (var r in run.Steps) w.WriteNumberValue(Math.Round(r.Loss, 5)); w.WriteEndArray();
            w.WriteStartArray("learning_rate"); foreach (var r in run.Steps) w.WriteNumberValue(Math.Round(r.LearningRate, 8)); w.WriteEndArray();
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(ms.ToArray()) + "\n";
    }

    static void WriteD(Utf8JsonWriter w, string name, double v)
    {
        if (double.IsFinite(v)) w.WriteNumber(name, Math.Round(v, 6)); else w.WriteNull(name);
    }
}
