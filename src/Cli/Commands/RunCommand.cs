using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine run: one forward pass; next-token predictions; optionally all logits to a safetensors file.</summary>
public static class RunCommand
{
    public static CommandSpec Spec { get; } = new("run", "run a prompt once and show the next-token predictions",
        "engine run --model M (--prompt TEXT | --tokens 1,2,3) [--top K] [--json] [--save-logits FILE.safetensors] [--backend B] [--memory]",
        [Common.ModelOption, .. Common.InputOptions,
         new("--top", "how many predictions to show", ValueName: "K", Default: "10"),
         new("--save-logits", "write tensor 'logits' [T, V] F32 to this safetensors file", ValueName: "FILE"),
         new("--memory", "report memory after the run: mapped weights, arena + KV cache, managed heap, resident (RSS file-backed / private)", IsFlag: true),
         Common.ForceOption, Common.BackendOption, Common.CheckFiniteOption, Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        int top = a.Int("--top", 10, 1, 1_000_000);
        string? savePath = a.Has("--save-logits") ? Common.OutputPath(a, "--save-logits") : null;
        using var model = Common.LoadModel(a);
        var tokens = Common.InputTokens(a, model);
        using var session = Common.OpenSession(a, model, tokens.Length);
        using var watch = Common.WatchFinite(a, session);
        var logits = session.Run(tokens);
        int V = model.Config.VocabSize, T = tokens.Length;
        var last = logits.Slice((T - 1) * V, V);
        var probs = Common.Softmax(last);
        var ids = Common.TopK(last, top);
        var tok = Common.Tokenizer(model);
        var memory = a.Flag("--memory") ? MemoryReport.Measure(model, session) : null;
        if (savePath != null)
            SafeTensorWriter.Write(savePath, [SafeTensorWriter.F32("logits", [T, V], logits)],
                new Dictionary<string, string> { ["tokens"] = "[" + string.Join(", ", tokens) + "]", ["producer"] = "engine run" });
        if (a.Flag("--json"))
        {
            var argmax = new int[T];
            for (int t = 0; t < T; t++) argmax[t] = Session.ArgMax(logits.Slice(t * V, V));
            var copy = last.ToArray();
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("run", model, session.Kernels.Name);
                w.Ints("tokens", tokens);
                if (tok != null)
                {
                    w.WriteStartArray("token_texts");
                    foreach (var t in tokens) w.WriteStringValue(Common.TokenText(tok, t));
                    w.WriteEndArray();
                }
                w.Ints("argmax_per_position", argmax);
                w.WriteStartArray("top");
                foreach (var id in ids)
                {
                    w.WriteStartObject();
                    w.WriteNumber("id", id);
                    if (tok != null) w.WriteString("text", Common.TokenText(tok, id));
                    w.WritePropertyName("logit"); w.Number(copy[id]);
                    w.WritePropertyName("prob"); w.Number(probs[id]);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                if (savePath != null) w.WriteString("saved_logits", savePath);
                if (memory != null)
                {
                    w.WriteStartObject("memory");
                    w.WriteNumber("mapped_weight_bytes", memory.MappedWeightBytes);
                    w.WriteNumber("arena_bytes", memory.ArenaBytes);
                    w.WriteNumber("managed_heap_bytes", memory.ManagedHeapBytes);
                    void Opt(string name, long? v) { if (v is long x) w.WriteNumber(name, x); else w.WriteNull(name); }
                    Opt("resident_bytes", memory.ResidentBytes);
                    Opt("resident_file_bytes", memory.ResidentFileBytes);
                    Opt("resident_anon_bytes", memory.ResidentAnonBytes);
                    w.WriteEndObject();
                }
                w.CheckFiniteJson(watch);
                w.WriteEndObject();
            });
            watch?.ThrowIfFound();
            return 0;
        }
        a.Out.WriteLine($"{T} tokens: {string.Join(" ", tokens)}");
        a.Out.WriteLine($"next-token predictions at position {T - 1}:");
        foreach (var id in ids)
            a.Out.WriteLine($"  {id,7}  {probs[id],8:P2}  logit {last[id],9:F4}  {Quote(Common.TokenText(tok, id))}");
        if (savePath != null) a.Out.WriteLine($"logits [{T}, {V}] written to {savePath}");
        if (memory != null) foreach (var line in memory.Lines()) a.Out.WriteLine(line);
        watch?.ThrowIfFound();
        return 0;
    }

    internal static string Quote(string s) => "'" + s.Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t") + "'";
}
