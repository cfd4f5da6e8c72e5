using System.Globalization;
using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>engine lens: the logit lens (SPEC "logit lens").</summary>
public static class InterpLensCommand
{
    public static CommandSpec Spec { get; } = new("lens",
        "logit lens: top-k next-token predictions read from every layer's residual stream",
        "engine lens --model M (--prompt TEXT | --tokens IDS) [--top K] [--target T] [--json] [--out DIR] [--json-out FILE.json] [--svg FILE.svg] [--png FILE.png] [--backend B]\n\n" +
        "For every layer L and position t: softmax(unembed(final_norm(blocks.L.hook_resid_post[t]))), the final norm's\n" +
        "statistics recomputed from that residual (not frozen). Top-k by probability, exact ties: lower id first.\n" +
        "JSON: top_ids / top_probs [n_layers][T][k]; with --target, target_rank (0 = top) and target_prob [n_layers][T].",
        [Common.ModelOption, .. Common.InputOptions,
         new("--top", "how many tokens per layer and position", ValueName: "K", Default: "5"),
         new("--target", "also report this token's rank and probability (id, or one token's text)", ValueName: "T"),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        int k = a.Int("--top", 5, 1, 1_000_000);
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        var r = LogitLens.Run(session, tokens, k, target);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("lens", model, session.Kernels.Name);
            w.WriteString("variant", "resid_post of every layer, final norm recomputed per residual");
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("k", r.K);
            w.WriteStartArray("top_ids");
            foreach (var layer in r.TopIds) { w.WriteStartArray(); foreach (var ids in layer) { w.WriteStartArray(); foreach (var id in ids) w.WriteNumberValue(id); w.WriteEndArray(); } w.WriteEndArray(); }
            w.WriteEndArray();
            w.WriteStartArray("top_probs");
            foreach (var layer in r.TopProbs)
            {
                w.WriteStartArray();
                foreach (var ps in layer) { w.WriteStartArray(); foreach (var p in ps) w.Number(p); w.WriteEndArray(); }
                w.WriteEndArray();
            }
            w.WriteEndArray();
            if (tok != null)
            {
                w.WriteStartArray("top_texts");
                foreach (var layer in r.TopIds)
                {
                    w.WriteStartArray();
                    foreach (var ids in layer) { w.WriteStartArray(); foreach (var id in ids) w.WriteStringValue(text(id)); w.WriteEndArray(); }
                    w.WriteEndArray();
                }
                w.WriteEndArray();
            }
            if (r.TargetToken is int tg)
            {
                w.WriteNumber("target_token", tg);
                w.WriteGrid("target_rank", r.TargetRank!);
                w.WriteGrid("target_prob", r.TargetProb!);
            }
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"logit lens, top {r.K} per layer (resid_post) and position");
            for (int t = 0; t < tokens.Length; t++)
            {
                o.WriteLine($"position {t} {RunCommand.Quote(text(tokens[t]))}:");
                for (int l = 0; l < r.TopIds.Length; l++)
                {
                    var parts = r.TopIds[l][t].Select((id, j) => $"{RunCommand.Quote(text(id))} {r.TopProbs[l][t][j].ToString("F3", CultureInfo.InvariantCulture)}");
                    string extra = r.TargetToken != null ? $"   target rank {r.TargetRank![l, t]}, p {r.TargetProb![l, t].ToString("F4", CultureInfo.InvariantCulture)}" : "";
                    o.WriteLine($"  L{l,-3} {string.Join("  ", parts)}{extra}");
                }
            }
        }, () => Figures.LogitLens(r, text), () => Parts(r, text));
    }

    /// <summary>lens.csv: one row per (layer, position, rank); target.csv: the target's rank and probability.</summary>
    internal static InterpCommands.ReportParts Parts(LogitLensResult r, Func<int, string> text)
    {
        var lens = new CsvTable("lens", "layer", "position", "token", "token_text", "rank", "top_id", "top_text", "prob")
        { Caption = "Top-k tokens of unembed(final_norm(resid_post)) per layer and position (rank 0 = most probable)." };
        for (int l = 0; l < r.TopIds.Length; l++)
            for (int t = 0; t < r.Tokens.Length; t++)
                for (int j = 0; j < r.TopIds[l][t].Length; j++)
                    lens.Add(l, t, r.Tokens[t], text(r.Tokens[t]), j, r.TopIds[l][t][j], text(r.TopIds[l][t][j]), r.TopProbs[l][t][j]);
        var tables = new List<CsvTable>();
        var summary = new List<string>();
        int P = r.Tokens.Length - 1, L = r.TopIds.Length;
        summary.Add(string.Create(CultureInfo.InvariantCulture, $"last layer, last position: {RunCommand.Quote(text(r.TopIds[L - 1][P][0]))} with p = {r.TopProbs[L - 1][P][0]:G4} (the model's own prediction)"));
        if (r.TargetToken is int tg)
        {
            var target = new CsvTable("target", "layer", "position", "token", "token_text", "target_rank", "target_prob")
            { Caption = $"Rank (0 = top) and probability of the target {RunCommand.Quote(text(tg))} (id {tg})." };
            for (int l = 0; l < L; l++)
                for (int t = 0; t < r.Tokens.Length; t++)
                    target.Add(l, t, r.Tokens[t], text(r.Tokens[t]), (int)r.TargetRank![l, t], r.TargetProb![l, t]);
            tables.Add(target);
            summary.Add(string.Create(CultureInfo.InvariantCulture, $"target {RunCommand.Quote(text(tg))} at the last position: rank {r.TargetRank![L - 1, P]}, p = {r.TargetProb![L - 1, P]:G4} in the last layer"));
        }
        tables.Insert(0, lens);
        return new InterpCommands.ReportParts { Tables = tables, Summary = summary, Title = "Logit lens" };
    }
}
