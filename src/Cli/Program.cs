using Engine.Cli.Commands;
using Engine.Loader;

namespace Engine.Cli;

/// <summary>
/// The `engine` command. Exit codes: 0 success; 1 internal error; 2 bad arguments or input (UsageException);
/// 3 malformed or unsupported model files (ModelFormatException / ModelConfigException); 4 a journaled sweep stopped on
/// purpose (--stop-after) before its end. Errors are one line on stderr.
/// </summary>
public static class Program
{
    public static IReadOnlyList<CommandSpec> Commands { get; } =
    [
        InfoCommand.Spec, RunCommand.Spec, GenerateCommand.Spec, CacheCommand.Spec, DemoCommand.Spec, BenchCommand.Spec, ProfileCommand.Spec, SysinfoCommand.Spec, MakeModelCommand.Spec, PullCommand.Spec,
        TrainCommand.Spec, AttributionPatchCommand.Spec, IntegratedGradientsCommand.Spec,
        .. InterpCommands.Specs,
    ];

    public static int Main(string[] args)
    {
#if ENGINE_ILGPU
        Engine.Kernels.Ilgpu.IlgpuBackends.Register();
#else
        foreach (var name in new[] { "ilgpu-cpu", "ilgpu-cuda" })
            Engine.Kernels.KernelRegistry.MarkUnavailable(name, "the ILGPU backend is not available in the NativeAOT build; use the JIT build");
#endif
        return Run(args, Console.Out, Console.Error);
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
        {
            stdout.Write(Overview());
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] == "--version") { stdout.WriteLine("engine " + typeof(Program).Assembly.GetName().Version); return 0; }
        var cmd = Commands.FirstOrDefault(c => c.Name == args[0]);
        if (cmd == null)
        {
            stderr.WriteLine($"engine: error: unknown command '{args[0]}' (commands: {string.Join(", ", Commands.Select(c => c.Name))})");
            return 2;
        }
        if (args.Skip(1).Any(a => a is "--help" or "-h")) { stdout.Write(CliArgs.HelpText(cmd)); return 0; }
        try
        {
            var parsed = CliArgs.Parse(cmd, cmd.Name == "pull" ? PullCommand.Normalize(args[1..]) : args[1..], stdout, stderr);
            return cmd.Run(parsed);
        }
        catch (Engine.Interp.Sweeps.SweepStoppedException e)
        {
            // --stop-after: stopped on purpose; the journal keeps the finished cells
            stderr.WriteLine($"engine {cmd.Name}: {e.Message}");
            return 4;
        }
        catch (Exception e)
        {
            var (code, message) = Describe(e);
            stderr.WriteLine("engine: error: " + message);
            if (Environment.GetEnvironmentVariable("ENGINE_DEBUG") == "1") stderr.WriteLine(e);
            return code;
        }
    }

    /// <summary>Exit code and one-line message of an exception.</summary>
    public static (int Code, string Message) Describe(Exception e)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } agg) e = agg.InnerException!;
        string oneLine(string s) => s.ReplaceLineEndings(" ").Trim();
        return e switch
        {
            UsageException => (2, oneLine(e.Message)),
            ModelFormatException or ModelConfigException => (3, oneLine(e.Message)),
            EngineException => (2, oneLine(e.Message)),
            OutOfMemoryException => (1, "out of memory: " + oneLine(e.Message)),
            // SkiaSharp's native library (pictures: PNG, and text measuring for SVG) missing next to a NativeAOT binary
            DllNotFoundException or TypeInitializationException { InnerException: DllNotFoundException } =>
                (2, "a native library could not be loaded (" + oneLine((e.InnerException ?? e).Message) + "); pictures need libSkiaSharp.so next to the engine binary (the NativeAOT publish folder has it); results without pictures: --json / --json-out"),
            IOException or UnauthorizedAccessException => (2, oneLine(e.Message)),
            _ => (1, $"internal error ({e.GetType().Name}): {oneLine(e.Message)} (set ENGINE_DEBUG=1 for details)"),
        };
    }

    static string Overview()
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine("engine: a transformer inference engine whose every layer can be watched and rewritten.");
        sb.AppendLine();
        sb.AppendLine("usage: engine COMMAND [options]   (engine COMMAND --help for its options)");
        sb.AppendLine();
        sb.AppendLine("commands:");
        foreach (var c in Commands) sb.AppendLine($"  {c.Name,-10} {c.Summary}");
        return sb.ToString();
    }
}
