using Xunit;

namespace Engine.Tests.Support;

/// <summary>Where the repository, its copied fixtures and the optional shared material (../shared) are.</summary>
public static class TestPaths
{
    public static string RepoRoot { get; } = FindRepoRoot();

    static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Engine.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("Engine.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>The random-weight fixtures copied into the repository.</summary>
    public static string Fixtures => Path.Combine(RepoRoot, "tests", "fixtures");

    /// <summary>../shared next to the repository, or null where it is absent (a fresh clone elsewhere).</summary>
    public static string? Shared
    {
        get
        {
            string? env = Environment.GetEnvironmentVariable("ENGINE_SHARED");
            if (!string.IsNullOrEmpty(env) && Directory.Exists(env)) return env;
            string p = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));
            return Directory.Exists(p) ? p : null;
        }
    }

    /// <summary>A path under ../shared, or null when it is not there.</summary>
    public static string? SharedPath(params string[] parts)
    {
        if (Shared == null) return null;
        string p = Path.Combine([Shared, .. parts]);
        return File.Exists(p) || Directory.Exists(p) ? p : null;
    }

    public static string Fixture(string name)
    {
        string local = Path.Combine(Fixtures, name);
        if (Directory.Exists(local)) return local;
        return SharedPath("fixtures", name) ?? throw new DirectoryNotFoundException($"fixture '{name}' not found in tests/fixtures or ../shared/fixtures");
    }

    /// <summary>Random-weight fixtures shipped in tests/fixtures.</summary>
    public static readonly string[] RandomFixtures =
        ["gpt2", "gpt2-vocab50257", "llama", "llama-bf16", "llama-f16", "qwen2", "gemma", "gemma-bf16", "gpt_neox"];
}

/// <summary>A fact that needs files from ../shared; reported as skipped (with the path) when they are absent.</summary>
public sealed class SharedFactAttribute : FactAttribute
{
    public SharedFactAttribute(params string[] parts)
    {
        if (TestPaths.SharedPath(parts) == null) Skip = $"skipped: ../shared/{string.Join('/', parts)} is not present (material from outside the project)";
    }
}

/// <summary>A theory that needs files from ../shared; reported as skipped when they are absent.</summary>
public sealed class SharedTheoryAttribute : TheoryAttribute
{
    public SharedTheoryAttribute(params string[] parts)
    {
        if (TestPaths.SharedPath(parts) == null) Skip = $"skipped: ../shared/{string.Join('/', parts)} is not present (material from outside the project)";
    }
}
