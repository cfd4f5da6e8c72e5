using Engine.Kernels;
using Engine.Kernels.Ilgpu;
using Xunit;

namespace Engine.Tests.Ilgpu;

/// <summary>
/// Device-side interventions (patch, ablate, scale, add) on a tap in device memory: the ILGPU kernel against the host
/// definition <see cref="DeviceIntervention.ApplyHost"/>, bit for bit, with guards around the tap.
/// </summary>
[Collection("ilgpu")]
public class DeviceInterventionTests
{
    const int Rows = 5, Cols = 24, Lead = 8;

    public static IEnumerable<object[]> Cases()
    {
        var vec = Enumerable.Range(0, 6).Select(i => i * 0.25f - 1f).ToArray();
        var block = Enumerable.Range(0, 3 * 6).Select(i => i * 0.5f).ToArray();
        yield return ["zero a head (cols 6..11) at every row", DeviceIntervention.ZeroColumns(Rows, 6, 6)];
        yield return ["scale columns by 0.5", DeviceIntervention.ScaleColumns(Rows, 0, Cols, 0.5f)];
        yield return ["add a steering vector x2", DeviceIntervention.AddVector(Rows, 18, vec, 2f)];
        yield return ["set two rows", DeviceIntervention.SetRows(1, 2, Cols, Enumerable.Range(0, 2 * Cols).Select(i => (float)i).ToArray())];
        yield return ["set a block from another run", new DeviceIntervention(InterventionOp.Set, 2, 3, 12, 6, block)];
        yield return ["add a vector to one position", new DeviceIntervention(InterventionOp.Add, 4, 1, 0, 6, vec, -1f)];
        yield return ["scale by 0 keeps NaN", DeviceIntervention.ScaleColumns(Rows, 0, 3, 0f)];
        yield return ["empty block", new DeviceIntervention(InterventionOp.Zero, 0, 0, 0, 0)];
        // a window of a larger array (another run's whole tap, a noise table): value (r, c) = Values[offset + r * stride + c]
        var big = Enumerable.Range(0, 40).Select(i => i * 0.125f - 2f).ToArray();
        yield return ["set a block from a window (offset 5, stride 10)", new DeviceIntervention(InterventionOp.Set, 1, 3, 6, 6, big) { ValueOffset = 5, ValueStride = 10 }];
        yield return ["add one row of a window to every row (stride 0)", new DeviceIntervention(InterventionOp.Add, 0, Rows, 18, 6, big, -0.5f) { ValueOffset = 7, ValueStride = 0 }];
        yield return ["set one column from a tap-shaped array (stride = cols)", new DeviceIntervention(InterventionOp.Set, 0, Rows, 4, 1, big) { ValueOffset = 4, ValueStride = 7 }];
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void KernelMatchesHostDefinition(string what, DeviceIntervention iv)
    {
        using var b = new IlgpuBackend(IlgpuDevice.Cpu);
        var data = new float[Lead + Rows * Cols + Lead];
        var rng = new Random(7);
        for (int i = 0; i < data.Length; i++) data[i] = (float)rng.NextDouble() * 4 - 2;
        data[Lead + 1] = float.NaN;                                  // row 0, col 1
        using var buf = b.Allocate(data.Length);
        b.Upload(data, new DeviceSpan(buf, 0, data.Length));
        b.Apply(iv, new DeviceSpan(buf, Lead, Rows * Cols), Rows, Cols);
        var got = new float[data.Length];
        b.Synchronize();
        b.Download(new DeviceSpan(buf, 0, data.Length), got);
        var want = (float[])data.Clone();
        iv.ApplyHost(want.AsSpan(Lead, Rows * Cols), Rows, Cols);
        for (int i = 0; i < data.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(want[i]) == BitConverter.SingleToInt32Bits(got[i]), $"{what}: [{i}] want {want[i]:R} got {got[i]:R}");
        if (iv.Op == InterventionOp.Scale && iv.Alpha == 0) Assert.True(float.IsNaN(got[Lead + 1]));
    }

    [Fact]
    public void BadBlocksAndValueCountsThrow()
    {
        using var b = new IlgpuBackend(IlgpuDevice.Cpu);
        using var buf = b.Allocate(Rows * Cols);
        var span = new DeviceSpan(buf, 0, Rows * Cols);
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Apply(DeviceIntervention.ZeroColumns(Rows, 20, 6), span, Rows, Cols));
        Assert.Throws<ArgumentException>(() => b.Apply(DeviceIntervention.AddVector(Rows, 0, new float[5]) with { ColCount = 6 }, span, Rows, Cols));
        Assert.Throws<ArgumentException>(() => b.Apply(new DeviceIntervention(InterventionOp.Set, 0, 1, 0, 4), span, Rows, Cols));
        Assert.Throws<ArgumentException>(() => b.Apply(DeviceIntervention.ZeroColumns(Rows, 0, 1), span, Rows + 1, Cols));
        var values = new float[30];
        // a window that runs past the values, a negative stride, an offset without a stride
        Assert.Throws<ArgumentException>(() => b.Apply(new DeviceIntervention(InterventionOp.Set, 0, 3, 0, 6, values) { ValueOffset = 13, ValueStride = 6 }, span, Rows, Cols));
        Assert.Throws<ArgumentException>(() => b.Apply(new DeviceIntervention(InterventionOp.Set, 0, 2, 0, 6, values) { ValueOffset = 10, ValueStride = -1 }, span, Rows, Cols));
        Assert.Throws<ArgumentException>(() => b.Apply(new DeviceIntervention(InterventionOp.Add, 0, 1, 0, 6, values) { ValueOffset = 2 }, span, Rows, Cols));
        // the last value of the window is the last of the array: fine
        b.Apply(new DeviceIntervention(InterventionOp.Set, 0, 3, 0, 6, values) { ValueOffset = 12, ValueStride = 6 }, span, Rows, Cols);
    }
}
