using System.Globalization;
using System.Text.Json;
using Engine.Interp;
using Engine.Interp.Reports;

namespace Engine.Cli.Commands;

/// <summary>engine attribute: neuron-level knowledge attribution (Yu &amp; Ananiadou, EMNLP 2024).</summary>
public static class InterpAttributeCommand
{
    public const string Variant =
        "Yu & Ananiadou 2024 log-probability increase: Imp(v) = log p(w | v + h) - log p(w | h), final norm frozen to the real run's sigma_final at the last position, without the final-norm bias";

    public static CommandSpec Spec { get; } = new("attribute",
        "neuron-level attribution: importance of every head and FFN neuron for a token, and the query neurons that feed them",
        "engine attribute --model M (--prompt TEXT | --tokens IDS) [--target T] [--top N] [--query-from K] [--json] [--out DIR] [--backend B]\n\n" +
        "Yu & Ananiadou (EMNLP 2024), SPEC \"neuron-level knowledge attribution\". Target w = the top-1 token at the last\n" +
        "position P (or --target). Imp(v) = log p(w | v + h) - log p(w | h), p = softmax(unembed(final_norm_frozen(x))) with the\n" +
        "final norm's scale FROZEN to the real run's final residual at P and WITHOUT its bias. Baselines h at P: resid_pre of\n" +
        "the layer for heads and attention layers; resid_mid for FFN neurons and FFN layers (parallel-residual models have no\n" +
        "resid_mid: resid_pre, said in the output). FFN neuron i of layer l: v = m_i W_out[:, i] (m = mlp.hook_post at P);\n" +
        "head h: v = z[P, h, :] through its W_O columns (no bias). Query neurons: for the K most important FFN neurons n\n" +
        "(default 100), key k = W_in row of n (gated MLPs: the gate row) * the post-attention norm weight; every lower\n" +
        "component c of the residual stream read by n's MLP (embedding, heads, attention biases, FFN neurons and MLP biases of\n" +
        "lower layers) scores <c, k> / sum_c <c, k> * Imp(n), summed over the K neurons.",
        [Common.ModelOption, .. Common.InputOptions,
         new("--target", "token w (id or one token's text; default: the top-1 token at the last position)", ValueName: "T"),
         new("--top", "how many heads, neurons and query neurons to list", ValueName: "N", Default: "20"),
         new("--query-from", "how many of the most important FFN neurons the query scores sum over (0 = skip)", ValueName: "K", Default: "100"),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        int top = a.Int("--top", 20, 1);
        int queryFrom = a.Int("--query-from", 100, 0);
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        int? target = InterpCommands.TokenOption(a, model, "--target");
        using var session = InterpCommands.OpenSession(a, model, tokens.Length);
        var r = NeuronAttribution.Run(session, tokens, target, new NeuronAttributionOptions
        {
            Top = top, QueryFrom = queryFrom, Progress = InterpCommands.Progress(a, "attribute"),
        });
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        var c = model.Config;
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("attribute", model, session.Kernels.Name);
            w.WriteString("variant", Variant);
            w.TokenArray("tokens", tokens, tok);
            w.WriteNumber("target_token", r.Target);
            if (tok != null) w.WriteString("target_text", text(r.Target));
            w.WriteString("target_source", target == null ? "top-1 token at the last position" : "--target");
            w.WriteDouble("target_logprob", r.TargetLogProb);
            w.WriteDouble("final_scale", r.FinalScale);
            w.WriteStartObject("baselines");
            w.WriteString("heads", "resid_pre");
            w.WriteString("ffn", r.MlpBaseline);
            w.WriteEndObject();
            w.WriteGrid("head_imp", r.HeadImp);
            w.WriteDoubles("attn_layer_imp", r.AttnLayerImp);
            w.WriteDoubles("mlp_layer_imp", r.MlpLayerImp);
            w.WriteNumber("top", top);
            Items(w, "top_heads", r.TopHeads, "head", "imp");
            Items(w, "top_neurons", r.TopNeurons, "neuron", "imp");
            w.WriteStartObject("query");
            w.WriteNumber("from", r.QueryFrom);
            w.WriteString("key", r.QueryKey);
            w.WriteString("score", "<c, k> / sum_c <c, k> * Imp(n), summed over the value neurons n");
            Items(w, "neurons", r.QueryNeurons, "neuron", "score");
            Items(w, "heads", r.QueryHeads, "head", "score");
            Items(w, "other", r.QueryOther, null, "score");
            w.WriteEndObject();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"neuron-level attribution of {RunCommand.Quote(text(r.Target))} (id {r.Target}) at position {tokens.Length - 1}: log p {r.TargetLogProb:F4}");
            o.WriteLine($"final norm frozen (sigma_final {r.FinalScale:G6}, no bias); baselines: heads resid_pre, FFN {r.MlpBaseline}");
            o.WriteLine("head Imp (log p increase):");
            InterpCommands.Table(o, r.HeadImp, "layer", l => $"L{l}", h => $"H{h}");
            o.WriteLine("layer Imp:  " + string.Join("  ", Enumerable.Range(0, c.NLayers).Select(l => string.Create(CultureInfo.InvariantCulture, $"L{l} attn {r.AttnLayerImp[l]:F4} ffn {r.MlpLayerImp[l]:F4}"))));
            List("top heads", r.TopHeads, o);
            List("top FFN neurons", r.TopNeurons, o);
            if (r.QueryFrom > 0)
            {
                List($"top query neurons (over the {r.QueryFrom} most important FFN neurons; key: {r.QueryKey})", r.QueryNeurons, o);
                List("query heads", r.QueryHeads, o);
                List("query: embedding and biases", r.QueryOther, o);
            }
        }, () => MethodFigures.NeuronAttribution(r, text), () => Parts(r, text));
    }

    static void Items(Utf8JsonWriter w, string name, IEnumerable<ScoredComponent> items, string? indexName, string valueName)
    {
        w.WriteStartArray(name);
        foreach (var x in items)
        {
            w.WriteStartObject();
            w.WriteString("label", x.Label);
            if (indexName != null) { w.WriteNumber("layer", x.Layer); w.WriteNumber(indexName, x.Index); }
            w.WriteDouble(valueName, x.Score);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    static void List(string title, IReadOnlyList<ScoredComponent> items, TextWriter o)
    {
        o.WriteLine(title + ":");
        foreach (var x in items) o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {x.Label,-16} {x.Score,12:G6}"));
    }

    static InterpCommands.ReportParts Parts(NeuronAttributionResult r, Func<int, string> text)
    {
        var heads = new CsvTable("heads", "layer", "head", "imp") { Caption = "Imp of every head (baseline resid_pre at the last position)." };
        for (int l = 0; l < r.HeadImp.Shape[0]; l++) for (int h = 0; h < r.HeadImp.Shape[1]; h++) heads.Add(l, h, r.HeadImp[l, h]);
        var neurons = new CsvTable("neurons", "layer", "neuron", "imp") { Caption = $"Imp of every FFN neuron (baseline {r.MlpBaseline})." };
        for (int l = 0; l < r.NeuronImp.Length; l++) for (int i = 0; i < r.NeuronImp[l].Length; i++) neurons.Add(l, i, r.NeuronImp[l][i]);
        var query = new CsvTable("query", "kind", "label", "score") { Caption = $"Query scores summed over the {r.QueryFrom} most important FFN neurons (top entries)." };
        foreach (var x in r.QueryNeurons) query.Add("neuron", x.Label, x.Score);
        foreach (var x in r.QueryHeads) query.Add("head", x.Label, x.Score);
        foreach (var x in r.QueryOther) query.Add("other", x.Label, x.Score);
        string top = r.TopNeurons.Count > 0 ? string.Create(CultureInfo.InvariantCulture, $"; most important FFN neuron {r.TopNeurons[0].Label} (Imp {r.TopNeurons[0].Score:G4})") : "";
        return new InterpCommands.ReportParts
        {
            Tables = [heads, neurons, query],
            Title = $"Neuron-level attribution of {text(r.Target)}",
            Summary = [string.Create(CultureInfo.InvariantCulture, $"target {RunCommand.Quote(text(r.Target))} (id {r.Target}), log p {r.TargetLogProb:G6}, sigma_final {r.FinalScale:G6}{top}")],
        };
    }
}
