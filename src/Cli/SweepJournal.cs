using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Engine.Interp.Sweeps;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli;

/// <summary>
/// The journal of a long sweep (--journal DIR): DIR/manifest.json (command line, model, a hash of every input that
/// decides the result) and DIR/cells.jsonl, one line {"cell": N, "value": V} appended and flushed per finished cell.
/// --resume reads the finished cells back (a torn last line from a crash is dropped) and the sweep computes only the
/// rest, with the same result as an uninterrupted run; a journal of other inputs is refused. --stop-after N stops after
/// N new cells (for batch jobs and tests).
/// </summary>
public sealed class SweepJournal : ICellJournal, IDisposable
{
    public const string CellsFile = "cells.jsonl", ManifestFile = "manifest.json";

    /// <summary>Options of the commands whose sweeps can be journaled.</summary>
    public static OptionSpec[] Options =>
    [
        new("--journal", "journal the sweep: DIR/cells.jsonl gets one line per finished cell (append-only), DIR/manifest.json the command and a hash of its inputs", ValueName: "DIR"),
        new("--resume", "continue the sweep journaled in --journal DIR: finished cells are read back, not redone", IsFlag: true),
        new("--stop-after", "stop after N newly finished cells (they stay in the journal; continue with --resume)", ValueName: "N"),
    ];

    /// <summary>Options that only say where results go or how they are shown: not part of the inputs' hash.</summary>
    static readonly HashSet<string> NotInputs = ["--out", "--json-out", "--svg", "--png", "--force", "--json", "--journal", "--resume", "--stop-after", "--check-finite", "--model"];

    readonly Dictionary<long, double> _known = [];
    readonly FileStream? _out;
    readonly int? _stopAfter;
    readonly string _dir, _command;
    readonly System.Diagnostics.Stopwatch _sinceSync = System.Diagnostics.Stopwatch.StartNew();

    /// <summary>Cells read back from an earlier run.</summary>
    public int Resumed { get; }
    /// <summary>Cells finished in this run.</summary>
    public int Added { get; private set; }
    public string Folder => _dir;

    SweepJournal(string dir, string command, int? stopAfter, Dictionary<long, double> known, long validLength)
    {
        _dir = dir; _command = command; _stopAfter = stopAfter; _known = known; Resumed = known.Count;
        string cells = Path.Combine(dir, CellsFile);
        _out = new FileStream(cells, FileMode.OpenOrCreate, FileAccess.Write, FileShare.Read);
        _out.SetLength(validLength);   // drops a torn last line
        _out.Position = validLength;
    }

    /// <summary>Checks --journal / --resume / --stop-after before any work (no model needed yet).</summary>
    public static void Validate(CliArgs a)
    {
        bool journal = a.Has("--journal");
        if (a.Flag("--resume") && !journal) throw new UsageException("--resume: needs --journal DIR (the journal to continue)");
        if (a.Has("--stop-after") && !journal) throw new UsageException("--stop-after: needs --journal DIR (where the finished cells are kept)");
        a.OptionalInt("--stop-after", 1);
        if (!journal) return;
        string dir = Path.GetFullPath(a.Require("--journal"));
        if (File.Exists(dir)) throw new UsageException($"--journal: '{a.Require("--journal")}' is a file; give a folder");
        bool exists = File.Exists(Path.Combine(dir, CellsFile)) || File.Exists(Path.Combine(dir, ManifestFile));
        if (a.Flag("--resume") && !File.Exists(Path.Combine(dir, ManifestFile)))
            throw new UsageException($"--resume: no journal in '{a.Require("--journal")}' ({ManifestFile} is missing)");
        if (exists && !a.Flag("--resume") && !a.Flag("--force"))
            throw new UsageException($"--journal: '{a.Require("--journal")}' holds a journal; pass --resume to continue it or --force to start over");
    }

    /// <summary>The journal of this command (null without --journal): created, started over (--force) or resumed.</summary>
    public static SweepJournal? Open(CliArgs a, Model model)
    {
        if (!a.Has("--journal")) return null;
        Validate(a);
        string dir = Path.GetFullPath(a.Require("--journal"));
        string inputs = InputsHash(a, model);
        string manifest = Path.Combine(dir, ManifestFile), cells = Path.Combine(dir, CellsFile);
        var known = new Dictionary<long, double>();
        long valid = 0;
        if (a.Flag("--resume"))
        {
            using (var doc = ReadManifest(manifest))
            {
                var root = doc.RootElement;
                string? had = root.TryGetProperty("inputs_sha256", out var h) ? h.GetString() : null;
                string? cmd = root.TryGetProperty("command", out var c) ? c.GetString() : null;
                if (cmd != a.Command.Name)
                    throw new UsageException($"--resume: the journal in '{dir}' is of 'engine {cmd}', not 'engine {a.Command.Name}'");
                if (had != inputs)
                {
                    string line = root.TryGetProperty("command_line", out var cl) ? cl.GetString() ?? "" : "";
                    throw new UsageException($"--resume: the journal in '{dir}' was made with other inputs (model files, prompts or options differ); it was: {line}");
                }
            }
            (known, valid) = ReadCells(cells);
        }
        else
        {
            try
            {
                Directory.CreateDirectory(dir);
                File.Delete(cells);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new UsageException($"--journal: cannot use '{dir}' ({e.Message})"); }
            WriteManifest(manifest, a, model, inputs, complete: false, cellCount: null);
        }
        return new SweepJournal(dir, a.Command.Name, a.OptionalInt("--stop-after", 1), known, valid);
    }

    static JsonDocument ReadManifest(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        { throw new UsageException($"--resume: cannot read the journal manifest {path} ({e.Message.ReplaceLineEndings(" ")})"); }
    }

    /// <summary>The finished cells and the length of the file up to the last complete line (a torn line is dropped).</summary>
    static (Dictionary<long, double>, long) ReadCells(string path)
    {
        var known = new Dictionary<long, double>();
        if (!File.Exists(path)) return (known, 0);
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new UsageException($"--resume: cannot read {path} ({e.Message})"); }
        int start = 0, lineNo = 0;
        long valid = 0;
        while (start < bytes.Length)
        {
            int nl = Array.IndexOf(bytes, (byte)'\n', start);
            lineNo++;
            if (nl < 0) break;   // no newline: a line torn by a crash; dropped
            var line = bytes.AsSpan(start, nl - start);
            try
            {
                var r = new Utf8JsonReader(line);
                using var doc = JsonDocument.ParseValue(ref r);
                long cell = doc.RootElement.GetProperty("cell").GetInt64();
                var v = doc.RootElement.GetProperty("value");
                double value = v.ValueKind == JsonValueKind.String
                    ? v.GetString() switch { "NaN" => double.NaN, "Infinity" => double.PositiveInfinity, "-Infinity" => double.NegativeInfinity, var s => throw new FormatException($"value '{s}'") }
                    : v.GetDouble();
                known[cell] = value;
            }
            catch (Exception e) when (e is JsonException or FormatException or KeyNotFoundException or InvalidOperationException)
            {
                if (Array.IndexOf(bytes, (byte)'\n', nl + 1) < 0 && nl + 1 >= bytes.Length) break;   // the last line, torn: dropped
                throw new UsageException($"--resume: {path}: line {lineNo} is not a journal entry ({e.Message.ReplaceLineEndings(" ")}); the journal is damaged, start over with --force");
            }
            start = nl + 1;
            valid = start;
        }
        return (known, valid);
    }

    static void WriteManifest(string path, CliArgs a, Model model, string inputs, bool complete, int? cellCount)
    {
        AtomicFile.Write(path, s =>
        {
            using var w = new Utf8JsonWriter(s, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping });
            w.WriteStartObject();
            w.WriteNumber("journal_version", 1);
            w.WriteString("command", a.Command.Name);
            w.WriteString("command_line", Commands.InterpCommands.CommandLine(a));
            w.WriteString("model", model.Folder);
            w.WriteString("inputs_sha256", inputs);
            w.WriteString("cells_file", CellsFile);
            w.WriteBoolean("complete", complete);
            if (cellCount is int n) w.WriteNumber("cells", n);
            w.WriteString("engine", typeof(SweepJournal).Assembly.GetName().Version?.ToString());
            w.WriteString("updated_utc", DateTime.UtcNow.ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture));
            w.WriteEndObject();
        });
    }

    /// <summary>
    /// SHA-256 of what decides the sweep's result: the command, every option except those that only choose outputs,
    /// config.json, the safetensors headers and sizes, and the tokenizer files.
    /// </summary>
    public static string InputsHash(CliArgs a, Model model)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s) { h.AppendData(Encoding.UTF8.GetBytes(s)); h.AppendData([0]); }
        Add("engine-journal/1");
        Add(a.Command.Name);
        foreach (var o in a.Command.Options)
        {
            if (NotInputs.Contains(o.Name)) continue;
            string? v = a.Get(o.Name);
            if (o.IsFlag) { if (a.Flag(o.Name)) Add(o.Name); }
            else if (v != null) Add(o.Name + "=" + v);
        }
        foreach (var f in Directory.GetFiles(model.Folder).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(f);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal))
            {
                using var st = SafeTensorFile.Open(f);
                Add(name + ":" + st.FileLength);
                using var fs = File.OpenRead(f);
                var header = new byte[st.DataStart];
                fs.ReadExactly(header);
                h.AppendData(header);
            }
            else if (name.EndsWith(".json", StringComparison.Ordinal) || name is "tokenizer.model" or "merges.txt")
            {
                Add(name);
                h.AppendData(File.ReadAllBytes(f));
            }
        }
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    public bool TryGet(long cell, out double value) => _known.TryGetValue(cell, out value);

    public void Record(long cell, double value)
    {
        if (!_known.TryAdd(cell, value)) return;
        var ms = new MemoryStream(64);
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteNumber("cell", cell);
            w.WritePropertyName("value");
            Common.Number(w, value);
            w.WriteEndObject();
        }
        ms.WriteByte((byte)'\n');
        _out!.Write(ms.GetBuffer(), 0, (int)ms.Length);
        _out.Flush();                                        // in the OS: survives the process being killed
        if (_sinceSync.Elapsed.TotalSeconds >= 2) { _out.Flush(flushToDisk: true); _sinceSync.Restart(); }
        Added++;
        if (_stopAfter is int n && Added >= n)
            throw new SweepStoppedException($"stopped after {Added} new cells ({_known.Count} in the journal {_dir}); continue with --resume");
    }

    /// <summary>Marks the journal complete (after the results were written).</summary>
    public void Complete(CliArgs a, Model model)
    {
        _out?.Flush(flushToDisk: true);
        WriteManifest(Path.Combine(_dir, ManifestFile), a, model, InputsHash(a, model), complete: true, cellCount: _known.Count);
    }

    /// <summary>What a command prints when its sweep stopped on purpose (--stop-after): a note, and with --json a small document.</summary>
    public int Stopped(CliArgs a, SweepStoppedException e)
    {
        _out?.Flush(flushToDisk: true);
        if (a.Flag("--json"))
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.WriteNumber("schema_version", 1);
                w.WriteString("command", _command);
                w.WriteBoolean("complete", false);
                w.WriteNumber("cells_done", _known.Count);
                w.WriteNumber("cells_added", Added);
                w.WriteString("journal", _dir);
                w.WriteEndObject();
            });
        a.Err.WriteLine($"engine {_command}: {e.Message}");
        return 0;
    }

    public void Dispose()
    {
        try { _out?.Flush(flushToDisk: true); } catch (IOException) { }
        _out?.Dispose();
    }
}
