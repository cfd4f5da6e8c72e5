using System.Text.Json;
using Engine.Kernels.Profiling;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Profiling;

public class SysinfoTests
{
    static void AssertPositive(MachinePeak p)
    {
        Assert.True(p.Cores >= 1);
        Assert.True(p.FlopsPerCore > 1e8 && double.IsFinite(p.FlopsPerCore), $"per-core FLOP/s {p.FlopsPerCore}");
        Assert.True(p.FlopsAllCores > 1e8 && double.IsFinite(p.FlopsAllCores), $"all-core FLOP/s {p.FlopsAllCores}");
        Assert.True(p.ReadBytesPerCore > 1e8 && double.IsFinite(p.ReadBytesPerCore), $"per-core bandwidth {p.ReadBytesPerCore}");
        Assert.True(p.ReadBytesAllCores > 1e8 && double.IsFinite(p.ReadBytesAllCores), $"all-core bandwidth {p.ReadBytesAllCores}");
        Assert.True(p.BufferBytes > 0);
        Assert.False(string.IsNullOrWhiteSpace(p.CpuModel));
    }

    [Fact]
    public void QuickMeasurementIsPositiveAndItsCacheIsReused()
    {
        using var dir = new TempDir();
        var (first, file, fromCache) = MachinePeak.Load(dir.Path, refresh: false, quick: true);
        Assert.False(fromCache);
        Assert.True(File.Exists(file), file);
        Assert.StartsWith(dir.Path, file);
        Assert.True(first.Quick);
        AssertPositive(first);

        var (second, file2, fromCache2) = MachinePeak.Load(dir.Path, refresh: false, quick: true);
        Assert.True(fromCache2);
        Assert.Equal(file, file2);
        Assert.Equal(first, second);                                    // the very figures of the file, not a new measurement

        var (third, _, fromCache3) = MachinePeak.Load(dir.Path, refresh: true, quick: true);
        Assert.False(fromCache3);
        Assert.NotEqual(first.MeasuredUtc + first.MeasureSeconds, third.MeasuredUtc + third.MeasureSeconds);
        Assert.Equal(third, MachinePeak.TryRead(file));                // --refresh rewrote the file
    }

    [Fact]
    public void BrokenOrForeignCacheFileIsMeasuredAgain()
    {
        using var dir = new TempDir();
        string file = MachinePeak.CacheFile(dir.Path, quick: true);
        Directory.CreateDirectory(dir.Path);
        File.WriteAllText(file, "{ not json");
        var (p, _, fromCache) = MachinePeak.Load(dir.Path, quick: true);
        Assert.False(fromCache);
        AssertPositive(p);

        // another machine's figures under this machine's file name (a copied home folder) are not used
        string foreign = p.ToJson().Replace($"\"cores\": {p.Cores}", $"\"cores\": {p.Cores + 7}");
        File.WriteAllText(file, foreign);
        Assert.Null(MachinePeak.TryRead(file));
        Assert.False(MachinePeak.Load(dir.Path, quick: true).FromCache);
    }

    [Fact]
    public void RooflineScalesWithThreads()
    {
        var p = new MachinePeak
        {
            CpuModel = "x", Cores = 4, Isa = "avx2", VectorBits = 256, FlopsPerCore = 100, FlopsAllCores = 350,
            ReadBytesPerCore = 10, ReadBytesAllCores = 25, BufferBytes = 1, CacheBytes = 0, Quick = false, MeasuredUtc = "", MeasureSeconds = 0,
        };
        Assert.Equal(100, p.Flops(1));
        Assert.Equal(200, p.Flops(2));
        Assert.Equal(350, p.Flops(4));
        Assert.Equal(350, p.Flops(16));
        Assert.Equal(20, p.Bandwidth(2));
        Assert.Equal(25, p.Bandwidth(3));
    }

    [Fact]
    public void CliPrintsPositiveFiguresAndReusesItsCache()
    {
        var first = Support.Cli.Run("sysinfo", "--quick", "--json", "--refresh");
        Assert.True(first.ExitCode == 0, first.Stderr);
        using var a = JsonDocument.Parse(first.Stdout);
        var r = a.RootElement;
        Assert.Equal("sysinfo", r.GetProperty("command").GetString());
        Assert.False(r.GetProperty("from_cache").GetBoolean());
        foreach (var f in new[] { "flops_per_second_per_core", "flops_per_second_all_cores", "read_bytes_per_second_per_core", "read_bytes_per_second_all_cores" })
            Assert.True(r.GetProperty(f).GetDouble() > 0, f);
        string file = r.GetProperty("cache_file").GetString()!;
        Assert.StartsWith(ProfilingTestModule.CacheFolder, file);          // the tests never write the user's cache folder

        var second = Support.Cli.Run("sysinfo", "--quick", "--json");
        Assert.True(second.ExitCode == 0, second.Stderr);
        using var b = JsonDocument.Parse(second.Stdout);
        Assert.True(b.RootElement.GetProperty("from_cache").GetBoolean());
        Assert.Equal(r.GetProperty("flops_per_second_all_cores").GetDouble(), b.RootElement.GetProperty("flops_per_second_all_cores").GetDouble());

        var text = Support.Cli.Run("sysinfo", "--quick");
        Assert.True(text.ExitCode == 0, text.Stderr);
        Assert.Contains("GFLOP/s per core", text.Stdout);
        Assert.Contains("cached", text.Stdout);
    }

    [Fact]
    public void CacheFileNameNamesTheMachine()
    {
        string f = Path.GetFileName(MachinePeak.CacheFile("c", quick: false));
        Assert.StartsWith("sysinfo-", f);
        Assert.Contains($"-{Environment.ProcessorCount}c-{MachinePeak.VectorIsa().Isa}", f);
        Assert.EndsWith(".json", f);
        Assert.DoesNotContain(' ', f);
        Assert.EndsWith("-quick.json", MachinePeak.CacheFile("c", quick: true));
    }

    /// <summary>The full measurement (about a second): figures and a buffer larger than the last-level cache.</summary>
    [Fact, Trait("Category", "Slow")]
    public void FullMeasurement()
    {
        var p = MachinePeak.Measure(quick: false);
        AssertPositive(p);
        Assert.False(p.Quick);
        Assert.True(p.BufferBytes >= 64L << 20);
        if (p.CacheBytes > 0) Assert.True(p.BufferBytes > p.CacheBytes);
    }
}
