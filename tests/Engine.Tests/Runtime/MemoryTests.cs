using Engine.Loader;
using Engine.Runtime;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Runtime;

/// <summary>
/// Zero-copy loading, measured: after loading and running a 40 MB (F32) / 20 MB (BF16) model, the managed heap has
/// grown by a small fraction of the weights (no copy of them on the heap), the weights are mapped once, and the
/// memory report accounts for them (Linux: RSS file-backed pages cover the mapped weights that were read).
/// </summary>
public class MemoryTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void WeightsStayMappedAndNotOnTheManagedHeap(DType dtype)
    {
        using var dir = new TempDir();
        // 4 layers, d 512, MLP 2048, vocab 4096: ~16.8 M parameters before tying
        var shape = new RandomModelShape("llama", 4, 512, 8, 4, 2048, 4096, 128, Tied: false);
        RandomModel.Create(dir.Path, shape, dtype, seed: 3);
        long heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        using var model = Model.Load(dir.Path);
        using var session = new Session(model, new SessionOptions { Capacity = 64 });
        var tokens = Enumerable.Range(0, 64).Select(i => i * 37 % 4096).ToArray();
        session.Run(tokens);
        long heapAfter = GC.GetTotalMemory(forceFullCollection: true);
        var report = MemoryReport.Measure(model, session);
        foreach (var line in report.Lines()) output.WriteLine(line);
        long weightBytes = new FileInfo(Path.Combine(dir.Path, "model.safetensors")).Length;
        Assert.Equal(weightBytes, report.MappedWeightBytes);
        long grown = heapAfter - heapBefore;
        output.WriteLine($"managed heap grew by {grown / 1048576.0:F2} MiB for {weightBytes / 1048576.0:F1} MiB of weights");
        Assert.True(grown < weightBytes / 10, $"the managed heap grew by {grown} bytes for {weightBytes} bytes of weights: a copy of the weights?");
        Assert.True(report.ArenaBytes > 0);
        if (report.ResidentFileBytes is long file)
            Assert.True(file >= weightBytes * 9 / 10, $"resident file-backed {file} bytes < the {weightBytes} bytes of weights just read");
    }
}
