using System.Text;
using System.Text.Json;
using Engine.Kernels;
using Engine.Loader;
using Engine.Loader.Tokenization;
using Engine.Runtime;

namespace Engine.Cli;

/// <summary>Options and helpers shared by the commands.</summary>
public static class Common
{
    public static OptionSpec ModelOption => new("--model", "model folder (config.json + *.safetensors) or a Hugging Face repo id in the local cache", ValueName: "M");
    public static OptionSpec BackendOption => new("--backend", $"compute backend: {string.Join(" | ", KernelRegistry.Names)}", ValueName: "B", Default: KernelRegistry.Default);
    public static OptionSpec JsonOption => new("--json", "print one JSON document on stdout (schema in src/Cli/README.md)", IsFlag: true);
    public static OptionSpec ForceOption => new("--force", "overwrite an existing output file", IsFlag: true);
    public static OptionSpec CheckFiniteOption => new("--check-finite",
        "watch every tap for NaN/Inf: exit code 2 naming the first hook (forward order), position and index where one appeared", IsFlag: true);

    /// <summary>The --check-finite watch on a session (null without the flag).</summary>
    public static Engine.Interp.NonFiniteWatch? WatchFinite(CliArgs a, Session session) =>
        a.Flag("--check-finite") ? new Engine.Interp.NonFiniteWatch(session) : null;

    /// <summary>The JSON field "check_finite" ({finite, first?}) when --check-finite was given.</summary>
    public static void CheckFiniteJson(this Utf8JsonWriter w, Engine.Interp.NonFiniteWatch? watch)
    {
        if (watch == null) return;
        w.WriteStartObject("check_finite");
        w.WriteBoolean("finite", watch.First == null);
        w.WriteNumber("taps_scanned", watch.TapsScanned);
        if (watch.First is { } f)
        {
            w.WriteStartObject("first");
            w.WriteString("hook", f.Hook);
            w.WriteNumber("layer", f.Layer);
            w.WriteString("kind", f.Kind);
            w.WriteNumber("position", f.Position);
            w.WriteNumber("index", f.Index);
            if (f.Head is int h) w.WriteNumber("head", h);
            if (f.Key is int k) w.WriteNumber("key", k);
            w.WriteNumber("forward_call", f.Call);
            w.WriteString("message", f.Message);
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }
    public static OptionSpec[] InputOptions =>
    [
        new("--prompt", "input text (needs the model's tokenizer)", ValueName: "TEXT"),
        new("--tokens", "input token ids, comma-separated", ValueName: "IDS"),
        new("--bos", "prepend the BOS token to --prompt (default: the tokenizer's convention)", IsFlag: true),
        new("--no-bos", "do not prepend the BOS token to --prompt", IsFlag: true),
    ];

    public static Model LoadModel(CliArgs a) => Model.Load(a.Require("--model"));

    /// <param name="skipUnusedRows">See <see cref="SessionOptions.SkipUnusedRows"/> (generation and its benchmarks).</param>
    public static Session OpenSession(CliArgs a, Model model, int capacity = 0, bool allLogits = true, bool skipUnusedRows = false) =>
        new(model, new SessionOptions { Backend = a.Get("--backend") ?? KernelRegistry.Default, Capacity = capacity, AllLogits = allLogits, SkipUnusedRows = skipUnusedRows });

    /// <summary>The tokenizer of the model, or GPT-2's bundled one for a gpt2 model with GPT-2's vocabulary size; null if none.</summary>
    public static ModelTokenizer? Tokenizer(Model model)
    {
        if (model.Tokenizer != null) return model.Tokenizer;
        if (model.Config.ModelType == "gpt2" && model.Config.VocabSize == 50257) return ModelTokenizer.Gpt2Bundled();
        return null;
    }

    /// <summary>Token ids from --tokens, or --prompt through the tokenizer. Exactly one of them must be given.</summary>
    public static int[] InputTokens(CliArgs a, Model model, string promptOption = "--prompt", string tokensOption = "--tokens")
    {
        bool hasPrompt = a.Has(promptOption), hasTokens = a.Has(tokensOption);
        if (hasPrompt == hasTokens)
            throw new UsageException($"engine {a.Command.Name}: give exactly one of {promptOption} TEXT or {tokensOption} IDS");
        int[] ids;
        if (hasTokens) ids = a.IntList(tokensOption);
        else
        {
            var tok = Tokenizer(model) ?? throw new UsageException($"{promptOption}: the model folder {model.Folder} has no tokenizer files; pass {tokensOption} instead");
            bool? bos = a.Flag("--bos") ? true : a.Flag("--no-bos") ? false : null;
            ids = tok.Encode(a.Require(promptOption), bos);
            if (ids.Length == 0) throw new UsageException($"{promptOption}: the text gives no tokens");
        }
        model.ValidateTokens(ids, tokensOption);
        if (ids.Length > model.Config.ContextLength)
            throw new UsageException($"{(hasTokens ? tokensOption : promptOption)}: {ids.Length} tokens is longer than the model's context of {model.Config.ContextLength}");
        return ids;
    }

    public static string TokenText(ModelTokenizer? tok, int id)
    {
        if (tok == null) return $"<{id}>";
        try { return tok.TokenText(id); } catch (Exception) { return $"<{id}>"; }
    }

    /// <summary>Refuses to overwrite an existing file unless --force; checks that the folder exists.</summary>
    public static string OutputPath(CliArgs a, string option)
    {
        string path = a.Require(option);
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new UsageException($"{option}: '{path}' is a folder; give a file name");
        if (File.Exists(full) && !a.Flag("--force")) throw new UsageException($"{option}: '{path}' exists; pass --force to overwrite it");
        string? dir = Path.GetDirectoryName(full);
        if (dir != null && !Directory.Exists(dir)) throw new UsageException($"{option}: folder '{dir}' does not exist");
        return full;
    }

    public static void WriteJson(TextWriter output, Action<Utf8JsonWriter> write)
    {
        var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            write(w);
        output.WriteLine(Encoding.UTF8.GetString(ms.ToArray()));
    }

    /// <summary>Writes a float as JSON: finite values as numbers, NaN/±Infinity as strings ("NaN", "Infinity", "-Infinity").</summary>
    public static void Number(this Utf8JsonWriter w, double v)
    {
        if (double.IsFinite(v)) w.WriteNumberValue(v);
        else w.WriteStringValue(double.IsNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    }

    public static void Number(this Utf8JsonWriter w, float v)
    {
        if (float.IsFinite(v)) w.WriteNumberValue(v);
        else w.WriteStringValue(float.IsNaN(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    }

    public static void Ints(this Utf8JsonWriter w, string name, IEnumerable<int> xs)
    {
        w.WriteStartArray(name);
        foreach (var x in xs) w.WriteNumberValue(x);
        w.WriteEndArray();
    }

    public static void Header(this Utf8JsonWriter w, string command, Model model, string? backend)
    {
        w.WriteNumber("schema_version", 1);
        w.WriteString("command", command);
        w.WriteString("model", model.Folder);
        w.WriteString("model_type", model.Config.ModelType);
        if (backend != null) w.WriteString("backend", backend);
    }

    /// <summary>Softmax of one row in double.</summary>
    public static double[] Softmax(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (var x in logits) if (x > max) max = x;
        var p = new double[logits.Length];
        double sum = 0;
        for (int i = 0; i < p.Length; i++) { p[i] = Math.Exp(logits[i] - max); sum += p[i]; }
        for (int i = 0; i < p.Length; i++) p[i] /= sum;
        return p;
    }

    /// <summary>Indices of the k largest values, descending; exact ties: lower index first.</summary>
    public static int[] TopK(ReadOnlySpan<float> x, int k)
    {
        k = Math.Min(k, x.Length);
        var idx = Enumerable.Range(0, x.Length).ToArray();
        var copy = x.ToArray();
        Array.Sort(idx, (a, b) => copy[b] != copy[a] ? copy[b].CompareTo(copy[a]) : a.CompareTo(b));
        return idx[..k];
    }
}
