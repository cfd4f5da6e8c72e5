using System.Reflection;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Environments;
using BenchmarkDotNet.Exporters;
using BenchmarkDotNet.Exporters.Json;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;

namespace Engine.Bench;

/// <summary>
/// Per-op benchmarks of the kernels (BenchmarkDotNet). Every benchmark reports its FLOP and byte counts, from which the
/// GFLOP/s, GB/s and "fraction of the machine's peak" columns are computed (peaks: ../shared/PERF.md, 2 threads,
/// overridable with ENGINE_PEAK_GFLOPS / ENGINE_PEAK_GBS).
///   dotnet run -c Release --project bench/Engine.Bench -- --filter '*MatMul*' [--job short] [--isa]
/// --isa adds jobs with AVX-512 and AVX2 turned off (the 256- and 128-bit paths).
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "sweeps") return SweepBenchmarks.Run(args[1..]);   // not BenchmarkDotNet: see SweepBenchmarks
        if (args.Length > 0 && args[0] == "gemv") return GemvBench.Run(args[1..]);           // matrix-vector from memory, vs a plain read
        bool isa = args.Contains("--isa");
        args = args.Where(a => a != "--isa").ToArray();
        var config = ManualConfig.Create(DefaultConfig.Instance)
            .AddColumn(new ThroughputColumn(ThroughputColumn.Kind.GFlops), new ThroughputColumn(ThroughputColumn.Kind.GBytes), new ThroughputColumn(ThroughputColumn.Kind.PeakFraction))
            .AddExporter(JsonExporter.Full, MarkdownExporter.GitHub)
            .WithOptions(ConfigOptions.DisableOptimizationsValidator);
        if (isa)
        {
            var baseJob = Job.Default.WithId("avx512");
            config = config.AddJob(baseJob.AsBaseline())
                .AddJob(Job.Default.WithId("no-avx512").WithEnvironmentVariables(new EnvironmentVariable("DOTNET_EnableAVX512F", "0"), new EnvironmentVariable("DOTNET_EnableAVX512", "0")))
                .AddJob(Job.Default.WithId("no-avx2").WithEnvironmentVariables(new EnvironmentVariable("DOTNET_EnableAVX2", "0")));
        }
        var summaries = BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
        return summaries.Any(s => s.HasCriticalValidationErrors) ? 1 : 0;
    }
}

/// <summary>Implemented by benchmark classes: the FLOPs and bytes of one invocation at the current parameters.</summary>
public interface IOpSize
{
    double Flops { get; }
    double Bytes { get; }
}

/// <summary>GFLOP/s, GB/s and the fraction of the machine's peak, from the median time and the benchmark's op size.</summary>
public sealed class ThroughputColumn(ThroughputColumn.Kind kind) : IColumn
{
    public enum Kind { GFlops, GBytes, PeakFraction }

    public static double PeakGFlops => double.TryParse(Environment.GetEnvironmentVariable("ENGINE_PEAK_GFLOPS"), out var v) ? v : 360;
    public static double PeakGBytes => double.TryParse(Environment.GetEnvironmentVariable("ENGINE_PEAK_GBS"), out var v) ? v : 31.6;

    public string Id => "Throughput." + kind;
    public string ColumnName => kind switch { Kind.GFlops => "GFLOP/s", Kind.GBytes => "GB/s", _ => "of peak" };
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => (int)kind;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => kind switch
    {
        Kind.GFlops => "billions of floating-point operations per second (median time)",
        Kind.GBytes => "bytes of weights/inputs/outputs moved per second (median time)",
        _ => $"the larger of GFLOP/s / {PeakGFlops} and GB/s / {PeakGBytes} (PERF.md, 2 threads)",
    };
    public bool IsAvailable(Summary summary) => true;
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics == null) return "-";
        var size = OpSizeOf(benchmarkCase);
        if (size == null) return "-";
        double seconds = report.ResultStatistics.Median * 1e-9;
        double gflops = size.Value.Flops / seconds / 1e9, gbs = size.Value.Bytes / seconds / 1e9;
        return kind switch
        {
            Kind.GFlops => gflops.ToString("F1"),
            Kind.GBytes => gbs.ToString("F2"),
            _ => Math.Max(gflops / PeakGFlops, gbs / PeakGBytes).ToString("P0"),
        };
    }

    /// <summary>Instantiates the benchmark class, applies the case's parameters and reads its op size.</summary>
    static (double Flops, double Bytes)? OpSizeOf(BenchmarkCase c)
    {
        var type = c.Descriptor.Type;
        if (!typeof(IOpSize).IsAssignableFrom(type)) return null;
        var instance = (IOpSize)Activator.CreateInstance(type)!;
        foreach (var p in c.Parameters.Items)
        {
            var member = (MemberInfo?)type.GetProperty(p.Name) ?? type.GetField(p.Name);
            if (member is PropertyInfo pi) pi.SetValue(instance, p.Value);
            else if (member is FieldInfo fi) fi.SetValue(instance, p.Value);
        }
        return (instance.Flops, instance.Bytes);
    }
}
