using System.Globalization;
using System.Text.Json;
using Engine.Interp;
using Engine.Interp.Reports;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine steer: interventions (scale / set a tap, neuron, head or direction; add a steering vector) during generation.</summary>
public static class InterpSteerCommand
{
    public static CommandSpec Spec { get; } = new("steer",
        "interventions: scale or set a tap, neuron, head or direction, or add a steering vector, and compare the continuation before and after",
        "engine steer --model M (--prompt TEXT | --tokens IDS)\n" +
        "             (--hook NAME [--index I] | --neuron L:I | --head L.H | --direction FILE.safetensors --hook NAME) (--scale S | --set V)\n" +
        "engine steer --model M (--prompt TEXT | --tokens IDS) --layer L [--act resid_pre|resid_mid|resid_post] [--pool last|mean] [--coef C]\n" +
        "             (--pairs FILE | --positive TEXT --negative TEXT | --positive-tokens IDS;... --negative-tokens IDS;...)\n" +
        "   common:   [--positions P,...] [--also-generated] [--freeze-attention] [--max-new-tokens N] [--top K] [--json] [--out DIR]\n\n" +
        "Scale: x <- s * x at the chosen tap component (--scale -2 is the circuit-tracing convention: -2 x its clean activation;\n" +
        "the value scaled is the one the run carries, i.e. the clean one when nothing upstream is edited). Set: x <- V.\n" +
        "--neuron L:I = blocks.L.mlp.hook_post column I; --head L.H = blocks.L.attn.hook_z head H; --hook NAME [--index I] any\n" +
        "tap (index = head or column). --direction FILE: tensor 'direction' [d_model]; in the d_model-wide tap --hook, x <- x +\n" +
        "(s - 1)(x.d)d (set: x <- x + (V - x.d)d), d normalised. Steering vector: the mean over contrastive pairs of\n" +
        "act(positive) - act(negative) at blocks.L.<act> (default resid_pre), each prompt taken at its last position (--pool\n" +
        "last, CAA) or averaged over its positions (--pool mean); added as x <- x + C v (default C = 1). --pairs FILE: lines\n" +
        "'positive<TAB>negative' (text; without a tokenizer, comma-separated ids). Positions: default every prompt position;\n" +
        "--also-generated keeps editing the generated tokens. --freeze-attention keeps the clean run's attention patterns on\n" +
        "the prompt rows (SPEC \"Interventions\"). Greedy continuation (--max-new-tokens, default 20) before and after, and the\n" +
        "next-token distribution at the last prompt position: top tokens before/after and KL(before || after).",
        [Common.ModelOption, .. Common.InputOptions,
         new("--hook", "tap to edit: a hook name (blocks.L.hook_resid_pre, blocks.L.attn.hook_z, ...)", ValueName: "NAME"),
         new("--index", "with --hook: one head (per-head taps) or one column ([T, X] taps)", ValueName: "I"),
         new("--neuron", "edit one MLP neuron (mlp.hook_post): LAYER:INDEX", ValueName: "L:I"),
         new("--head", "edit one head's z slice: LAYER.HEAD", ValueName: "L.H"),
         new("--direction", "safetensors file with tensor 'direction' [d_model]; edits the component of --hook along it", ValueName: "FILE"),
         new("--scale", "multiply by S (e.g. -2)", ValueName: "S"),
         new("--set", "set to V", ValueName: "V"),
         new("--layer", "steering vector: the layer of the residual tap", ValueName: "L"),
         new("--act", "steering vector: resid_pre | resid_mid | resid_post", ValueName: "A", Default: "resid_pre"),
         new("--pool", "steering vector: last (last position of each prompt) | mean (mean over its positions)", ValueName: "P", Default: "last"),
         new("--coef", "steering vector coefficient C (x <- x + C v)", ValueName: "C", Default: "1"),
         new("--pairs", "contrastive pairs file: lines 'positive<TAB>negative'", ValueName: "FILE"),
         new("--positive", "one positive prompt (text)", ValueName: "TEXT"),
         new("--negative", "one negative prompt (text)", ValueName: "TEXT"),
         new("--positive-tokens", "positive prompts as token ids, prompts separated by ';'", ValueName: "IDS;IDS"),
         new("--negative-tokens", "negative prompts as token ids, prompts separated by ';'", ValueName: "IDS;IDS"),
         new("--positions", "absolute positions to edit (default: every prompt position)", ValueName: "P,..."),
         new("--also-generated", "keep editing the positions of generated tokens", IsFlag: true),
         new("--freeze-attention", "keep the clean run's attention patterns (prompt rows) while intervening", IsFlag: true),
         new("--max-new-tokens", "greedy tokens to generate before and after", ValueName: "N", Default: "20"),
         new("--top", "next-token candidates to show before and after", ValueName: "K", Default: "10"),
         new("--no-stop", "do not stop at the end-of-sequence token", IsFlag: true),
         .. InterpCommands.OutputOptions], Run);

    static int Run(CliArgs a)
    {
        int maxNew = a.Int("--max-new-tokens", 20, 0, 100_000);
        int topK = a.Int("--top", 10, 1, 1000);
        var outs = InterpCommands.ResolveOutputs(a);
        using var model = Common.LoadModel(a);
        var c = model.Config;
        var tokens = Common.InputTokens(a, model);
        var tok = Common.Tokenizer(model);
        var text = InterpCommands.TokenTexts(model);
        bool steering = a.Has("--layer") || a.Has("--pairs") || a.Has("--positive") || a.Has("--negative") || a.Has("--positive-tokens") || a.Has("--negative-tokens");
        bool editing = a.Has("--hook") || a.Has("--neuron") || a.Has("--head") || a.Has("--direction");
        if (steering == editing)
            throw new UsageException("engine steer: give either a component to edit (--hook, --neuron, --head, --direction with --scale/--set) or a steering vector (--layer with --pairs/--positive/--negative)");
        int[]? positions = a.Has("--positions") ? a.IntList("--positions") : null;
        if (positions != null)
            foreach (int p in positions)
                if (p < 0 || p >= tokens.Length) throw new UsageException($"--positions: position {p} is out of range [0, {tokens.Length}) (generated positions: --also-generated)");
        bool alsoGen = a.Flag("--also-generated");
        maxNew = Math.Min(maxNew, c.ContextLength - tokens.Length);      // generation stops at the context, as engine generate
        int capacity = tokens.Length + maxNew;

        string variant;
        Intervention edit;
        SteeringVector? vector = null;
        List<(int[] Pos, int[] Neg)>? pairs = null;
        Session session;
        if (editing)
        {
            foreach (var o in new[] { "--act", "--pool", "--coef" })
                if (a.Has(o)) throw new UsageException($"{o}: only for a steering vector (with --layer)");
            if (a.Has("--scale") == a.Has("--set")) throw new UsageException("--scale: give exactly one of --scale S and --set V");
            double? scale = a.Has("--scale") ? a.Double("--scale") : null;
            double? set = a.Has("--set") ? a.Double("--set") : null;
            if (a.Has("--direction"))
            {
                if (a.Has("--neuron") || a.Has("--head") || a.Has("--index")) throw new UsageException("--direction: edits a direction of --hook; drop --neuron/--head/--index");
                if (!a.Has("--hook")) throw new UsageException("--direction: name the d_model-wide tap with --hook (e.g. blocks.1.hook_resid_pre)");
                var (kind, layer) = TapSelection.ParseHook(c, a.Require("--hook"), "--hook");
                var dir = ReadDirection(a.Require("--direction"), c.DModel);
                edit = new DirectionIntervention { Kind = kind, Layer = layer, Direction = dir, Scale = scale ?? 1, SetTo = set, Positions = positions, PromptLength = tokens.Length, AlsoGenerated = alsoGen };
                variant = set != null ? "direction_set" : "direction_scale";
            }
            else
            {
                var sel = InterpNoiseCommand.Selection(a, c, null)!;
                edit = new ScaleIntervention { Kind = sel.Kind, Layer = sel.Layer, Index = sel.Index, Scale = scale ?? 1, SetTo = set, Positions = positions, PromptLength = tokens.Length, AlsoGenerated = alsoGen };
                variant = set != null ? "set" : "scale";
            }
            session = InterpCommands.OpenSession(a, model, capacity);
        }
        else
        {
            foreach (var o in new[] { "--scale", "--set", "--index" })
                if (a.Has(o)) throw new UsageException($"{o}: not used with a steering vector (use --coef)");
            if (!a.Has("--layer")) throw new UsageException("--layer: a steering vector needs the layer of its residual tap");
            int layer = a.Int("--layer", null, 0, c.NLayers - 1);
            var kind = a.Choice("--act", "resid_pre", "resid_mid", "resid_post") switch
            {
                "resid_pre" => HookKind.ResidPre, "resid_mid" => HookKind.ResidMid, _ => HookKind.ResidPost,
            };
            if (kind == HookKind.ResidMid && c.ParallelResidual) throw new UsageException($"--act: this {c.ModelType} model uses a parallel residual and has no resid_mid");
            var pool = a.Choice("--pool", "last", "mean") == "mean" ? SteeringPool.Mean : SteeringPool.Last;
            double coef = a.Double("--coef", 1);
            pairs = Pairs(a, model);
            int longest = pairs.Max(p => Math.Max(p.Pos.Length, p.Neg.Length));
            if (longest > c.ContextLength) throw new UsageException($"--pairs: a prompt of {longest} tokens is longer than the context of {c.ContextLength}");
            session = InterpCommands.OpenSession(a, model, Math.Max(capacity, longest));
            try { vector = SteeringVector.FromPairs(session, pairs, kind, layer, pool); }
            catch { session.Dispose(); throw; }
            edit = new SteeringIntervention { Kind = kind, Layer = layer, Vector = vector.Vector, Coefficient = coef, Positions = positions, PromptLength = tokens.Length, AlsoGenerated = alsoGen };
            variant = "steering_vector";
        }
        using var _ = session;
        bool freeze = a.Flag("--freeze-attention");
        var r = Steering.Compare(session, tokens, [edit], maxNew, freeze, !a.Flag("--no-stop"));
        string? Decode(List<int> cont)
        {
            if (tok == null) return null;
            string full = tok.Decode([.. tokens, .. cont]), prompt = tok.Decode(tokens);
            return full.StartsWith(prompt, StringComparison.Ordinal) ? full[prompt.Length..] : tok.Decode(cont.ToArray());
        }
        var before = InterpMath.TopK(r.LogitsBefore, topK);
        var after = InterpMath.TopK(r.LogitsAfter, topK);
        return InterpCommands.Emit(a, outs, w =>
        {
            w.WriteStartObject();
            w.Header("steer", model, session.Kernels.Name);
            w.WriteString("variant", variant);
            w.WriteString("intervention", edit.Describe());
            w.WriteString("hook", edit.HookName);
            if (edit is ScaleIntervention si)
            {
                if (si.Index is int ix) w.WriteNumber("index", ix);
                if (si.SetTo is double v) w.WriteDouble("set", v); else w.WriteDouble("scale", si.Scale);
            }
            if (edit is DirectionIntervention di)
            {
                w.WriteString("direction_file", Path.GetFullPath(a.Require("--direction")));
                if (di.SetTo is double v) w.WriteDouble("set", v); else w.WriteDouble("scale", di.Scale);
            }
            if (vector != null)
            {
                w.WriteStartObject("steering_vector");
                w.WriteNumber("layer", vector.Layer);
                w.WriteString("act", HookPoints.SuffixOf(vector.Kind));
                w.WriteString("pool", vector.Pool == SteeringPool.Last ? "last position of each prompt" : "mean over each prompt's positions");
                w.WriteNumber("pairs", vector.Pairs);
                w.WriteDouble("norm", vector.Norm);
                w.WriteDouble("coef", ((SteeringIntervention)edit).Coefficient);
                w.WriteEndObject();
            }
            if (positions != null) w.Ints("positions", positions); else w.WriteString("positions", "all prompt positions");
            w.WriteBoolean("also_generated", alsoGen);
            w.WriteBoolean("freeze_attention", freeze);
            if (freeze) w.WriteString("freeze_attention_scope", "clean attention patterns of the prompt rows; rows of generated tokens are computed normally");
            w.TokenArray("tokens", tokens, tok);
            w.WriteStartObject("next_token");
            w.WriteNumber("position", tokens.Length - 1);
            Top(w, "before", before, r.LogitsBefore, text, tok != null);
            Top(w, "after", after, r.LogitsAfter, text, tok != null);
            w.WriteDouble("kl", r.Kl);
            w.WriteDouble("before_top1_prob_after", InterpMath.Prob(r.LogitsAfter, before[0]));
            w.WriteEndObject();
            w.WriteStartObject("continuation");
            w.WriteString("decoding", "greedy");
            w.WriteNumber("max_new_tokens", maxNew);
            w.Ints("before", r.ContinuationBefore);
            w.Ints("after", r.ContinuationAfter);
            if (tok != null) { w.WriteString("before_text", Decode(r.ContinuationBefore)); w.WriteString("after_text", Decode(r.ContinuationAfter)); }
            w.WriteEndObject();
            w.WriteEndObject();
        }, o =>
        {
            o.WriteLine($"intervention: {edit.Describe()}{(freeze ? " (attention patterns frozen)" : "")}");
            if (vector != null)
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"steering vector: {vector.Pairs} pair(s), {HookPoints.Name(vector.Kind, vector.Layer)}, {(vector.Pool == SteeringPool.Last ? "last position" : "mean over positions")}, norm {vector.Norm:G5}"));
            o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"next token at position {tokens.Length - 1}: KL(before || after) = {r.Kl:G6} nats"));
            o.WriteLine($"  {"before",-32} {"after",-32}");
            for (int i = 0; i < topK && i < before.Length; i++)
                o.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  {Fit(text(before[i]), 20),-20} {InterpMath.Prob(r.LogitsBefore, before[i]),10:F4}  {Fit(text(after[i]), 20),-20} {InterpMath.Prob(r.LogitsAfter, after[i]),10:F4}"));
            o.WriteLine("continuation before: " + (Decode(r.ContinuationBefore) is string tb ? RunCommand.Quote(tb) + "  " : "") + $"[{string.Join(",", r.ContinuationBefore)}]");
            o.WriteLine("continuation after:  " + (Decode(r.ContinuationAfter) is string ta ? RunCommand.Quote(ta) + "  " : "") + $"[{string.Join(",", r.ContinuationAfter)}]");
        }, () => MethodFigures.Steer(r, text, topK), () =>
        {
            var t = new CsvTable("next_token", "rank", "before_id", "before_text", "before_prob", "after_id", "after_text", "after_prob")
            { Caption = string.Create(CultureInfo.InvariantCulture, $"Top next tokens at the last prompt position; KL(before || after) = {r.Kl:G6} nats.") };
            for (int i = 0; i < before.Length && i < after.Length; i++)
                t.Add(i, before[i], text(before[i]), InterpMath.Prob(r.LogitsBefore, before[i]), after[i], text(after[i]), InterpMath.Prob(r.LogitsAfter, after[i]));
            return new InterpCommands.ReportParts
            {
                Tables = [t], Title = "Intervention: " + edit.Describe(),
                Summary = [$"before: {Decode(r.ContinuationBefore) ?? string.Join(",", r.ContinuationBefore)}", $"after: {Decode(r.ContinuationAfter) ?? string.Join(",", r.ContinuationAfter)}"],
            };
        });
    }

    static string Fit(string s, int n) { s = SvgHeatmap.Label(s); return s.Length <= n ? s : s[..(n - 1)] + "…"; }

    static void Top(Utf8JsonWriter w, string name, int[] ids, float[] logits, Func<int, string> text, bool texts)
    {
        w.WriteStartObject(name);
        w.Ints("top_ids", ids);
        w.WriteDoubles("top_probs", ids.Select(i => InterpMath.Prob(logits, i)));
        if (texts) { w.WriteStartArray("top_texts"); foreach (var i in ids) w.WriteStringValue(text(i)); w.WriteEndArray(); }
        w.WriteEndObject();
    }

    /// <summary>Reads tensor 'direction' ([d_model], or [1, d_model]) of a safetensors file.</summary>
    static float[] ReadDirection(string path, int dModel)
    {
        if (!File.Exists(path)) throw new UsageException($"--direction: file '{path}' not found");
        using var f = SafeTensorFile.Open(path);
        if (!f.Contains("direction")) throw new UsageException($"--direction: {path} has no tensor named 'direction' (expected [d_model = {dModel}])");
        var v = f.View("direction");
        if (v.ElementCount != dModel || (v.Rank != 1 && !(v.Rank == 2 && v.Shape[0] == 1)))
            throw new UsageException($"--direction: tensor 'direction' in {path} has shape [{string.Join(", ", v.Shape)}], expected [{dModel}]");
        return v.ToFloatArray();
    }

    /// <summary>Contrastive pairs from --pairs FILE, --positive/--negative text or --positive-tokens/--negative-tokens.</summary>
    static List<(int[] Pos, int[] Neg)> Pairs(CliArgs a, Model model)
    {
        int given = (a.Has("--pairs") ? 1 : 0) + (a.Has("--positive") || a.Has("--negative") ? 1 : 0) + (a.Has("--positive-tokens") || a.Has("--negative-tokens") ? 1 : 0);
        if (given != 1) throw new UsageException("--pairs: give the contrastive prompts one way: --pairs FILE, --positive/--negative TEXT or --positive-tokens/--negative-tokens IDS");
        var tok = Common.Tokenizer(model);
        bool? bos = a.Flag("--bos") ? true : a.Flag("--no-bos") ? false : null;
        int[] Encode(string s, string option)
        {
            if (tok == null)
            {
                var ids = CliArgs.ParseIntList(option, s);
                model.ValidateTokens(ids, option);
                return ids;
            }
            var t = tok.Encode(s, bos);
            if (t.Length == 0) throw new UsageException($"{option}: '{s}' gives no tokens");
            return t;
        }
        var list = new List<(int[], int[])>();
        if (a.Has("--pairs"))
        {
            string path = a.Require("--pairs");
            if (!File.Exists(path)) throw new UsageException($"--pairs: file '{path}' not found");
            int n = 0;
            foreach (var raw in File.ReadAllLines(path))
            {
                n++;
                if (raw.Trim().Length == 0 || raw.TrimStart().StartsWith('#')) continue;
                var parts = raw.Split('\t');
                if (parts.Length != 2) throw new UsageException($"--pairs: {path} line {n} is not 'positive<TAB>negative'");
                list.Add((Encode(parts[0], "--pairs"), Encode(parts[1], "--pairs")));
            }
            if (list.Count == 0) throw new UsageException($"--pairs: {path} has no pairs");
            return list;
        }
        if (a.Has("--positive") || a.Has("--negative"))
        {
            if (tok == null) throw new UsageException("--positive: the model has no tokenizer; use --positive-tokens/--negative-tokens");
            list.Add((Encode(a.Require("--positive"), "--positive"), Encode(a.Require("--negative"), "--negative")));
            return list;
        }
        var pos = a.Require("--positive-tokens").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(p => CliArgs.ParseIntList("--positive-tokens", p)).ToList();
        var neg = a.Require("--negative-tokens").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(p => CliArgs.ParseIntList("--negative-tokens", p)).ToList();
        if (pos.Count != neg.Count || pos.Count == 0) throw new UsageException($"--negative-tokens: {neg.Count} negative prompt(s) for {pos.Count} positive one(s); give them in pairs");
        foreach (var p in pos) model.ValidateTokens(p, "--positive-tokens");
        foreach (var p in neg) model.ValidateTokens(p, "--negative-tokens");
        for (int i = 0; i < pos.Count; i++) list.Add((pos[i], neg[i]));
        return list;
    }
}
