using System.Runtime.InteropServices;

namespace Engine.Peers.Peers;

/// <summary>
/// Debian's OpenBLAS (libopenblas0-pthread) through function pointers from NativeLibrary, so a machine without it is
/// detected (and the peer skipped with a visible note) instead of failing at the first call. OpenBLAS reads
/// OPENBLAS_CORETYPE / OPENBLAS_NUM_THREADS when it is loaded, so they are set in the native environment (libc setenv)
/// before loading: .NET's Environment.SetEnvironmentVariable does not reach native getenv.
/// </summary>
public static unsafe class OpenBlas
{
    const int RowMajor = 101, NoTrans = 111, Trans = 112;
    static readonly string[] Candidates = ["libopenblas.so.0", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0", "libopenblas.so"];

    static delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void> s_sgemm;
    static delegate* unmanaged<int, int, int, int, float, float*, int, float*, int, float, float*, int, void> s_sgemv;
    static delegate* unmanaged<int, void> s_setThreads;
    static delegate* unmanaged<int> s_getThreads;
    static delegate* unmanaged<byte*> s_coreName;
    static delegate* unmanaged<byte*> s_config;

    public static string? LoadedFrom { get; private set; }
    public static string? Error { get; private set; }

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>The OPENBLAS_CORETYPE the library was loaded with (null: none, it detected the CPU itself).</summary>
    public static string? CoreType { get; private set; }

    /// <summary>
    /// Loads the library (once) with OPENBLAS_CORETYPE = coreType ("env": the environment's value, if any) and
    /// OPENBLAS_NUM_THREADS = threads unless that is set. The core type overrides the environment: a machine-wide
    /// OPENBLAS_CORETYPE=Haswell (seen here) would otherwise hold OpenBLAS to its AVX2 kernels on an AVX-512 CPU.
    /// </summary>
    public static bool TryLoad(string coreType, int threads)
    {
        if (LoadedFrom != null) return true;
        if (Error != null) return false;
        try
        {
            if (coreType != "env") SetEnv("OPENBLAS_CORETYPE", coreType, 1);
            CoreType = coreType != "env" ? coreType : Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE");
            if (Environment.GetEnvironmentVariable("OPENBLAS_NUM_THREADS") == null) SetEnv("OPENBLAS_NUM_THREADS", threads.ToString(), 0);
        }
        catch (Exception e) { Error = $"cannot set OPENBLAS_CORETYPE in the native environment ({e.Message})"; return false; }
        foreach (var name in Candidates)
        {
            if (!NativeLibrary.TryLoad(name, out var h)) continue;
            try
            {
                s_sgemm = (delegate* unmanaged<int, int, int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)NativeLibrary.GetExport(h, "cblas_sgemm");
                s_sgemv = (delegate* unmanaged<int, int, int, int, float, float*, int, float*, int, float, float*, int, void>)NativeLibrary.GetExport(h, "cblas_sgemv");
                s_setThreads = (delegate* unmanaged<int, void>)NativeLibrary.GetExport(h, "openblas_set_num_threads");
                s_getThreads = (delegate* unmanaged<int>)NativeLibrary.GetExport(h, "openblas_get_num_threads");
                s_coreName = (delegate* unmanaged<byte*>)NativeLibrary.GetExport(h, "openblas_get_corename");
                s_config = (delegate* unmanaged<byte*>)NativeLibrary.GetExport(h, "openblas_get_config");
            }
            catch (EntryPointNotFoundException e) { Error = $"{name}: {e.Message}"; return false; }
            s_setThreads(threads);
            LoadedFrom = name;
            return true;
        }
        Error = "libopenblas.so.0 not found (Debian: apt-get install libopenblas0-pthread)";
        return false;
    }

    public static string CoreName => Marshal.PtrToStringUTF8((nint)s_coreName()) ?? "?";
    public static string Config => Marshal.PtrToStringUTF8((nint)s_config()) ?? "?";
    public static int Threads => s_getThreads();

    /// <summary>y[T, N] = x[T, K] · W, W stored [K, N] (inputMajor) or [N, K]; T = 1 goes to sgemv.</summary>
    public static void MatMul(float* x, int T, int K, int N, float* w, bool inputMajor, float* y)
    {
        if (T == 1)
        {
            if (inputMajor) s_sgemv(RowMajor, Trans, K, N, 1f, w, N, x, 1, 0f, y, 1);
            else s_sgemv(RowMajor, NoTrans, N, K, 1f, w, K, x, 1, 0f, y, 1);
        }
        else s_sgemm(RowMajor, NoTrans, inputMajor ? NoTrans : Trans, T, N, K, 1f, x, K, w, inputMajor ? N : K, 0f, y, N);
    }
}
