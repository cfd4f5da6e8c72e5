using System.Diagnostics;

namespace Engine.Tests.Support;

/// <summary>Runs the built CLI (engine.dll next to the tests) in a child process, with environment overrides.</summary>
public static class EngineProcess
{
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "engine.dll");

    public static ProcessStartInfo StartInfo(IEnumerable<string> args, IDictionary<string, string?>? env = null)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        foreach (var k in new[] { "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "ENGINE_DEBUG" }) psi.Environment.Remove(k);
        if (env != null) foreach (var (k, v) in env) { if (v == null) psi.Environment.Remove(k); else psi.Environment[k] = v; }
        return psi;
    }

    /// <summary>Runs to completion (at most <paramref name="timeoutSeconds"/>) and returns exit code, stdout, stderr.</summary>
    public static Cli.Result Run(IEnumerable<string> args, IDictionary<string, string?>? env = null, int timeoutSeconds = 120)
    {
        using var p = Process.Start(StartInfo(args, env))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeoutSeconds * 1000))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"engine {string.Join(" ", args)} did not finish in {timeoutSeconds} s");
        }
        p.WaitForExit();
        return new Cli.Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
