using System.Runtime.InteropServices;

namespace Engine.Peers;

/// <summary>
/// Drops a file's clean, unmapped pages from the page cache (posix_fadvise POSIX_FADV_DONTNEED, Linux), so that the next
/// mapping faults it in afresh. The engine advises its weight mappings MADV_HUGEPAGE (src/Loader/HugePages.cs), which
/// makes the page cache read a file in 2 MiB folios, but only for pages not cached yet: a file written or read before
/// stays in the small folios it was cached in. Measured 2026-12-07 (GPT-2-small F16, engine profile): 110 of 242 MB of
/// the weights mapped in 2 MiB pages before the drop, 229 MB after; decode 108-115 -> 121-127 tokens/s; the input-major
/// matrix-vector products 26-31 -> 31-36 GB/s. Without the drop a run's figures depend on how the file happened to be
/// cached. llama.cpp maps its GGUF without that advice (4 KiB pages either way).
/// </summary>
public static class PageCache
{
    const int FadvDontNeed = 4;

    [DllImport("libc", EntryPoint = "posix_fadvise", SetLastError = true)]
    static extern int PosixFadvise(int fd, long offset, long length, int advice);

    /// <summary>Drops the cached pages of <paramref name="path"/>; false when this is not Linux or the call failed.</summary>
    public static bool Drop(string path)
    {
        if (!OperatingSystem.IsLinux() || !File.Exists(path)) return false;
        try
        {
            using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            return PosixFadvise((int)fs.SafeFileHandle.DangerousGetHandle(), 0, 0, FadvDontNeed) == 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException) { return false; }
    }
}
