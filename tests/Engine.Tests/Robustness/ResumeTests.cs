using System.Diagnostics;
using System.Text.Json;
using Engine.Cli;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Robustness;

/// <summary>
/// Nothing lost: journaled sweeps (patch, trace, ablate, noise) write one JSONL line per finished cell plus a manifest;
/// a sweep stopped midway (--stop-after, or the process killed) and resumed gives exactly the uninterrupted result,
/// without redoing finished cells. Journals of other inputs are refused; existing ones are not overwritten without --force.
/// </summary>
public class ResumeTests
{
    static readonly string Gpt2 = TestPaths.Fixture("gpt2");

    public static IEnumerable<object[]> Sweeps =>
    [
        ["patch", new[] { "--clean-tokens", "1,2,3,4,5", "--corrupt-tokens", "6,7,8,9,10" }],
        ["patch", new[] { "--clean-tokens", "1,2,3,4,5", "--corrupt-tokens", "6,7,8,9,10", "--act", "z", "--per-position", "--naive" }],
        ["trace", new[] { "--tokens", "1,2,3,4,5,6", "--subject-positions", "1,2", "--samples", "3" }],
        ["trace", new[] { "--tokens", "1,2,3,4", "--subject-positions", "1", "--samples", "2", "--naive" }],
        ["ablate", new[] { "--tokens", "1,2,3,4,5", "--heads", "all" }],
        ["ablate", new[] { "--tokens", "1,2,3,4,5", "--heads", "all", "--mode", "resample", "--source-tokens", "9,8,7,6,5", "--naive" }],
        ["noise", new[] { "--tokens", "1,2,3,4,5", "--sweep", "heads", "--samples", "3" }],
    ];

    static string Result(string file)
    {
        // the document without the fields that name where it was written
        using var doc = JsonDocument.Parse(File.ReadAllText(file));
        return string.Join("\n", doc.RootElement.EnumerateObject().Where(p => p.Name != "model").Select(p => p.Name + "=" + p.Value.GetRawText()));
    }

    [Theory]
    [MemberData(nameof(Sweeps))]
    public void StoppedAndResumedEqualsUninterrupted(string command, string[] args)
    {
        using var dir = new TempDir();
        string journal = dir.File("journal"), whole = dir.File("whole.json"), resumed = dir.File("resumed.json");
        var r0 = Support.Cli.Run([command, "--model", Gpt2, .. args, "--json-out", whole]);
        Assert.True(r0.ExitCode == 0, r0.Stderr);

        // stop after a few cells, twice, then finish
        var r1 = Support.Cli.Run([command, "--model", Gpt2, .. args, "--journal", journal, "--stop-after", "3"]);
        Assert.True(r1.ExitCode == 4, $"exit code {r1.ExitCode}: {r1.Stderr}");
        Assert.Contains("continue with --resume", r1.Stderr);
        Assert.False(File.Exists(resumed));
        int after1 = File.ReadAllLines(Path.Combine(journal, SweepJournal.CellsFile)).Length;
        Assert.Equal(3, after1);
        var r2 = Support.Cli.Run([command, "--model", Gpt2, .. args, "--journal", journal, "--resume", "--stop-after", "2"]);
        Assert.Equal(4, r2.ExitCode);
        Assert.Equal(5, File.ReadAllLines(Path.Combine(journal, SweepJournal.CellsFile)).Length);   // nothing redone, nothing lost
        var r3 = Support.Cli.Run([command, "--model", Gpt2, .. args, "--journal", journal, "--resume", "--json-out", resumed]);
        Assert.True(r3.ExitCode == 0, r3.Stderr);
        Assert.Equal(Result(whole), Result(resumed));

        var lines = File.ReadAllLines(Path.Combine(journal, SweepJournal.CellsFile));
        var cells = lines.Select(l => JsonDocument.Parse(l).RootElement.GetProperty("cell").GetInt64()).ToList();
        Assert.Equal(cells.Count, cells.Distinct().Count());                                    // every cell once
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(journal, SweepJournal.ManifestFile)));
        Assert.True(manifest.RootElement.GetProperty("complete").GetBoolean());
        Assert.Equal(cells.Count, manifest.RootElement.GetProperty("cells").GetInt32());
        Assert.Equal(command, manifest.RootElement.GetProperty("command").GetString());
        Assert.StartsWith($"engine {command} --model ", manifest.RootElement.GetProperty("command_line").GetString());
        Assert.Equal(64, manifest.RootElement.GetProperty("inputs_sha256").GetString()!.Length);

        // resuming a complete journal recomputes nothing and gives the same result again
        string again = dir.File("again.json");
        var r4 = Support.Cli.Run([command, "--model", Gpt2, .. args, "--journal", journal, "--resume", "--json-out", again]);
        Assert.True(r4.ExitCode == 0, r4.Stderr);
        Assert.Equal(lines.Length, File.ReadAllLines(Path.Combine(journal, SweepJournal.CellsFile)).Length);
        Assert.Equal(Result(whole), Result(again));
    }

    [Fact]
    public void KilledProcessResumesToTheSameResult()
    {
        using var dir = new TempDir();
        string journal = dir.File("journal"), whole = dir.File("whole.json"), resumed = dir.File("resumed.json");
        string[] args = ["trace", "--model", Gpt2, "--tokens", "1,2,3,4,5,6", "--subject-positions", "1,2", "--samples", "40", "--naive"];
        string cellsFile = Path.Combine(journal, SweepJournal.CellsFile);
        using (var p = Process.Start(EngineProcess.StartInfo([.. args, "--journal", journal]))!)
        {
            var sw = Stopwatch.StartNew();
            // kill it once a few cells are journaled (long before its end: 40 samples x 55 runs)
            while (!p.HasExited && sw.Elapsed.TotalSeconds < 60 && (!File.Exists(cellsFile) || new FileInfo(cellsFile).Length < 100)) Thread.Sleep(20);
            if (p.HasExited) Assert.Fail($"the sweep finished before it could be killed: {p.StandardError.ReadToEnd()}");
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        int journaled = File.ReadAllLines(cellsFile).Length;
        Assert.InRange(journaled, 2, 40 * 55 - 1);
        // a torn line, as a crash in the middle of a write leaves it
        File.AppendAllText(cellsFile, "{\"cell\": 99999, \"val");

        var r = Support.Cli.Run([.. args, "--journal", journal, "--resume", "--json-out", resumed]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var r0 = Support.Cli.Run([.. args, "--json-out", whole]);
        Assert.True(r0.ExitCode == 0, r0.Stderr);
        Assert.Equal(Result(whole), Result(resumed));
        var lines = File.ReadAllLines(cellsFile);
        Assert.Equal(40 * 55, lines.Length);                    // each run once: the killed run's cells were not redone
        Assert.DoesNotContain(lines, l => JsonDocument.Parse(l).RootElement.GetProperty("cell").GetInt64() == 99999);
    }

    [Fact]
    public void JournalsAreNotOverwrittenOrMixedUp()
    {
        using var dir = new TempDir();
        string journal = dir.File("j");
        string[] patch = ["patch", "--model", Gpt2, "--clean-tokens", "1,2,3", "--corrupt-tokens", "4,5,6"];
        Assert.Equal(4, Support.Cli.Run([.. patch, "--journal", journal, "--stop-after", "2"]).ExitCode);
        static void Error(Support.Cli.Result r, string fragment)
        {
            Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}: {r.Stderr}");
            Assert.Contains(fragment, r.Stderr);
        }
        Error(Support.Cli.Run([.. patch, "--journal", journal]), "pass --resume to continue it or --force to start over");
        Error(Support.Cli.Run(["patch", "--model", Gpt2, "--clean-tokens", "1,2,3", "--corrupt-tokens", "4,5,7", "--journal", journal, "--resume"]), "other inputs");
        Error(Support.Cli.Run(["trace", "--model", Gpt2, "--tokens", "1,2,3", "--subject-positions", "1", "--journal", journal, "--resume"]), "is of 'engine patch'");
        Error(Support.Cli.Run([.. patch, "--resume"]), "--resume: needs --journal");
        Error(Support.Cli.Run([.. patch, "--stop-after", "1"]), "--stop-after: needs --journal");
        Error(Support.Cli.Run([.. patch, "--journal", dir.File("none"), "--resume"]), "no journal");
        // --force starts over
        var r = Support.Cli.Run([.. patch, "--journal", journal, "--force"]);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(3 * 3, File.ReadAllLines(Path.Combine(journal, SweepJournal.CellsFile)).Length);
        // output files are not overwritten without --force either
        string outFile = dir.File("r.json");
        Assert.Equal(0, Support.Cli.Run([.. patch, "--json-out", outFile]).ExitCode);
        Error(Support.Cli.Run([.. patch, "--json-out", outFile]), "exists; pass --force");
    }
}
