namespace Engine.Kernels;

/// <summary>What an intervention does to the selected cells of a tap.</summary>
public enum InterventionOp
{
    /// <summary>x = values (patching: values from another run, or a fixed vector broadcast over rows).</summary>
    Set,
    /// <summary>x += Alpha * values (steering / activation addition).</summary>
    Add,
    /// <summary>x *= Alpha (scaling a head or a neuron; Alpha = 0 keeps NaN*0 = NaN, unlike Zero).</summary>
    Scale,
    /// <summary>x = 0 (zero ablation).</summary>
    Zero,
}

/// <summary>
/// A hook that runs on the device: the edits interpretability methods make (patch, ablate, scale, add) on a block of a
/// tap viewed as [rows, cols]: rows RowStart .. RowStart + RowCount - 1 and columns ColStart .. ColStart + ColCount - 1.
/// For a [T, D] tap rows are positions of the current call; for [T, H, d] taps (q/k/v/z) cols = H * d and a head is the
/// column block h*d .. h*d + d - 1; for [H, T, Tk] (scores/pattern) rows = H * T. Values is [RowCount, ColCount], or
/// [ColCount] broadcast to every row; or, with <see cref="ValueStride"/> given, a window of a larger array (another run's
/// whole tap, a table of noise): the value of block cell (r, c) is Values[ValueOffset + r * ValueStride + c] (stride 0
/// broadcasts one row), so one array serves many blocks and a device backend uploads it once (cached by identity, as
/// biases are: do not change an array's contents after a run used it).
/// <see cref="ApplyHost"/> is the definition; the ILGPU kernel must match it exactly.
/// </summary>
public sealed record DeviceIntervention(InterventionOp Op, int RowStart, int RowCount, int ColStart, int ColCount, float[]? Values = null, float Alpha = 1f)
{
    public static DeviceIntervention ZeroColumns(int rows, int colStart, int colCount) => new(InterventionOp.Zero, 0, rows, colStart, colCount);
    public static DeviceIntervention ScaleColumns(int rows, int colStart, int colCount, float alpha) => new(InterventionOp.Scale, 0, rows, colStart, colCount, null, alpha);
    public static DeviceIntervention AddVector(int rows, int colStart, float[] vector, float alpha = 1f) => new(InterventionOp.Add, 0, rows, colStart, vector.Length, vector, alpha);
    public static DeviceIntervention SetRows(int rowStart, int rowCount, int cols, float[] values) => new(InterventionOp.Set, rowStart, rowCount, 0, cols, values);

    /// <summary>First value of the block in <see cref="Values"/> (only with <see cref="ValueStride"/>).</summary>
    public int ValueOffset { get; init; }

    /// <summary>
    /// Distance in <see cref="Values"/> between the values of consecutive block rows (0: every row reads the same
    /// <see cref="ColCount"/> values). Null: Values is exactly [RowCount, ColCount] (per row) or [ColCount] (broadcast).
    /// </summary>
    public int? ValueStride { get; init; }

    /// <summary>The row stride of the values as the kernel reads them (0 = broadcast).</summary>
    public int EffectiveValueStride => ValueStride ?? (Values != null && Values.Length == RowCount * ColCount && RowCount > 1 ? ColCount : 0);

    /// <summary>Throws when the block does not fit a [rows, cols] tap of the given length, or Values has the wrong size.</summary>
    public void Validate(int rows, int cols, long length)
    {
        if (rows < 0 || cols < 0 || (long)rows * cols > length)
            throw new ArgumentException($"intervention on [{rows}, {cols}] but the tap holds {length} floats");
        if (RowStart < 0 || RowCount < 0 || RowStart + RowCount > rows || ColStart < 0 || ColCount < 0 || ColStart + ColCount > cols)
            throw new ArgumentOutOfRangeException(nameof(RowStart), $"block rows {RowStart}+{RowCount}, cols {ColStart}+{ColCount} outside [{rows}, {cols}]");
        if (Op is InterventionOp.Set or InterventionOp.Add)
        {
            if (Values == null) throw new ArgumentException($"{Op} needs values");
            if (ValueStride is int stride)
            {
                long last = ValueOffset + (long)Math.Max(0, RowCount - 1) * stride + ColCount;
                if (stride < 0 || ValueOffset < 0 || (RowCount > 0 && last > Values.Length))
                    throw new ArgumentException($"{Op}: values [{ValueOffset} + r * {stride} + c] of a block of {RowCount} x {ColCount} outside the {Values.Length} values");
            }
            else if (ValueOffset != 0)
                throw new ArgumentException($"{Op}: a value offset ({ValueOffset}) needs a value stride");
            else if (Values.Length != ColCount && Values.Length != RowCount * ColCount)
                throw new ArgumentException($"{Op}: {Values.Length} values for a block of {RowCount} x {ColCount} (want {ColCount} or {RowCount * ColCount})");
        }
    }

    /// <summary>The definition, on host memory (what the CPU backends would run, and the oracle of the device kernel).</summary>
    public void ApplyHost(Span<float> data, int rows, int cols)
    {
        Validate(rows, cols, data.Length);
        int stride = EffectiveValueStride;
        for (int r = 0; r < RowCount; r++)
        {
            var row = data.Slice((RowStart + r) * cols + ColStart, ColCount);
            var v = Values == null || Op is not (InterventionOp.Set or InterventionOp.Add) ? default : Values.AsSpan(ValueOffset + r * stride, ColCount);
            for (int c = 0; c < ColCount; c++)
                row[c] = Op switch
                {
                    InterventionOp.Set => v[c],
                    InterventionOp.Add => row[c] + Alpha * v[c],
                    InterventionOp.Scale => row[c] * Alpha,
                    _ => 0f,
                };
        }
    }
}

/// <summary>
/// A backend that runs <see cref="DeviceIntervention"/>s where the tap lives. The session calls it for hooks registered
/// with <c>HookRegistry.AddIntervention</c>: on a device backend the tap is then never copied to the host.
/// </summary>
public interface IDeviceInterventions
{
    void Apply(DeviceIntervention intervention, DeviceSpan data, int rows, int cols);
}
