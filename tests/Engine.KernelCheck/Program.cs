// Re-runs the op grid (tests/Engine.Tests/Kernels/OpGrid.*.cs) on every backend but "cpu-ref", plus the bitwise
// thread-count check of "cpu", and prints the instruction sets the runtime saw. Exit code 0 = all cases pass.
using System.Diagnostics;
using System.Runtime.Intrinsics;
using Engine.Kernels;
using Engine.Kernels.Simd;
using Engine.Kernels.Threading;
using Engine.Tests.Kernels;

string? op = null;
bool quiet = false;
for (int i = 0; i < args.Length; i++)
{
    if (args[i] == "--op" && i + 1 < args.Length) op = args[++i];
    else if (args[i] == "--quiet") quiet = true;
    else { Console.Error.WriteLine($"usage: Engine.KernelCheck [--op NAME-PREFIX] [--quiet] (unknown argument '{args[i]}')"); return 2; }
}

// The parent test parses this line.
Console.WriteLine($"isa Vector512={Vector512.IsHardwareAccelerated} Vector256={Vector256.IsHardwareAccelerated} Vector128={Vector128.IsHardwareAccelerated}");

var sw = Stopwatch.StartNew();
var cases = OpGrid.All.Where(c => op == null || c.ToString().StartsWith(op, StringComparison.Ordinal)).ToList();
var failures = new List<string>();
int checks = 0;
foreach (var backend in OpGrid.Backends)
{
    var k = KernelRegistry.Create(backend);
    foreach (var c in cases)
    {
        var f = OpGrid.Check(c, k);
        checks++;
        failures.AddRange(f);
        if (!quiet && f.Count > 0) Console.WriteLine($"FAIL {c} on '{backend}'");
    }
}
using (var pool1 = new WorkerPool(1))
using (var pool3 = new WorkerPool(3))
{
    IKernels one = new SimdKernels(pool1), three = new SimdKernels(pool3);
    foreach (var c in cases.Where(OpGrid.IsThreaded))
    {
        var f = OpGrid.CheckBitIdentical(c, one, "1 thread", three, "3 threads");
        checks++;
        failures.AddRange(f);
        if (!quiet && f.Count > 0) Console.WriteLine($"FAIL {c}: 1 vs 3 threads");
    }
}
foreach (var f in failures) Console.WriteLine(f);
Console.WriteLine($"checks {checks} failures {failures.Count} seconds {sw.Elapsed.TotalSeconds:F1}");
return failures.Count == 0 ? 0 : 1;
