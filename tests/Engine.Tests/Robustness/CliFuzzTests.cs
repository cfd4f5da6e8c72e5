using System.Text.RegularExpressions;
using Engine.Cli;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Robustness;

/// <summary>
/// Every command's argument parsing and validation on random and mutated argv (fixed seed), in-process through
/// Program.Run: each case returns 0, or 2/3 with exactly one line "engine: error: ..." on stderr; never an exception out
/// of Run, never exit code 1 (internal error). Values come from pools that hit the edges (empty, huge, negative, not a
/// number, NaN, unicode, lone surrogates, lists with holes, paths that are folders, missing or existing files) and from
/// valid values, so that cases also reach model loading and the methods. Paths only ever point into a temporary folder.
/// </summary>
public class CliFuzzTests(ITestOutputHelper output)
{
    sealed class Pools
    {
        public required string Tmp, Gpt2, Llama, NeoX, Broken, AFile, Existing, NoiseFile, Corpus;
        public int Counter;
        public readonly string[] Ints = ["-1", "0", "1", "2", "3", "7", "63", "64", "65", "511", "512", "2147483647", "-2147483648", "99999999999", "1.5", "", "abc", " 1", "+1", "1e3", "٣", "0x10"];
        // options whose value multiplies the work (samples, repeats, new tokens): large values only as non-integers
        public readonly string[] Costly = ["-1", "0", "1", "2", "", "abc", "1.5", "99999999999", "2147483648"];
        public readonly string[] Doubles = ["0", "1", "-1", "0.5", "3", "1e308", "1e309", "NaN", "Infinity", "-Infinity", "-0", "abc", "", "1,5", "0x1"];
        public readonly string[] TokenLists = ["1,2,3", "0", "5, 6 ,7", "", ",", "1,,2", "-1", "511", "512", "1,2,99999999999", "a,b", "1 2 3", "0,1,2,3,4,5,6,7", "1;2",
            string.Join(",", Enumerable.Range(0, 100)), "3,1,4,1,5"];
        public readonly string[] Texts = ["", "hello", " ", "The Eiffel Tower is in", "\0", "\uD800x", "日本語🙂", new string('x', 3000), "<|endoftext|>", "\n"];
        public readonly string[] Heads = ["0:0", "1:3", "all", "0:*", "9:9", "-1:0", "0:99", "a:b", "0", "0:", "", ",", "1.2", "2:1,0:0"];
        public readonly string[] Neurons = ["0:0", "2:255", "0:256", "-1:1", "x", "", ":", "1:3,2:4", "0.7"];
        public readonly string[] Hooks = ["blocks.0.hook_resid_pre", "blocks.*.hook_resid_post", "*", "hook_embed", "blocks.99.hook_resid_pre", "nonsense", "",
            "blocks.0.attn.hook_pattern", "blocks.1.mlp.hook_post", "blocks.0.attn.hook_z", "resid_pre", "ln_final.hook_normalized", "blocks.0.attn.hook_attn_scores"];
        public readonly string[] Junk = ["", "-", "--", "---", "-x", "--=", "=", "--model=", "--json=1", "--help=no", "run", "\0", "--\uD800", "--tokens", "--force", "---model", "--MODEL"];

        public string NewFile(string ext) => Path.Combine(Tmp, $"out{Interlocked.Increment(ref Counter)}{ext}");
    }

    static readonly HashSet<string> OutputFiles = ["--save-logits", "--json-out", "--svg", "--png", "--state", "--journal", "--trace"];
    static readonly HashSet<string> CostOptions = ["--steps", "--batch", "--samples", "--repeat", "--decode", "--max-new-tokens", "--effect-windows", "--checkpoint-every", "--stop-after", "--context", "--query-from", "--window", "--warmup", "--length"];
    static readonly HashSet<string> TokenOptions = ["--tokens", "--clean-tokens", "--corrupt-tokens", "--mean-tokens", "--source-tokens", "--effect-tokens", "--positive-tokens", "--negative-tokens", "--prefill", "--positions", "--subject-positions", "--layers"];
    static readonly HashSet<string> TextOptions = ["--prompt", "--clean-prompt", "--corrupt-prompt", "--source-prompt", "--effect-prompt", "--subject", "--positive", "--negative"];

    /// <summary>Words listed in an option's help as "a | b | c", plus its default: the valid values of a choice option.</summary>
    static string[] Choices(OptionSpec o)
    {
        var words = Regex.Matches(o.Help, @"[\w.,-]+(?=\s*\|)|(?<=\|\s*)[\w.,-]+").Select(m => m.Value).ToList();
        if (o.Default != null) words.Add(o.Default);
        return words.Distinct().ToArray();
    }

    static string Value(OptionSpec o, string command, Pools p, Random r)
    {
        string Pick(string[] xs) => xs[r.Next(xs.Length)];
        // junk (option-like words) only where it cannot become a file name relative to the working directory
        if (r.Next(25) == 0 && !CliArgs.IsPath(o) && o.Name is not ("--out" or "--model-dir")) return Pick(p.Junk);
        switch (o.Name)
        {
            case "--model":
                return r.Next(12) switch
                {
                    < 5 => p.Gpt2, 5 or 6 => p.Llama, 7 => p.NeoX, 8 => p.Broken, 9 => p.AFile, 10 => Path.Combine(p.Tmp, "no-such-model"),
                    _ => Pick(["", "ORG/NAME", "gpt2", "a/b/c", "/", Path.Combine(p.Tmp, "..", "..", "nope")]),
                };
            case "--model-dir": return Pick([p.Broken, p.AFile, p.Gpt2, "", " "]);
            case "--out" when command == "make-model": return Pick([p.Broken, p.AFile, "", Path.Combine(p.Tmp, "mm" + r.Next(3))]);
            case "--out" when command == "cache": return Pick([p.NewFile(".safetensors"), p.Existing, p.Tmp, Path.Combine(p.Tmp, "nodir", "x.safetensors"), "", " "]);
            case "--out": return Pick([Path.Combine(p.Tmp, "report" + r.Next(4)), p.AFile, p.Tmp, "", " ", Path.Combine(p.Tmp, "a", "b")]);
            case "--shape" or "--preset":
                // never a real preset: bench and make-model would write hundreds of MB under weights/
                return Pick(["", "gpt3", "tiny", "GPT2-SMALL", "demo ", "smollm"]);
            case "--noise": return Pick([p.NoiseFile, p.AFile, p.Existing, Path.Combine(p.Tmp, "missing.safetensors"), "", p.Tmp]);
            case "--corpus" or "--direction" or "--pairs" or "--peers":
                return Pick([p.AFile, p.Existing, p.NoiseFile, Path.Combine(p.Tmp, "missing.txt"), "", p.Tmp, "1,2,3", "0.5"]);
            case "--hooks" or "--hook": return Pick(p.Hooks);
            case "--repo": return Pick(["gpt2", "org/name", "a/b/c", "", "..", "org/../x", "x--y", Mutate.Text(r)]);
            case "--endpoint": return Pick(["", "ftp://x", "localhost", "http://", "127.0.0.1:9"]);
            case "--cache": return Pick([Path.Combine(p.Tmp, "hub"), p.AFile, ""]);
            case "--heads" or "--head" or "--cna-head": return Pick(p.Heads);
            case "--neurons" or "--neuron": return Pick(p.Neurons);
        }
        if (OutputFiles.Contains(o.Name))
            return Pick([p.NewFile(o.Name == "--png" ? ".png" : o.Name == "--svg" ? ".svg" : o.Name == "--save-logits" ? ".safetensors" : ".json"),
                p.Existing, p.Tmp, Path.Combine(p.Tmp, "nodir", "x.json"), "", " "]);
        if (CostOptions.Contains(o.Name)) return Pick(p.Costly);
        if (TokenOptions.Contains(o.Name)) return Pick(p.TokenLists);
        if (TextOptions.Contains(o.Name)) return Pick(p.Texts);
        var choices = Choices(o);
        if (choices.Length > 0 && r.Next(3) != 0) return Pick(choices) + (r.Next(15) == 0 ? "x" : "");
        return r.Next(4) switch { 0 => Pick(p.Doubles), 1 => Pick(p.TokenLists), 2 => Pick(p.Texts), _ => Pick(p.Ints) };
    }

    /// <summary>A valid invocation of each command on a fixture (cheap settings), or null (demo, make-model: these build models).</summary>
    static string[]? Template(string command, Pools p, Random r)
    {
        string m = r.Next(3) == 0 ? p.Llama : p.Gpt2;
        return command switch
        {
            "info" => ["--model", m],
            "run" => ["--model", m, "--tokens", "1,2,3", "--top", "3"],
            "generate" => ["--model", m, "--tokens", "1,2,3", "--max-new-tokens", "3"],
            "cache" => ["--model", m, "--tokens", "1,2,3", "--hooks", "blocks.*.hook_resid_post", "--out", p.NewFile(".safetensors")],
            "bench" => ["--model", m, "--prefill", "4", "--decode", "2", "--repeat", "1", "--no-cache-runs"],
            "profile" => ["--model", m, "--tokens", "1,2,3", "--decode", "2", "--warmup", "0"],
            // the test process measures quickly (ENGINE_SYSINFO_QUICK=1, Profiling/ProfilingTestSetup.cs) and caches in a temporary folder
            "sysinfo" => ["--quick"],
            "lens" => ["--model", m, "--tokens", "1,2,3"],
            "patch" => ["--model", m, "--clean-tokens", "1,2,3", "--corrupt-tokens", "4,5,6"],
            "ablate" => ["--model", m, "--tokens", "1,2,3", "--heads", "0:0,1:1"],
            "trace" => ["--model", m, "--tokens", "1,2,3,4", "--subject-positions", "1", "--samples", "2", "--kinds", "resid"],
            "dla" => ["--model", m, "--tokens", "1,2,3"],
            "noise" => ["--model", m, "--tokens", "1,2,3", "--hook", "blocks.0.hook_resid_pre", "--sigma", "0.1", "--samples", "2"],
            "attribute" => ["--model", m, "--tokens", "1,2,3"],
            "steer" => ["--model", m, "--tokens", "1,2,3", "--hook", "blocks.0.hook_resid_pre", "--index", "0", "--scale", "2", "--max-new-tokens", "2"],
            "explain" => ["--model", m, "--neuron", "0:1", "--corpus", p.Corpus, "--context", "8", "--effect-windows", "1", "--stop-after", "3"],
            _ => null,
        };
    }

    /// <summary>A valid invocation with one to three edits: a value replaced from the pools, an option dropped, added or repeated.</summary>
    static string[] MutatedTemplate(CommandSpec cmd, string[] template, Pools p, Random r)
    {
        var args = template.ToList();
        int n = 1 + r.Next(3);
        for (int k = 0; k < n; k++)
        {
            var optionAt = Enumerable.Range(0, args.Count).Where(i => args[i].StartsWith("--")).ToList();
            switch (r.Next(6))
            {
                case 0 or 1 when optionAt.Count > 0:
                {
                    int i = optionAt[r.Next(optionAt.Count)];
                    var spec = cmd.Options.FirstOrDefault(o => o.Name == args[i]);
                    if (spec != null && !spec.IsFlag && i + 1 < args.Count) args[i + 1] = Value(spec, cmd.Name, p, r);
                    break;
                }
                case 2 when optionAt.Count > 0:
                {
                    int i = optionAt[r.Next(optionAt.Count)];
                    bool hasValue = i + 1 < args.Count && !args[i + 1].StartsWith("--");
                    args.RemoveRange(i, hasValue ? 2 : 1);
                    break;
                }
                case 3 when optionAt.Count > 0:
                {
                    int i = optionAt[r.Next(optionAt.Count)];
                    args.Add(args[i]);
                    if (i + 1 < args.Count - 1 && !args[i + 1].StartsWith("--")) args.Add(args[i + 1]);
                    break;
                }
                default:
                {
                    var o = cmd.Options[r.Next(cmd.Options.Length)];
                    args.Add(o.Name);
                    if (!o.IsFlag) args.Add(Value(o, cmd.Name, p, r));
                    break;
                }
            }
        }
        return [cmd.Name, .. args];
    }

    /// <summary>pull talks to a hub: every case names a closed port on 127.0.0.1 as the hub (no test touches the internet).</summary>
    static string[] Argv(CommandSpec cmd, Pools p, Random r)
    {
        var args = ArgvUnsafe(cmd, p, r);
        if (cmd.Name == "pull") return [.. args, "--endpoint", "http://127.0.0.1:9", "--cache", Path.Combine(p.Tmp, "hub")];
        // train without --steps / --batch trains for the recipe's default (a minute): cap the work the way a test would
        if (cmd.Name == "train")
        {
            if (!args.Any(a => a.StartsWith("--steps"))) args = [.. args, "--steps", "2"];
            if (!args.Any(a => a.StartsWith("--batch"))) args = [.. args, "--batch", "2"];
        }
        return args;
    }

    static string[] ArgvUnsafe(CommandSpec cmd, Pools p, Random r)
    {
        if (r.Next(2) == 0 && Template(cmd.Name, p, r) is string[] template)
            return r.Next(10) == 0 ? [cmd.Name, .. template] : MutatedTemplate(cmd, template, p, r);
        var args = new List<string> { cmd.Name };
        if (r.Next(20) == 0)
        {
            int n = r.Next(1, 5);
            for (int i = 0; i < n; i++) args.Add(r.Next(2) == 0 ? p.Junk[r.Next(p.Junk.Length)] : Mutate.Text(r));
            return args.ToArray();
        }
        var opts = cmd.Options;
        var model = opts.FirstOrDefault(o => o.Name == "--model");
        if (model != null && r.Next(10) < 8) { args.Add("--model"); args.Add(Value(model, cmd.Name, p, r)); }
        // demo builds its model under the working directory unless --model-dir says where: always say where
        if (cmd.Name == "demo") { args.Add("--model-dir"); args.Add(Value(cmd.Options.Single(o => o.Name == "--model-dir"), cmd.Name, p, r)); }
        int count = r.Next(0, 7);
        for (int i = 0; i < count; i++)
        {
            var o = opts[r.Next(opts.Length)];
            if (o.Name is "--help") continue;
            if (o.IsFlag)
            {
                args.Add(r.Next(30) == 0 ? o.Name + "=1" : o.Name);
                continue;
            }
            string v = Value(o, cmd.Name, p, r);
            switch (r.Next(20))
            {
                case 0: args.Add(o.Name + "=" + v); break;                  // inline value
                case 1 when i == count - 1: args.Add(o.Name); break;        // value missing at the end
                case 2: args.Add(o.Name); args.Add(o.Name); break;         // option as its own value
                default: args.Add(o.Name); args.Add(v); break;
            }
        }
        // a stray word right after the command (never between an option and its value: it could become a file name)
        if (r.Next(15) == 0) args.Insert(1, p.Junk[r.Next(p.Junk.Length)]);
        return args.ToArray();
    }

    /// <summary>The result must be 0, or 2/3 with exactly one "engine: error:" line; null when it is.</summary>
    static string? Check(int code, string stderr, string[] argv)
    {
        if (code == 0) return null;
        if (code == 4 && argv.Contains("--stop-after") && stderr.Contains("continue with --resume")) return null;   // a journaled sweep stopped on purpose
        if (code is not (2 or 3)) return $"exit code {code}: {stderr.Trim()}";
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => l.StartsWith("engine: error: ")).ToList();
        if (lines.Count != 1) return $"expected one 'engine: error:' line, got {lines.Count}: {stderr}";
        if (stderr.Contains("   at ")) return "stack trace on stderr";
        return null;
    }

    public static IEnumerable<object[]> CommandNames => Program.Commands.Select(c => new object[] { c.Name });

    /// <summary>
    /// Cases per command in the default run (ENGINE_FUZZ_SCALE multiplies them): 10,000 for the commands whose cases
    /// take well under a millisecond; fewer for those whose accepted cases run a method (sweeps, benchmarks, corpus
    /// passes: 10-60 ms each). All share one parser (CliArgs), which sees over 70,000 argv in all.
    /// </summary>
    static int CasesFor(string command) => command switch
    {
        "bench" or "attribute" or "explain" or "pull" or "train" or "profile" or "sysinfo" => 1_000,
        "trace" or "noise" or "steer" or "patch" or "ablate" or "dla" or "lens" or "generate" => 2_000,
        _ => 10_000,
    };

    /// <summary>The templates the fuzzer starts from are valid: each runs with exit code 0.</summary>
    [Fact]
    public void TemplatesRun()
    {
        using var dir = TempDir.InMemory();
        var p = MakePools(dir);
        foreach (var cmd in Program.Commands)
        {
            if (Template(cmd.Name, p, new Random(1)) is not string[] t) continue;
            var res = Support.Cli.Run([cmd.Name, .. t]);
            Assert.True(res.ExitCode == 0, $"engine {cmd.Name} {string.Join(" ", t)}: exit code {res.ExitCode}: {res.Stderr}");
        }
    }

    [Theory]
    [MemberData(nameof(CommandNames))]
    public void RandomArguments(string command)
    {
        var cmd = Program.Commands.Single(c => c.Name == command);
        using var dir = TempDir.InMemory();
        var p = MakePools(dir);
        var r = new Random(command.Aggregate(17, (h, ch) => h * 31 + ch));
        var outcomes = new FuzzOutcomes($"CLI argv: engine {command}");
        int cases = FuzzLog.Scaled(CasesFor(command));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var codes = new int[5];
        for (int i = 0; i < cases; i++)
        {
            var argv = Argv(cmd, p, r);
            outcomes.Run(() => string.Join(" ", argv.Select(a => "'" + a + "'")), () =>
            {
                var o = new StringWriter();
                var e = new StringWriter();
                int code = Program.Run(argv, o, e);
                if (Check(code, e.ToString(), argv) is string why) throw new InvalidOperationException(why);
                codes[code]++;
            });
        }
        string exits = $"exit codes 0 x{codes[0]}, 2 x{codes[2]}, 3 x{codes[3]}" + (codes[4] > 0 ? $", 4 x{codes[4]}" : "");
        output.WriteLine($"{sw.Elapsed.TotalSeconds:F1} s; {exits}");
        FuzzLog.Append($"CLI argv: engine {command}: {cases} cases in {sw.Elapsed.TotalSeconds:F1} s, {exits}");
        outcomes.Report(output, cases);
    }

    static Pools MakePools(TempDir dir)
    {
        string broken = dir.CopyModel("gpt2", "broken");
        var bytes = File.ReadAllBytes(Path.Combine(broken, "model.safetensors"));
        File.WriteAllBytes(Path.Combine(broken, "model.safetensors"), bytes[..(bytes.Length / 3)]);
        string aFile = dir.File("a-file.txt");
        File.WriteAllText(aFile, "not a model\n");
        string corpus = dir.File("corpus.ids");
        File.WriteAllText(corpus, string.Join(" ", Enumerable.Range(0, 40).Select(i => (i * 37) % 500)));
        string existing = dir.File("existing.json");
        File.WriteAllText(existing, "{}");
        return new Pools
        {
            Tmp = dir.Path, Gpt2 = TestPaths.Fixture("gpt2"), Llama = TestPaths.Fixture("llama"), NeoX = TestPaths.Fixture("gpt_neox"),
            Broken = broken, AFile = aFile, Corpus = corpus, Existing = existing, NoiseFile = Path.Combine(TestPaths.Fixture("gpt2"), "noise.safetensors"),
        };
    }
}
