using System.Reflection;
using System.Runtime.InteropServices;
using Engine.Loader;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Half = ILGPU.Half;

namespace Engine.Kernels.Ilgpu;

/// <summary>
/// Launch shapes of the kernels on one accelerator. The kernels are correct for any of them (tiles, warps and rows per
/// warp are kernel parameters); they trade parallelism against synchronisation. On CUDA: 16x16-thread matmul groups
/// (64x64 tiles), one warp per decode row, 4 flash-attention warps per group. On ILGPU's CPU accelerator every thread
/// of a group is an OS thread and a barrier costs about 0.5 ms, so groups stay at one warp and a decode warp owns 32
/// rows (one barrier per 32 rows).
/// </summary>
public sealed record Tuning(int TileX, int TileY, int GemvWarps, int GemvRowsPerWarp, int GemvInWarps, int FlatGroup, int FlatMaxGroups, int AttnWarps)
{
    public static readonly Tuning Cuda = new(16, 16, 8, 1, 8, 256, 1 << 16, 4);
    public static readonly Tuning Cpu = new(8, 4, 1, 32, 1, 32, 64, 1);

    internal void Validate()
    {
        if (TileX < 1 || TileY < 1 || 4 * TileX > MatMulKernels.MaxTile || 4 * TileY > MatMulKernels.MaxTile)
            throw new ArgumentException($"matmul tile {TileX}x{TileY} threads: at most {MatMulKernels.MaxTile / 4} per side");
        if (GemvWarps * GemvRowsPerWarp > 32 || GemvWarps < 1 || GemvRowsPerWarp < 1 || GemvInWarps < 1 || GemvInWarps > 32)
            throw new ArgumentException("GEMV: warps x rows per warp must be at most 32");
        if (AttnWarps < 1 || AttnWarps > AttentionKernels.FlashMaxWarps)
            throw new ArgumentException($"flash attention: 1 to {AttentionKernels.FlashMaxWarps} warps per group");
    }
}

/// <summary>
/// One ILGPU accelerator with its compiled kernels, shared by every <see cref="IlgpuBackend"/> on it. Kernels are
/// compiled on first use and cached (each SpecializedValue combination once, by ILGPU). The process-wide instances
/// (<see cref="Cpu"/>, <see cref="Cuda"/>) and their contexts are disposed at process exit.
/// </summary>
public sealed class IlgpuDevice : IDisposable
{
    static readonly object Gate = new();
    static IlgpuDevice? s_cpu, s_cuda;
    static Context? s_cpuContext, s_cudaContext;
    static bool s_exitHooked, s_resolverSet;

    public Accelerator Accelerator { get; }
    public Tuning Tuning { get; }
    public bool IsCuda => Accelerator.AcceleratorType == AcceleratorType.Cuda;
    public string Description { get; }
    readonly bool _ownsAccelerator;
    internal readonly object LaunchGate = new();

    IlgpuDevice(Accelerator acc, Tuning tuning, bool owns)
    {
        tuning.Validate();
        Accelerator = acc;
        Tuning = tuning;
        _ownsAccelerator = owns;
        Description = $"{acc.Name} ({acc.AcceleratorType}, warp {acc.WarpSize}, {acc.MaxNumThreadsPerGroup} threads/group)";
        _k = new Kernels(acc);
        DummyF = acc.Allocate1D<float>(1);
        DummyH = acc.Allocate1D<Half>(1);
        DummyB = acc.Allocate1D<ushort>(1);
    }

    internal readonly MemoryBuffer1D<float, Stride1D.Dense> DummyF;
    internal readonly MemoryBuffer1D<Half, Stride1D.Dense> DummyH;
    internal readonly MemoryBuffer1D<ushort, Stride1D.Dense> DummyB;

    /// <summary>The context options every accelerator here uses (also the offline PTX check).</summary>
    public static Context CreateContext(Action<Context.Builder> devices) =>
        Context.Create(b =>
        {
            devices(b);
            b.EnableAlgorithms().Optimize(OptimizationLevel.O1);
        });

    /// <summary>The CPU context (created once; also used by the offline PTX compile).</summary>
    public static Context CpuContext
    {
        get
        {
            lock (Gate)
            {
                HookExit();
                return s_cpuContext ??= CreateContext(b => b.CPU(CPUDeviceKind.Nvidia));
            }
        }
    }

    /// <summary>ILGPU's CPU accelerator with CUDA-like groups (warp 32, up to 1024 threads per group).</summary>
    public static IlgpuDevice Cpu
    {
        get
        {
            lock (Gate)
            {
                if (s_cpu != null) return s_cpu;
                var ctx = CpuContext;
                var acc = ((CPUDevice)ctx.GetCPUDevice(0)).CreateCPUAccelerator(ctx, CPUAcceleratorMode.Parallel);
                return s_cpu = new IlgpuDevice(acc, Tuning.Cpu, owns: true);
            }
        }
    }

    /// <summary>A separate CPU accelerator with the given tuning (tests of launch shapes; dispose it).</summary>
    public static IlgpuDevice CreateCpu(Tuning tuning)
    {
        var ctx = CpuContext;
        var acc = ((CPUDevice)ctx.GetCPUDevice(0)).CreateCPUAccelerator(ctx, CPUAcceleratorMode.Parallel);
        return new IlgpuDevice(acc, tuning, owns: true);
    }

    /// <summary>CUDA device 0. Throws a <see cref="UsageException"/> naming what ILGPU saw when there is none.</summary>
    public static IlgpuDevice Cuda
    {
        get
        {
            lock (Gate)
            {
                if (s_cuda != null) return s_cuda;
                HookExit();
                SetCudaResolver();
                if (s_cudaContext == null)
                {
                    try { s_cudaContext = CreateContext(b => b.Cuda()); }
                    catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or TypeInitializationException or InvalidOperationException or NotSupportedException)
                    {
                        throw new UsageException($"--backend ilgpu-cuda: no CUDA device found (ILGPU could not initialise CUDA: {e.GetBaseException().Message})");
                    }
                }
                var ctx = s_cudaContext;
                if (ctx.GetCudaDevices().Count == 0)
                {
                    string saw = string.Join(", ", ctx.Devices.Select(d => $"{d.Name} [{d.AcceleratorType}]"));
                    throw new UsageException($"--backend ilgpu-cuda: no CUDA device found (ILGPU saw: {(saw.Length == 0 ? "no devices" : saw)}; " +
                        "a driver older than the GPU's architecture needs is dropped silently by ILGPU, see src/Kernels.Ilgpu/README.md)");
                }
                var acc = ctx.CreateCudaAccelerator(0);
                return s_cuda = new IlgpuDevice(acc, Tuning.Cuda, owns: true);
            }
        }
    }

    static int? s_cudaCount;

    /// <summary>What probing for CUDA found, in words (for skip reasons and errors).</summary>
    public static string CudaProbe { get; private set; } = "not probed";

    /// <summary>CUDA devices ILGPU can use (0 when the driver is missing or too old); never throws.</summary>
    public static int CudaDeviceCount()
    {
        lock (Gate)
        {
            if (s_cudaCount is { } c) return c;
            try
            {
                SetCudaResolver();
                using var ctx = Context.Create(b => b.Cuda());
                c = ctx.GetCudaDevices().Count;
                string saw = string.Join(", ", ctx.Devices.Select(d => $"{d.Name} [{d.AcceleratorType}]"));
                CudaProbe = "ILGPU saw: " + (saw.Length == 0 ? "no devices" : saw);
            }
            catch (Exception e)
            {
                c = 0;
                CudaProbe = "ILGPU could not initialise CUDA: " + e.GetBaseException().Message;
            }
            s_cudaCount = c;
            return c;
        }
    }

    /// <summary>
    /// ILGPU binds DllImport("cuda") = libcuda.so; hosts with only the driver's libcuda.so.1 (no -dev symlink) need a
    /// resolver. One resolver per assembly is allowed: set once, and leave an existing one alone.
    /// </summary>
    static void SetCudaResolver()
    {
        if (s_resolverSet || !OperatingSystem.IsLinux()) return;
        s_resolverSet = true;
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(Context).Assembly, static (name, asm, path) =>
            {
                if (name != "cuda") return IntPtr.Zero;
                foreach (var candidate in new[] { "libcuda.so", "libcuda.so.1" })
                    if (NativeLibrary.TryLoad(candidate, asm, path, out var h)) return h;
                return IntPtr.Zero;
            });
        }
        catch (InvalidOperationException) { /* a resolver is already set (e.g. ILGPU's own on WSL) */ }
    }

    static void HookExit()
    {
        if (s_exitHooked) return;
        s_exitHooked = true;
        AppDomain.CurrentDomain.ProcessExit += (_, _) => DisposeShared();
    }

    /// <summary>Disposes the process-wide accelerators and contexts (at process exit; safe to call twice).</summary>
    public static void DisposeShared()
    {
        lock (Gate)
        {
            try
            {
                s_cpu?.DisposeCore(); s_cpu = null;
                s_cuda?.DisposeCore(); s_cuda = null;
                s_cpuContext?.Dispose(); s_cpuContext = null;
                s_cudaContext?.Dispose(); s_cudaContext = null;
            }
            catch (Exception) { /* process exit: nothing left to report to */ }
        }
    }

    /// <summary>Shared instances are disposed at process exit only; instances from <see cref="CreateCpu"/> here.</summary>
    public void Dispose()
    {
        if (ReferenceEquals(this, s_cpu) || ReferenceEquals(this, s_cuda)) return;
        DisposeCore();
    }

    void DisposeCore()
    {
        DummyF.Dispose(); DummyH.Dispose(); DummyB.Dispose();
        if (_ownsAccelerator) Accelerator.Dispose();
    }

    // ------------------------------------------------------------------ kernels (compiled on first use)

    internal Kernels K => _k;
    readonly Kernels _k;

    internal sealed class Kernels(Accelerator a)
    {
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>>> _mm =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
                SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>>(MatMulKernels.MatMulTiled));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>>> _gemvOut =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
                SpecializedValue<int>, SpecializedValue<int>>(MatMulKernels.GemvOutMajor));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>>> _gemvIn =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
                SpecializedValue<int>, SpecializedValue<int>>(MatMulKernels.GemvInMajor));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, int>> _layerNorm =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, int>(ElementwiseKernels.LayerNorm));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float>> _rmsNorm =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float>(ElementwiseKernels.RmsNorm));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>> _rope =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(ElementwiseKernels.Rope));
        readonly Lazy<Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>>> _gather =
            new(() => a.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>>(ElementwiseKernels.Gather));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>>> _widen =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>>(ElementwiseKernels.Widen));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>>> _act =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>>(ElementwiseKernels.Activation));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>>> _gated =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>>(ElementwiseKernels.Gated));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int>> _add =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int>(ElementwiseKernels.Add));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, int, float>> _scale =
            new(() => a.LoadStreamKernel<ArrayView<float>, int, float>(ElementwiseKernels.Scale));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>> _split =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int>(ElementwiseKernels.SplitQkv));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, float, SpecializedValue<int>>> _intervene =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, float, SpecializedValue<int>>(ElementwiseKernels.Intervene));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims>> _scores =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims>(AttentionKernels.ScoresKernel));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, AttnDims>> _softmax =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, AttnDims>(AttentionKernels.SoftmaxKernel));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims>> _mix =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims>(AttentionKernels.MixKernel));
        readonly Lazy<Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims, SpecializedValue<int>>> _flash =
            new(() => a.LoadStreamKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims, SpecializedValue<int>>(AttentionKernels.FlashKernel));

        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>, SpecializedValue<int>> MatMul => _mm.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>> GemvOut => _gemvOut.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, ArrayView<float>, MatMulDims,
            SpecializedValue<int>, SpecializedValue<int>> GemvIn => _gemvIn.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, int> LayerNorm => _layerNorm.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, float, float> RmsNorm => _rmsNorm.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int> Rope => _rope.Value;
        public Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>> Gather => _gather.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<Half>, ArrayView<ushort>, ArrayView<float>, int, int, SpecializedValue<int>> Widen => _widen.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>> Activation => _act.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, SpecializedValue<int>> Gated => _gated.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, int> Add => _add.Value;
        public Action<KernelConfig, ArrayView<float>, int, float> Scale => _scale.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, int, int, int, int, int> Split => _split.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, int, int, int, int, int, int, float, SpecializedValue<int>> Intervene => _intervene.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims> Scores => _scores.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, AttnDims> Softmax => _softmax.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims> Mix => _mix.Value;
        public Action<KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AttnDims, SpecializedValue<int>> Flash => _flash.Value;
    }

    /// <summary>
    /// Compiles one kernel to PTX for a CUDA architecture without a GPU or driver (ILGPU's PTX backend on the CPU
    /// context), e.g. sm_90 with ISA 8.4 for an H100. Specialised parameters stay runtime values here.
    /// </summary>
    public static string CompilePtx(MethodInfo kernel, CudaArchitecture architecture, CudaInstructionSet isa)
    {
        var backend = new ILGPU.Backends.PTX.PTXBackend(CpuContext, architecture, isa, null!);
        try
        {
            var entry = ILGPU.Backends.EntryPoints.EntryPointDescription.FromExplicitlyGroupedKernel(kernel);
            var compiled = backend.Compile(entry, default(KernelSpecialization));
            return ((ILGPU.Backends.PTX.PTXCompiledKernel)compiled).PTXAssembly;
        }
        finally { (backend as IDisposable)?.Dispose(); }
    }

    /// <summary>Every kernel method of the backend with its launch style, for the offline PTX compile check.</summary>
    public static IReadOnlyList<MethodInfo> KernelMethods { get; } =
    [
        typeof(MatMulKernels).GetMethod(nameof(MatMulKernels.MatMulTiled))!,
        typeof(MatMulKernels).GetMethod(nameof(MatMulKernels.GemvOutMajor))!,
        typeof(MatMulKernels).GetMethod(nameof(MatMulKernels.GemvInMajor))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.LayerNorm))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.RmsNorm))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Rope))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Gather))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Widen))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Activation))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Gated))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Add))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Scale))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.SplitQkv))!,
        typeof(ElementwiseKernels).GetMethod(nameof(ElementwiseKernels.Intervene))!,
        typeof(AttentionKernels).GetMethod(nameof(AttentionKernels.ScoresKernel))!,
        typeof(AttentionKernels).GetMethod(nameof(AttentionKernels.SoftmaxKernel))!,
        typeof(AttentionKernels).GetMethod(nameof(AttentionKernels.MixKernel))!,
        typeof(AttentionKernels).GetMethod(nameof(AttentionKernels.FlashKernel))!,
    ];
}
