using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Engine.Loader;

namespace Engine.Cli.Commands;

/// <summary>
/// engine pull ORG/NAME: downloads a Hugging Face model repo into the standard Hugging Face cache layout
/// (models--ORG--NAME/{blobs, refs/REVISION, snapshots/COMMIT/...}, snapshot files linked to blobs), so that
/// <c>--model ORG/NAME</c> finds it offline. The file list and commit come from {endpoint}/api/models/{repo}/revision/{rev},
/// files from {endpoint}/{repo}/resolve/{commit}/{path}. Resumable (blobs/NAME.incomplete + Range requests), checked
/// (LFS sha256, git blob sha1, sizes), HF_TOKEN sent as a bearer token, one-line errors when offline.
/// </summary>
public static class PullCommand
{
    /// <summary>What the engine reads from a model folder; --all takes every file of the repo.</summary>
    public const string DefaultInclude = "*.json,*.safetensors,tokenizer.model,merges.txt,*.tiktoken";

    public static CommandSpec Spec { get; } = new("pull", "download a Hugging Face model repo into the local Hugging Face cache (then --model ORG/NAME works offline)",
        "engine pull ORG/NAME [--revision R] [--include GLOBS | --all] [--endpoint URL] [--cache DIR] [--json]\n\n" +
        "Files go to the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub) as\n" +
        "models--ORG--NAME/blobs/HASH with snapshots/COMMIT/PATH linking to them, as huggingface_hub lays them out.\n" +
        "Interrupted downloads resume (blobs/HASH.incomplete); files already there are not fetched again. The hub is\n" +
        "$HF_ENDPOINT (default https://huggingface.co); $HF_TOKEN is sent for gated and private repos.",
        [new("--repo", "the repo id ORG/NAME (or give it as the first argument)", ValueName: "ORG/NAME"),
         new("--revision", "branch, tag or commit", ValueName: "R", Default: "main"),
         new("--include", "comma-separated globs of the files to fetch", ValueName: "GLOBS", Default: DefaultInclude),
         new("--all", "fetch every file of the repo", IsFlag: true),
         new("--endpoint", "hub URL (default: $HF_ENDPOINT or https://huggingface.co)", ValueName: "URL"),
         new("--cache", "hub cache folder (default: $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub)", ValueName: "DIR"),
         new("--timeout", "seconds without progress before a request is abandoned", ValueName: "S", Default: "60"),
         Common.JsonOption], Run);

    /// <summary>The repo id may come first, as in `engine pull ORG/NAME`: rewritten to --repo ORG/NAME.</summary>
    public static string[] Normalize(string[] args) =>
        args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal) ? ["--repo", args[0], .. args[1..]] : args;

    sealed record RemoteFile(string Path, long? Size, string? Sha256, string? BlobId);

    static int Run(CliArgs a)
    {
        string repo = a.Get("--repo") ?? throw new UsageException("engine pull: give the repo id, e.g. engine pull gpt2 or engine pull ORG/NAME");
        CheckRepoId(repo);
        string revision = a.Get("--revision")!;
        if (revision.Length == 0 || revision.Contains("..") || revision.IndexOfAny(['\\', '\0', ' ']) >= 0)
            throw new UsageException($"--revision: '{revision}' is not a branch, tag or commit");
        string? envEndpoint = Environment.GetEnvironmentVariable("HF_ENDPOINT");
        string endpoint = (a.Get("--endpoint") ?? (string.IsNullOrWhiteSpace(envEndpoint) ? "https://huggingface.co" : envEndpoint.Trim())).TrimEnd('/');
        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var baseUri) || (baseUri.Scheme != "http" && baseUri.Scheme != "https"))
            throw new UsageException($"--endpoint: '{endpoint}' is not an http(s) URL");
        if (Environment.GetEnvironmentVariable("HF_HUB_OFFLINE") is "1" or "true" or "TRUE" or "yes")
            throw new UsageException("engine pull: HF_HUB_OFFLINE is set; unset it to download");
        string hub = a.Get("--cache") ?? ModelFolder.HubCache();
        int timeout = a.Int("--timeout", 60, 1, 86_400);
        var include = a.Flag("--all") ? ["*"] : a.Get("--include")!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (include.Length == 0) throw new UsageException("--include: no patterns given");

        using var http = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = true, AutomaticDecompression = DecompressionMethods.None, ConnectTimeout = TimeSpan.FromSeconds(timeout) })
        {
            Timeout = Timeout.InfiniteTimeSpan,
        };
        http.DefaultRequestHeaders.UserAgent.ParseAdd("engine-pull/1");
        string? token = Environment.GetEnvironmentVariable("HF_TOKEN") ?? Environment.GetEnvironmentVariable("HUGGING_FACE_HUB_TOKEN");
        if (!string.IsNullOrWhiteSpace(token)) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token.Trim());

        // ---- the file list and the commit
        string apiUrl = $"{endpoint}/api/models/{repo}/revision/{Uri.EscapeDataString(revision)}?blobs=true";
        var (commit, files) = FetchInfo(http, apiUrl, repo, revision, timeout);
        var wanted = files.Where(f => include.Any(g => Engine.Runtime.HookPoints.Glob(g, f.Path) || Engine.Runtime.HookPoints.Glob(g, System.IO.Path.GetFileName(f.Path)))).ToList();
        if (wanted.Count == 0)
            throw new UsageException($"engine pull {repo}: no file of revision {revision} matches {string.Join(",", include)} (the repo has {files.Count} files; --all takes every one)");

        string repoDir = System.IO.Path.Combine(hub, "models--" + repo.Replace("/", "--"));
        string blobs = System.IO.Path.Combine(repoDir, "blobs"), snapshot = System.IO.Path.Combine(repoDir, "snapshots", commit);
        try
        {
            Directory.CreateDirectory(blobs);
            Directory.CreateDirectory(snapshot);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"--cache: cannot create '{repoDir}' ({e.Message})");
        }

        long total = wanted.Sum(f => f.Size ?? 0), done = 0;
        var progress = new ProgressLine(a.Err, $"pull {repo}", "bytes");
        var results = new List<(RemoteFile File, string Blob, long Size, bool Fetched)>();
        foreach (var f in wanted)
        {
            string link = SafeJoin(snapshot, f.Path, repo);
            string? blobName = f.Sha256 ?? f.BlobId;
            if (blobName != null && File.Exists(System.IO.Path.Combine(blobs, blobName)) && File.Exists(link))
            {
                long have = new FileInfo(System.IO.Path.Combine(blobs, blobName)).Length;
                done += f.Size ?? have;
                results.Add((f, blobName, have, false));
                continue;
            }
            string url = $"{endpoint}/{repo}/resolve/{commit}/{string.Join("/", f.Path.Split('/').Select(Uri.EscapeDataString))}";
            var (blob, size) = Download(http, url, f, blobs, timeout, repo, revision, bytes => progress.Report(done + bytes, Math.Max(total, done + bytes)));
            done += size;
            Link(link, System.IO.Path.Combine(blobs, blob));
            results.Add((f, blob, size, true));
        }
        progress.Report(Math.Max(done, total), Math.Max(done, total));
        progress.Close();
        if (!string.Equals(revision, commit, StringComparison.Ordinal))
        {
            string refPath = SafeJoin(System.IO.Path.Combine(repoDir, "refs"), revision, repo);
            Directory.CreateDirectory(System.IO.Path.GetDirectoryName(refPath)!);
            AtomicFile.WriteText(refPath, commit);
        }

        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.WriteNumber("schema_version", 1);
                w.WriteString("command", "pull");
                w.WriteString("repo", repo);
                w.WriteString("revision", revision);
                w.WriteString("commit", commit);
                w.WriteString("folder", snapshot);
                w.WriteStartArray("files");
                foreach (var (f, blob, size, fetched) in results)
                {
                    w.WriteStartObject();
                    w.WriteString("path", f.Path);
                    w.WriteNumber("size", size);
                    w.WriteString("blob", blob);
                    w.WriteBoolean("downloaded", fetched);
                    if (f.Sha256 != null) w.WriteString("sha256", f.Sha256);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            });
        }
        else
        {
            int fetched = results.Count(r => r.Fetched);
            a.Out.WriteLine($"{repo} @ {revision} (commit {commit}): {results.Count} files, {fetched} downloaded, {results.Count - fetched} already cached, {results.Sum(r => r.Size) / 1048576.0:F1} MiB");
            a.Out.WriteLine($"snapshot: {snapshot}");
            a.Out.WriteLine($"next: engine info --model {repo}");
        }
        return 0;
    }

    static void CheckRepoId(string repo)
    {
        var parts = repo.Split('/');
        bool ok = parts.Length is 1 or 2 && parts.All(p => p.Length > 0 && p.Length <= 96 && p != "." && p != ".." && !p.Contains("--")
            && p.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '-' or '_' or '.'));
        if (!ok) throw new UsageException($"engine pull: '{repo}' is not a Hugging Face repo id (ORG/NAME: letters, digits, '-', '_', '.')");
    }

    /// <summary>folder/relative, refusing paths that leave the folder (a hostile file list).</summary>
    static string SafeJoin(string folder, string relative, string repo)
    {
        string full = System.IO.Path.GetFullPath(System.IO.Path.Combine(folder, relative));
        string root = System.IO.Path.GetFullPath(folder) + System.IO.Path.DirectorySeparatorChar;
        if (relative.Length == 0 || System.IO.Path.IsPathRooted(relative) || !full.StartsWith(root, StringComparison.Ordinal))
            throw new UsageException($"engine pull {repo}: the hub lists a file '{relative}' outside the repo folder; refused");
        return full;
    }

    static (string Commit, List<RemoteFile> Files) FetchInfo(HttpClient http, string url, string repo, string revision, int timeout)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(timeout));
        HttpResponseMessage resp;
        try { resp = http.GetAsync(url, HttpCompletionOption.ResponseContentRead, cts.Token).GetAwaiter().GetResult(); }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException or IOException)
        {
            throw new UsageException($"engine pull {repo}: cannot reach {new Uri(url).GetLeftPart(UriPartial.Authority)} ({Reason(e)}); offline? models already downloaded still load with --model {repo}");
        }
        using (resp)
        {
            CheckStatus(resp, repo, revision, "the file list");
            string body = resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
            try
            {
                using var doc = JsonDocument.Parse(body, new JsonDocumentOptions { MaxDepth = 32 });
                var root = doc.RootElement;
                string commit = root.TryGetProperty("sha", out var sha) && sha.ValueKind == JsonValueKind.String ? sha.GetString()! : throw new FormatException("no 'sha'");
                if (commit.Length == 0 || commit.Any(ch => !char.IsAsciiLetterOrDigit(ch))) throw new FormatException($"'sha' {commit} is not a commit hash");
                if (!root.TryGetProperty("siblings", out var sib) || sib.ValueKind != JsonValueKind.Array) throw new FormatException("no 'siblings' list");
                var files = new List<RemoteFile>();
                foreach (var s in sib.EnumerateArray())
                {
                    string path = s.GetProperty("rfilename").GetString() ?? throw new FormatException("a sibling without 'rfilename'");
                    long? size = s.TryGetProperty("size", out var sz) && sz.TryGetInt64(out long szv) ? szv : null;
                    string? blobId = s.TryGetProperty("blobId", out var b) && b.ValueKind == JsonValueKind.String ? b.GetString() : null;
                    string? sha256 = null;
                    if (s.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object)
                    {
                        sha256 = lfs.TryGetProperty("sha256", out var h) && h.ValueKind == JsonValueKind.String ? h.GetString() : null;
                        if (lfs.TryGetProperty("size", out var ls) && ls.TryGetInt64(out long lsv)) size = lsv;
                    }
                    if (sha256 != null && (sha256.Length != 64 || !sha256.All(char.IsAsciiHexDigit))) throw new FormatException($"lfs.sha256 of '{path}' is not a sha256");
                    if (blobId != null && !blobId.All(char.IsAsciiHexDigit)) throw new FormatException($"blobId of '{path}' is not a hash");
                    files.Add(new RemoteFile(path, size, sha256?.ToLowerInvariant(), blobId?.ToLowerInvariant()));
                }
                return (commit, files);
            }
            catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException or KeyNotFoundException)
            {
                throw new UsageException($"engine pull {repo}: unexpected answer from {url} ({ByteLevelOneLine(e.Message)})");
            }
        }
    }

    static void CheckStatus(HttpResponseMessage resp, string repo, string revision, string what)
    {
        if (resp.IsSuccessStatusCode) return;
        int code = (int)resp.StatusCode;
        string why = code switch
        {
            401 or 403 => Environment.GetEnvironmentVariable("HF_TOKEN") is { Length: > 0 }
                ? "access denied with the HF_TOKEN given (a gated repo whose terms you have not accepted, or a private repo?)"
                : "access denied (a gated or private repo: set HF_TOKEN)",
            404 => $"repo '{repo}' or revision '{revision}' not found",
            429 => "rate limited by the hub; try again later",
            _ => $"HTTP {code} {resp.ReasonPhrase}",
        };
        throw new UsageException($"engine pull {repo}: {what}: {why}");
    }

    static string Reason(Exception e)
    {
        var inner = e;
        while (inner.InnerException != null) inner = inner.InnerException;
        return e is TaskCanceledException or OperationCanceledException ? "timed out" : ByteLevelOneLine(inner.Message);
    }

    static string ByteLevelOneLine(string s) => s.ReplaceLineEndings(" ").Trim();

    /// <summary>
    /// Downloads one file into blobs/ (resuming blobs/NAME.incomplete with a Range request), checks size and hash, and
    /// renames it to its blob name. Returns (blob name, size).
    /// </summary>
    static (string Blob, long Size) Download(HttpClient http, string url, RemoteFile f, string blobs, int timeout, string repo, string revision, Action<long> progress)
    {
        // The blob name: the LFS sha256, else the git blob id; without either, the ETag the server sends.
        string? blob = f.Sha256 ?? f.BlobId;
        string incomplete = System.IO.Path.Combine(blobs, (blob ?? "download-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(url)))[..16]) + ".incomplete");
        long have = File.Exists(incomplete) ? new FileInfo(incomplete).Length : 0;
        if (f.Size is long expected && have > expected) { File.Delete(incomplete); have = 0; }

        var req = new HttpRequestMessage(HttpMethod.Get, url);
        if (have > 0) req.Headers.Range = new RangeHeaderValue(have, null);
        HttpResponseMessage resp;
        try { resp = http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead).GetAwaiter().GetResult(); }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or OperationCanceledException or IOException)
        {
            throw new UsageException($"engine pull: cannot download {f.Path} ({Reason(e)}); run the same command again to resume");
        }
        using (resp)
        {
            if (resp.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable && f.Size == have) { /* complete already */ }
            else
            {
                if (!resp.IsSuccessStatusCode) CheckStatus(resp, repo, revision, f.Path);
                bool append = resp.StatusCode == HttpStatusCode.PartialContent && have > 0;
                if (!append) have = 0;
                blob ??= ETagBlob(resp);
                try
                {
                    using var body = resp.Content.ReadAsStream();
                    using var fs = new FileStream(incomplete, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None);
                    var buf = new byte[1 << 20];
                    long got = have;
                    while (true)
                    {
                        var read = body.ReadAsync(buf, 0, buf.Length);
                        if (!read.Wait(TimeSpan.FromSeconds(timeout))) throw new TimeoutException($"no data for {timeout} s");
                        int n = read.Result;
                        if (n == 0) break;
                        fs.Write(buf, 0, n);
                        got += n;
                        progress(got);
                    }
                    fs.Flush(true);
                }
                catch (Exception e) when (e is IOException or HttpRequestException or TimeoutException or AggregateException or UnauthorizedAccessException)
                {
                    throw new UsageException($"engine pull: download of {f.Path} interrupted ({Reason(e is AggregateException ag ? ag.InnerException ?? e : e)}); run the same command again to resume");
                }
            }
        }

        long size = new FileInfo(incomplete).Length;
        if (f.Size is long want && size != want)
        {
            if (size > want) File.Delete(incomplete);
            throw new UsageException($"engine pull: {f.Path}: got {size} bytes, the hub lists {want}; run the same command again to resume");
        }
        if (f.Sha256 != null)
        {
            string got = Hash(incomplete, SHA256.Create(), null);
            if (got != f.Sha256) { File.Delete(incomplete); throw new UsageException($"engine pull: {f.Path}: sha256 {got} does not match the hub's {f.Sha256}; the download was discarded"); }
        }
        else if (f.BlobId is { Length: 40 } gitSha)
        {
            string got = Hash(incomplete, SHA1.Create(), Encoding.ASCII.GetBytes($"blob {size}\0"));
            if (got != gitSha) { File.Delete(incomplete); throw new UsageException($"engine pull: {f.Path}: git blob sha1 {got} does not match the hub's {gitSha}; the download was discarded"); }
        }
        blob ??= Hash(incomplete, SHA256.Create(), null);
        string final = System.IO.Path.Combine(blobs, blob);
        File.Move(incomplete, final, overwrite: true);
        return (blob, size);
    }

    /// <summary>The blob name from the response: X-Linked-Etag (behind a redirect) or ETag, quotes and W/ removed.</summary>
    static string? ETagBlob(HttpResponseMessage resp)
    {
        string? tag = resp.Headers.TryGetValues("X-Linked-Etag", out var linked) ? linked.FirstOrDefault() : resp.Headers.ETag?.Tag;
        if (tag == null) return null;
        tag = tag.Trim();
        if (tag.StartsWith("W/", StringComparison.Ordinal)) tag = tag[2..];
        tag = tag.Trim('"');
        return tag.Length > 0 && tag.All(char.IsAsciiLetterOrDigit) ? tag.ToLowerInvariant() : null;
    }

    static string Hash(string file, HashAlgorithm alg, byte[]? prefix)
    {
        using (alg)
        {
            if (prefix != null) alg.TransformBlock(prefix, 0, prefix.Length, null, 0);
            using var fs = File.OpenRead(file);
            var buf = new byte[1 << 20];
            int n;
            while ((n = fs.Read(buf, 0, buf.Length)) > 0) alg.TransformBlock(buf, 0, n, null, 0);
            alg.TransformFinalBlock([], 0, 0);
            return Convert.ToHexStringLower(alg.Hash!);
        }
    }

    /// <summary>snapshots/COMMIT/PATH → ../../blobs/BLOB as a relative link (as huggingface_hub does), or a copy where links fail.</summary>
    static void Link(string link, string blob)
    {
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(link)!);
        if (File.Exists(link) || new FileInfo(link).LinkTarget != null) File.Delete(link);
        string relative = System.IO.Path.GetRelativePath(System.IO.Path.GetDirectoryName(link)!, blob);
        try { File.CreateSymbolicLink(link, relative); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException) { File.Copy(blob, link, overwrite: true); }
    }
}
