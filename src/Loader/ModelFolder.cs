namespace Engine.Loader;

/// <summary>Finds a model folder from what a user typed: a folder path, or a Hugging Face repo id in the local cache.</summary>
public static class ModelFolder
{
    /// <summary>
    /// A folder that exists is used as is. Otherwise "ORG/NAME" (or "NAME") is looked up in the local Hugging Face cache
    /// ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) as models--ORG--NAME/snapshots/REV, taking the
    /// revision that refs/main points to, else the most recently written snapshot. Never touches the network.
    /// </summary>
    public static string Resolve(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) throw new UsageException("--model: empty model path");
        if (Directory.Exists(spec)) return Path.GetFullPath(spec);
        if (File.Exists(spec))
        {
            if (Path.GetFileName(spec) == "config.json" || spec.EndsWith(".safetensors", StringComparison.Ordinal))
                return Path.GetDirectoryName(Path.GetFullPath(spec))!;
            throw new UsageException($"--model {spec}: is a file; pass the model folder (with config.json)");
        }
        bool looksLikeRepo = !spec.StartsWith('.') && !spec.StartsWith('/') && !spec.Contains('\\') && spec.Count(ch => ch == '/') <= 1;
        if (looksLikeRepo)
        {
            string hub = HubCache();
            string repoDir = Path.Combine(hub, "models--" + spec.Replace("/", "--"));
            string snapshots = Path.Combine(repoDir, "snapshots");
            if (Directory.Exists(snapshots))
            {
                string? rev = null;
                string refMain = Path.Combine(repoDir, "refs", "main");
                if (File.Exists(refMain))
                {
                    string hash = File.ReadAllText(refMain).Trim();
                    if (hash.Length > 0 && Directory.Exists(Path.Combine(snapshots, hash))) rev = Path.Combine(snapshots, hash);
                }
                rev ??= new DirectoryInfo(snapshots).GetDirectories().OrderByDescending(d => d.LastWriteTimeUtc).FirstOrDefault()?.FullName;
                if (rev != null) return rev;
            }
            throw new UsageException($"--model {spec}: no such folder, and no snapshot of it in the Hugging Face cache {hub} (no network is used; download it first)");
        }
        throw new UsageException($"--model {spec}: no such folder");
    }

    public static string HubCache()
    {
        string? hubCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        if (!string.IsNullOrEmpty(hubCache)) return hubCache;
        string? home = Environment.GetEnvironmentVariable("HF_HOME");
        if (!string.IsNullOrEmpty(home)) return Path.Combine(home, "hub");
        string user = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(user, ".cache", "huggingface", "hub");
    }
}
