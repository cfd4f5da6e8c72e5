using System.Text;

namespace Engine.Tests.Support;

/// <summary>A temporary folder deleted on dispose, with helpers to copy fixtures and craft (broken) files.</summary>
public sealed class TempDir : IDisposable
{
    public string Path { get; }

    public TempDir() : this(System.IO.Path.GetTempPath()) { }

    TempDir(string root)
    {
        Path = System.IO.Path.Combine(root, "engine-test-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    /// <summary>A temporary folder in memory (/dev/shm) where the system has one, for tests that write many small files.</summary>
    public static TempDir InMemory() => new(Directory.Exists("/dev/shm") ? "/dev/shm" : System.IO.Path.GetTempPath());

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Copies a fixture's model files (config.json, model.safetensors) into a sub-folder and returns it.</summary>
    public string CopyModel(string fixture, string sub = "model")
    {
        string src = TestPaths.Fixture(fixture), dst = System.IO.Path.Combine(Path, sub);
        Directory.CreateDirectory(dst);
        foreach (var f in new[] { "config.json", "model.safetensors" })
            System.IO.File.Copy(System.IO.Path.Combine(src, f), System.IO.Path.Combine(dst, f));
        foreach (var f in Directory.GetFiles(src).Where(f => f.EndsWith(".json") && !f.EndsWith("expected.json") && !f.EndsWith("config.json")))
            System.IO.File.Copy(f, System.IO.Path.Combine(dst, System.IO.Path.GetFileName(f)));
        return dst;
    }

    /// <summary>Writes a safetensors file from a raw header JSON string and a data region.</summary>
    public static void WriteRawSafetensors(string path, string headerJson, byte[] data, ulong? headerLengthOverride = null)
    {
        var header = Encoding.UTF8.GetBytes(headerJson);
        using var fs = System.IO.File.Create(path);
        fs.Write(BitConverter.GetBytes(headerLengthOverride ?? (ulong)header.Length));
        fs.Write(header);
        fs.Write(data);
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>Runs the CLI in-process and captures its output.</summary>
public static class Cli
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = Engine.Cli.Program.Run(args, o, e);
        return new Result(code, o.ToString(), e.ToString());
    }
}
