using Engine.Kernels.Ilgpu;
using Engine.Runtime;
using Engine.Tests.Support;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// One fixture model open on "cpu" and on "ilgpu-cpu" side by side (capacity 24), with the fixture's clean and corrupt
/// prompts, and the device backend's transfer counters around a piece of work.
/// </summary>
internal sealed class CpuDevicePair : IDisposable
{
    public readonly Fixture Fx;
    public readonly Model Model;
    public readonly Session Cpu, Dev;
    public readonly int[] Clean, Corrupt;

    public CpuDevicePair(string fixture, bool allLogits = true)
    {
        Fx = new Fixture(fixture);
        Model = Model.Load(Fx.Folder);
        Cpu = new Session(Model, new SessionOptions { Backend = "cpu", Capacity = 24, AllLogits = allLogits });
        Dev = new Session(Model, new SessionOptions { Backend = IlgpuBackends.CpuName, Capacity = 24, AllLogits = allLogits });
        Clean = Fixture.Ints(Fx.Interp.GetProperty("clean_tokens"));
        Corrupt = Fixture.Ints(Fx.Interp.GetProperty("corrupt_tokens"));
    }

    public IlgpuBackend B => (IlgpuBackend)Dev.Backend;

    /// <summary>Floats downloaded and uploaded while <paramref name="run"/> runs on the device session.</summary>
    public (long Down, long Up) Traffic(Action run)
    {
        long d = B.DownloadedFloats, u = B.UploadedFloats;
        run();
        return (B.DownloadedFloats - d, B.UploadedFloats - u);
    }

    public void Dispose()
    {
        Dev.Dispose();
        Cpu.Dispose();
        Model.Dispose();
        Fx.Dispose();
    }
}
