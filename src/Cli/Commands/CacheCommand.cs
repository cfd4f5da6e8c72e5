using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine cache: run once and save the chosen activations, one tensor per hook name, for Python or other tools.</summary>
public static class CacheCommand
{
    public static CommandSpec Spec { get; } = new("cache", "run a prompt and save activations (one tensor per hook name) to a safetensors file",
        "engine cache --model M (--prompt TEXT | --tokens IDS) --hooks GLOB[,GLOB...] --out FILE.safetensors [--force] [--backend B]",
        [Common.ModelOption, .. Common.InputOptions,
         new("--hooks", "hook names or globs, comma-separated ('*' = every hook; e.g. 'blocks.*.hook_resid_post,hook_embed')", ValueName: "GLOB"),
         new("--out", "safetensors file to write (F32 tensors named by hook)", ValueName: "FILE"),
         Common.ForceOption, Common.BackendOption, Common.CheckFiniteOption, Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        string globs = a.Require("--hooks");
        string outPath = Common.OutputPath(a, "--out");
        using var model = Common.LoadModel(a);
        var filter = HookPoints.GlobFilter(globs);
        var names = model.HookNames.Where(filter).ToList();
        if (names.Count == 0) throw new UsageException($"--hooks: '{globs}' matches no hook of this model (see engine info --model ...)");
        var tokens = Common.InputTokens(a, model);
        using var session = Common.OpenSession(a, model, tokens.Length);
        using var watch = Common.WatchFinite(a, session);
        var (_, cache) = session.RunWithCache(tokens, filter);
        var entries = cache.Names.Select(n => SafeTensorWriter.F32(n, cache[n].Shape.Select(x => (long)x).ToArray(), cache[n].Data)).ToList();
        SafeTensorWriter.Write(outPath, entries, new Dictionary<string, string>
        {
            ["tokens"] = "[" + string.Join(", ", tokens) + "]",
            ["model"] = model.Folder,
            ["backend"] = session.Kernels.Name,
            ["producer"] = "engine cache",
        });
        if (a.Flag("--json"))
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("cache", model, session.Kernels.Name);
                w.Ints("tokens", tokens);
                w.WriteString("out", outPath);
                w.WriteStartObject("tensors");
                foreach (var n in cache.Names) w.Ints(n, cache[n].Shape);
                w.WriteEndObject();
                w.CheckFiniteJson(watch);
                w.WriteEndObject();
            });
        else a.Out.WriteLine($"{cache.Count} activations of {tokens.Length} tokens written to {outPath}");
        watch?.ThrowIfFound();
        return 0;
    }
}
