using System.Globalization;
using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>engine trace: ROME causal tracing (SPEC "ROME causal tracing"; default noise per SPEC "Methods without fixtures").</summary>
public static class InterpTraceCommand
{
    public static CommandSpec Spec { get; } = new("trace",
        "causal tracing (ROME): which hidden states carry the subject's information to the prediction",
        "engine trace --model M (--prompt TEXT | --tokens IDS) (--subject-positions 1,2,3 | --subject TEXT) [--target T]\n" +
        "             [--noise FILE.safetensors | --samples S --noise-scale K --seed N [--noise-std X | --noise-std-from subject|embeddings]]\n" +
        "             [--window W] [--kinds resid,mlp,attn] [--json] [--out DIR] [--json-out FILE.json] [--svg FILE.svg] [--png FILE.png] [--backend B]\n\n" +
        "Corrupted run s adds noise[s][i] to hook_embed (the token-embedding lookup) at subject position i. prob = softmax of the\n" +
        "last position's logits at the target (default: the clean argmax). resid[L][t]: blocks.L.hook_resid_post[t] restored to\n" +
        "its clean value; mlp/attn[L][t]: hook_mlp_out/hook_attn_out[t] restored at every layer of window(L) =\n" +
        "[L - floor(W/2), L + ceil(W/2)); each averaged over the S samples. Noise: tensor 'noise' [S, n_subject, d_model] from\n" +
        "--noise (its metadata may give subject_positions), or generated: seeded Gaussian N(0,1) x K x std, where std is the\n" +
        "(unbiased) standard deviation of all token-embedding elements of the subject tokens (default), of the whole embedding\n" +
        "matrix (--noise-std-from embeddings), or given (--noise-std). JSON: clean_prob, corrupt_prob, resid/mlp/attn\n" +
        "[n_layers][T], indirect_effect (restored - corrupt), total_effect (clean - corrupt), noise_source, noise_std.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--subject-positions", "token positions of the subject, e.g. 1,2,3", ValueName: "POS"),
         new("--subject", "the subject as text found in the prompt (needs the tokenizer)", ValueName: "TEXT"),
         new("--target", "token whose probability is traced (id or text; default: the clean argmax)", ValueName: "T"),
         new("--noise", "fixed noise: safetensors file with tensor 'noise' [S, n_subject, d_model]", ValueName: "FILE"),
         new("--samples", "generated noise: number of corrupted samples S", ValueName: "S", Default: "10"),
         new("--noise-scale", "generated noise: K in K x std", ValueName: "K", Default: "3"),
         new("--seed", "generated noise: random seed", ValueName: "N", Default: "1"),
         new("--noise-std", "generated noise: absolute std (instead of measuring it)", ValueName: "X"),
         new("--noise-std-from", "generated noise: std of the subject tokens' embeddings | of the whole embedding matrix", ValueName: "subject|embeddings", Default: "subject"),
         new("--window", "window W of the mlp/attn traces", ValueName: "W", Default: "10"),
         new("--kinds", "which traces: any of resid,mlp,attn", ValueName: "K", Default: "resid,mlp,attn"),
         new("--naive", "one full forward pass per cell (the definition; slow), instead of reusing the cached states of the unpatched run", IsFlag: true),
         .. InterpCommands.OutputOptions, .. SweepJournal.Options], Run);

    static int Run(CliArgs a)
    {
        int window = a.Int("--window", 10, 1, 100_000);
        var kinds = a.Require("--kinds").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet();
        foreach (var k in kinds)
            if (k is not ("resid" or "mlp" or "attn")) throw new UsageException($"--kinds: '{k}' is not one of resid, mlp, attn");
        if (kinds.Count == 0) throw new UsageException("--kinds: nothing to trace");
        if (a.Has("--subject") && a.Has("--subject-positions")) throw new UsageException("--subject: give either --subject or --subject-positions");
        string stdFrom = a.Choice("--noise-std-from", "subject", "embeddings");
        bool fileNoise = a.Has("--noise");
        if (fileNoise)
            foreach (var opt in new[] { "--samples", "--noise-scale", "--seed", "--noise-std", "--noise-std-from" })
                if (a.Has(opt)) throw new UsageException($"{opt}: only for generated noise, not with --noise FILE");
        if (a.Has("--noise-std") && a.Has("--noise-std-from")) throw new UsageException("--noise-std: give either --noise-std or --noise-std-from");
        int samples = a.Int("--samples", 10, 1, 100_000);
        double scale = a.Double("--noise-scale", 3);
        int seed = a.Int("--seed", 1);
        double? std = a.Has("--noise-std") ? a.Double("--noise-std") : null;
        if (std is < 0) throw new UsageException("--noise-std: must not be negative");
        var outs = InterpCommands.ResolveOutputs(a);
        SweepJournal.Validate(a);

        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        TraceNoise? noise = fileNoise ? TraceNoise.FromFile(a.Require("--noise"), model.Config.DModel) : null;
        int[] subject;
        if (a.Has("--subject-positions")) subject = a.IntList("--subject-positions");
        else if (a.Has("--subject"))
        {
            var tok = Common.Tokenizer(model) ?? throw new UsageException($"--subject: the model folder {model.Folder} has no tokenizer; use --subject-positions");
            subject = SubjectLocator.Find(tok, tokens, a.Require("--subject"));
        }
        else subject = noise?.FileSubjectPositions
            ?? throw new UsageException("--subject-positions: give the subject's token positions (or --subject TEXT)");
        foreach (int p in subject)
            if (p < 0 || p >= tokens.Length) throw new UsageException($"--subject-positions: position {p} is out of range [0, {tokens.Length})");
        noise ??= TraceNoise.Generate(model, subject.Length, stdFrom == "subject" ? subject.Select(p => tokens[p]).ToArray() : null, samples, scale, seed, std);

        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        using var journal = SweepJournal.Open(a, model);
        var r = CausalTrace.Run(session, tokens, subject, noise, target, new TraceOptions
        {
            Journal = journal,
            Window = window, Resid = kinds.Contains("resid"), Mlp = kinds.Contains("mlp"), Attn = kinds.Contains("attn"),
            Progress = InterpCommands.Progress(a, "trace"),
            Sweep = a.Flag("--naive") ? Engine.Interp.Sweeps.SweepOptions.NaiveMode : Engine.Interp.Sweeps.SweepOptions.Default,
        });
        journal?.Complete(a, model);
        var tk = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("trace", model, session.Kernels.Name);
            w.WriteString("variant", "ROME causal tracing: resid = single layer (kind None); mlp/attn = window");
            w.TokenArray("tokens", tokens, tk);
            w.Ints("subject_positions", r.SubjectPositions);
            w.WriteNumber("target_token", r.Target);
            if (tk != null) w.WriteString("target_text", text(r.Target));
            w.WriteNumber("window", r.Window);
            w.WriteNumber("samples", r.Noise.Samples);
            w.WriteString("noise_source", r.Noise.Source);
            if (r.Noise.Std is double sd) w.WriteDouble("noise_std", sd);
            if (r.Noise.Scale is double sc) w.WriteDouble("noise_scale", sc);
            if (r.Noise.Seed is int sdd) w.WriteNumber("seed", sdd);
            w.WriteDouble("clean_prob", r.CleanProb);
            w.WriteDouble("corrupt_prob", r.CorruptProb);
            w.WriteDouble("total_effect", r.TotalEffect);
            if (r.Resid != null) w.WriteGrid("resid", r.Resid);
            if (r.Mlp != null) w.WriteGrid("mlp", r.Mlp);
            if (r.Attn != null) w.WriteGrid("attn", r.Attn);
            w.WriteStartObject("indirect_effect");
            if (r.Resid != null) w.WriteGrid("resid", r.IndirectEffect(r.Resid)!);
            if (r.Mlp != null) w.WriteGrid("mlp", r.IndirectEffect(r.Mlp)!);
            if (r.Attn != null) w.WriteGrid("attn", r.IndirectEffect(r.Attn)!);
            w.WriteEndObject();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"causal trace of p({RunCommand.Quote(text(r.Target))}) at the last position; subject positions {string.Join(",", r.SubjectPositions)}");
            o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"clean {r.CleanProb:F4}, corrupted {r.CorruptProb:F4} (mean of {r.Noise.Samples}), total effect {r.TotalEffect:F4}; noise: {r.Noise.Source}{(r.Noise.Std is double s ? $", std {s:G4} x {r.Noise.Scale}" : "")}"));
            var marked = r.SubjectPositions.ToHashSet();
            foreach (var (name, g) in new[] { ("resid (single layer)", r.Resid), ($"mlp (window {r.Window})", r.Mlp), ($"attn (window {r.Window})", r.Attn) })
            {
                if (g == null) continue;
                o.WriteLine($"{name}: p(target) with the state restored, rows = positions (* = subject), columns = layers");
                int L = g.Shape[0], T = g.Shape[1];
                var tr = new Grid(T, L);
                for (int l = 0; l < L; l++) for (int t = 0; t < T; t++) tr[t, l] = g[l, t];
                InterpCommands.Table(o, tr, "position", t => $"{t}{(marked.Contains(t) ? "*" : "")}:{text(tokens[t])}", l => $"L{l}");
            }
        }, () => Figures.CausalTrace(r, text), () => Parts(r, text));
    }

    /// <summary>trace.csv: one row per (kind, layer, position): p(target) restored and the indirect effect.</summary>
    internal static InterpCommands.ReportParts Parts(TraceResult r, Func<int, string> text)
    {
        var table = new CsvTable("trace", "kind", "layer", "position", "token", "token_text", "subject", "prob", "indirect_effect")
        { Caption = $"p({RunCommand.Quote(text(r.Target))}) at the last position with the state restored (resid: single layer; mlp/attn: window {r.Window}); indirect effect = prob - corrupted prob." };
        var subject = r.SubjectPositions.ToHashSet();
        foreach (var (kind, g) in new[] { ("resid", r.Resid), ("mlp", r.Mlp), ("attn", r.Attn) })
        {
            if (g == null) continue;
            for (int l = 0; l < g.Shape[0]; l++)
                for (int t = 0; t < g.Shape[1]; t++)
                    table.Add(kind, l, t, r.Tokens[t], text(r.Tokens[t]), subject.Contains(t), g[l, t], g[l, t] - r.CorruptProb);
        }
        return new InterpCommands.ReportParts
        {
            Tables = [table],
            Title = $"Causal trace of p({text(r.Target)})",
            Summary =
            [
                string.Create(CultureInfo.InvariantCulture, $"clean p = {r.CleanProb:G6}, corrupted p = {r.CorruptProb:G6} (mean of {r.Noise.Samples} samples), total effect {r.TotalEffect:G6}"),
                $"subject positions {string.Join(",", r.SubjectPositions)} ({string.Join("", r.SubjectPositions.Select(p => text(r.Tokens[p])))}); noise: {r.Noise.Source}" +
                    (r.Noise.Std is double sd ? string.Create(CultureInfo.InvariantCulture, $", std {sd:G4} x {r.Noise.Scale}") : ""),
            ],
        };
    }
}
