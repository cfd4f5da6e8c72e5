namespace Engine.Interp;

/// <summary>
/// A dense result table in row-major order: [n_layers][T], [n_layers][n_heads], [n_layers][T][n_heads], ...
/// Entries a method did not compute are NaN (written as JSON null by the CLI).
/// </summary>
public sealed class Grid
{
    public int[] Shape { get; }
    public double[] Data { get; }

    public Grid(params int[] shape)
    {
        Shape = shape;
        long n = 1;
        foreach (var s in shape) n *= s;
        Data = new double[n];
    }

    public Grid(int[] shape, double[] data)
    {
        long n = 1;
        foreach (var s in shape) n *= s;
        if (n != data.Length) throw new ArgumentException($"grid data has {data.Length} values, shape [{string.Join(", ", shape)}] needs {n}");
        Shape = shape; Data = data;
    }

    public int Rank => Shape.Length;

    public double this[int i, int j]
    {
        get => Data[i * Shape[1] + j];
        set => Data[i * Shape[1] + j] = value;
    }

    public double this[int i, int j, int k]
    {
        get => Data[(i * Shape[1] + j) * Shape[2] + k];
        set => Data[(i * Shape[1] + j) * Shape[2] + k] = value;
    }

    /// <summary>A grid of the same shape filled with f(value).</summary>
    public Grid Map(Func<double, double> f)
    {
        var g = new Grid((int[])Shape.Clone());
        for (int i = 0; i < Data.Length; i++) g.Data[i] = f(Data[i]);
        return g;
    }

    public Grid Fill(double v)
    {
        Array.Fill(Data, v);
        return this;
    }

    /// <summary>Rows [Shape[0]][rest] of a rank-2 grid as jagged arrays (for tests and plots).</summary>
    public double[][] ToRows()
    {
        if (Rank != 2) throw new InvalidOperationException($"grid of rank {Rank} is not a matrix");
        var r = new double[Shape[0]][];
        for (int i = 0; i < Shape[0]; i++) r[i] = Data.AsSpan(i * Shape[1], Shape[1]).ToArray();
        return r;
    }

    /// <summary>Rank-3 grid sliced at index k of the last axis, as a [Shape[0]][Shape[1]] matrix.</summary>
    public Grid SliceLast(int k)
    {
        if (Rank != 3) throw new InvalidOperationException($"grid of rank {Rank} has no third axis");
        var g = new Grid(Shape[0], Shape[1]);
        for (int i = 0; i < Shape[0]; i++)
            for (int j = 0; j < Shape[1]; j++) g[i, j] = this[i, j, k];
        return g;
    }
}
