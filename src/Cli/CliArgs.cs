using System.Globalization;
using Engine.Loader;

namespace Engine.Cli;

/// <summary>One option of a command: --name VALUE, or a --name flag.</summary>
public sealed record OptionSpec(string Name, string Help, bool IsFlag = false, string? ValueName = null, string? Default = null);

/// <summary>A sub-command: its options, its help text and what it runs.</summary>
public sealed record CommandSpec(string Name, string Summary, string Usage, OptionSpec[] Options, Func<CliArgs, int> Run);

/// <summary>
/// Parsed options of one command. Every accessor reports a bad value as a one-line <see cref="UsageException"/>
/// naming the option; unknown options and missing values are refused when parsing.
/// </summary>
public sealed class CliArgs
{
    readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    public CommandSpec Command { get; }
    public TextWriter Out { get; }
    public TextWriter Err { get; }

    CliArgs(CommandSpec command, TextWriter stdout, TextWriter stderr) { Command = command; Out = stdout; Err = stderr; }

    public static CliArgs Parse(CommandSpec cmd, IReadOnlyList<string> argv, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArgs(cmd, stdout, stderr);
        for (int i = 0; i < argv.Count; i++)
        {
            string arg = argv[i];
            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg.Length == 2)
                throw new UsageException($"engine {cmd.Name}: unexpected argument '{arg}' (options start with --; see engine {cmd.Name} --help)");
            string name = arg; string? inline = null;
            int eq = arg.IndexOf('=');
            if (eq > 0) { name = arg[..eq]; inline = arg[(eq + 1)..]; }
            var spec = cmd.Options.FirstOrDefault(o => o.Name == name)
                ?? throw new UsageException($"engine {cmd.Name}: unknown option '{name}' (see engine {cmd.Name} --help)");
            if (a._values.ContainsKey(name)) throw new UsageException($"engine {cmd.Name}: option {name} given twice");
            if (spec.IsFlag)
            {
                if (inline != null) throw new UsageException($"engine {cmd.Name}: option {name} takes no value");
                a._values[name] = null;
            }
            else if (inline != null) a._values[name] = inline;
            else
            {
                if (i + 1 >= argv.Count) throw new UsageException($"engine {cmd.Name}: option {name} needs a value ({spec.ValueName ?? "VALUE"})");
                // "--out --force" is a forgotten value, not a file named "--force": values that look like options need NAME=VALUE.
                if (argv[i + 1].StartsWith("--", StringComparison.Ordinal) && argv[i + 1].Length > 2)
                    throw new UsageException($"engine {cmd.Name}: option {name} needs a value ({spec.ValueName ?? "VALUE"}), got option '{argv[i + 1]}' (write {name}={argv[i + 1]} if that is the value)");
                a._values[name] = argv[++i];
            }
            if (IsPath(spec) && a._values[name] is string path) CheckPath(cmd, name, path);
        }
        return a;
    }

    /// <summary>Options whose value is a file or folder (their value name says FILE or DIR).</summary>
    public static bool IsPath(OptionSpec o) => !o.IsFlag && o.ValueName is string v && (v.Contains("FILE") || v.Contains("DIR"));

    /// <summary>A path value must name something: not empty or blank, no NUL (the OS cannot take it).</summary>
    static void CheckPath(CommandSpec cmd, string name, string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new UsageException($"engine {cmd.Name}: option {name} needs a path, got '{path}'");
        if (path.Contains('\0')) throw new UsageException($"engine {cmd.Name}: option {name}: the path contains a NUL character");
    }

    public bool Has(string name) => _values.ContainsKey(name);
    public bool Flag(string name) => _values.ContainsKey(name);

    public string? Get(string name)
    {
        if (_values.TryGetValue(name, out var v)) return v;
        return Command.Options.FirstOrDefault(o => o.Name == name)?.Default;
    }

    public string Require(string name) =>
        Get(name) ?? throw new UsageException($"engine {Command.Name}: option {name} is required");

    public int Int(string name, int? fallback = null, int min = int.MinValue, int max = int.MaxValue)
    {
        string? s = Get(name);
        if (s == null) return fallback ?? throw new UsageException($"engine {Command.Name}: option {name} is required");
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v))
            throw new UsageException($"{name}: '{s}' is not an integer");
        if (v < min || v > max) throw new UsageException($"{name}: {v} is out of range [{min}, {max}]");
        return v;
    }

    public int? OptionalInt(string name, int min = int.MinValue, int max = int.MaxValue) => Get(name) == null ? null : Int(name, null, min, max);

    public double Double(string name, double? fallback = null)
    {
        string? s = Get(name);
        if (s == null) return fallback ?? throw new UsageException($"engine {Command.Name}: option {name} is required");
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
            throw new UsageException($"{name}: '{s}' is not a number");
        return v;
    }

    /// <summary>A comma-separated list of integers ("1,2,3"; spaces allowed).</summary>
    public int[] IntList(string name)
    {
        string s = Require(name);
        return ParseIntList(name, s);
    }

    public static int[] ParseIntList(string name, string s)
    {
        var parts = s.Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new UsageException($"{name}: no values given");
        var r = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out r[i]))
                throw new UsageException($"{name}: '{parts[i]}' is not an integer");
        return r;
    }

    /// <summary>One value among a fixed set.</summary>
    public string Choice(string name, params string[] allowed)
    {
        string v = Require(name);
        if (!allowed.Contains(v)) throw new UsageException($"{name}: '{v}' is not one of {string.Join(", ", allowed)}");
        return v;
    }

    public static string HelpText(CommandSpec cmd)
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"engine {cmd.Name}: {cmd.Summary}");
        sb.AppendLine();
        sb.AppendLine("usage: " + cmd.Usage);
        sb.AppendLine();
        sb.AppendLine("options:");
        foreach (var o in cmd.Options)
        {
            string left = o.IsFlag ? o.Name : $"{o.Name} {o.ValueName ?? "VALUE"}";
            string def = o.Default != null ? $" (default: {o.Default})" : "";
            sb.AppendLine($"  {left,-30} {o.Help}{def}");
        }
        return sb.ToString();
    }
}
