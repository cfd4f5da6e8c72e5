using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Engine.Tests.Embedding;

/// <summary>
/// A tiny Hugging Face hub on 127.0.0.1 for the pull tests: /api/models/{repo}/revision/{rev} (file list, commit, LFS
/// sha256, git blob ids) and /{repo}/resolve/{rev}/{path} (files with ETag, Range requests). It can cut a file short
/// once (an interrupted download), serve corrupted bytes, and require a bearer token. Serves only loopback.
/// </summary>
internal sealed class HubServer : IDisposable
{
    public const string Commit = "0123456789abcdef0123456789abcdef01234567";
    readonly HttpListener _listener = new();
    readonly Dictionary<string, byte[]> _files;
    readonly HashSet<string> _lfs;
    readonly string _repo;
    readonly Task _loop;
    public string Endpoint { get; }
    public string? RequiredToken { get; set; }
    /// <summary>Files to cut after this many bytes, once each (the connection is aborted).</summary>
    public ConcurrentDictionary<string, long> CutOnce { get; } = new();
    /// <summary>Files whose bytes are served with one byte flipped.</summary>
    public HashSet<string> Corrupt { get; } = [];
    public ConcurrentQueue<string> Log { get; } = new();

    public HubServer(string repo, Dictionary<string, byte[]> files, IEnumerable<string> lfs)
    {
        _repo = repo; _files = files; _lfs = lfs.ToHashSet();
        int port = FreePort();
        Endpoint = $"http://127.0.0.1:{port}";
        _listener.Prefixes.Add(Endpoint + "/");
        _listener.Start();
        _loop = Task.Run(Loop);
    }

    static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public static string Sha256(byte[] b) => Convert.ToHexStringLower(SHA256.HashData(b));
    public static string GitBlobId(byte[] b) => Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {b.Length}\0"), .. b]));

    async Task Loop()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); }
            catch (Exception) { return; }
            _ = Task.Run(() => Handle(ctx));
        }
    }

    void Handle(HttpListenerContext ctx)
    {
        var req = ctx.Request;
        var resp = ctx.Response;
        string path = Uri.UnescapeDataString(req.Url!.AbsolutePath);
        Log.Enqueue($"{req.HttpMethod} {path} range={req.Headers["Range"]} auth={req.Headers["Authorization"]}");
        try
        {
            if (RequiredToken != null && req.Headers["Authorization"] != "Bearer " + RequiredToken) { resp.StatusCode = 401; resp.Close(); return; }
            string api = $"/api/models/{_repo}/revision/";
            string resolve = $"/{_repo}/resolve/";
            if (path.StartsWith(api))
            {
                string rev = path[api.Length..];
                if (rev != "main" && rev != Commit) { resp.StatusCode = 404; resp.Close(); return; }
                var sb = new StringBuilder($"{{\"id\":\"{_repo}\",\"sha\":\"{Commit}\",\"siblings\":[");
                sb.Append(string.Join(",", _files.Select(kv => _lfs.Contains(kv.Key)
                    ? $"{{\"rfilename\":\"{kv.Key}\",\"size\":{kv.Value.Length},\"blobId\":\"{GitBlobId(Encoding.UTF8.GetBytes("pointer " + kv.Key))}\",\"lfs\":{{\"sha256\":\"{Sha256(kv.Value)}\",\"size\":{kv.Value.Length},\"pointerSize\":130}}}}"
                    : $"{{\"rfilename\":\"{kv.Key}\",\"size\":{kv.Value.Length},\"blobId\":\"{GitBlobId(kv.Value)}\"}}")));
                sb.Append("]}");
                var body = Encoding.UTF8.GetBytes(sb.ToString());
                resp.ContentType = "application/json";
                resp.ContentLength64 = body.Length;
                resp.OutputStream.Write(body);
                resp.Close();
                return;
            }
            if (path.StartsWith(resolve))
            {
                string rest = path[resolve.Length..];
                int slash = rest.IndexOf('/');
                string rev = rest[..slash], file = rest[(slash + 1)..];
                if ((rev != "main" && rev != Commit) || !_files.TryGetValue(file, out var data)) { resp.StatusCode = 404; resp.Close(); return; }
                if (Corrupt.Contains(file)) { data = (byte[])data.Clone(); data[data.Length / 2] ^= 0xFF; }
                resp.Headers["ETag"] = "\"" + (_lfs.Contains(file) ? Sha256(data) : GitBlobId(data)) + "\"";
                resp.Headers["X-Repo-Commit"] = Commit;
                long start = 0;
                string? range = req.Headers["Range"];
                if (range != null && range.StartsWith("bytes=") && range.EndsWith("-") && long.TryParse(range[6..^1], out long from))
                {
                    if (from >= data.Length) { resp.StatusCode = 416; resp.Close(); return; }
                    start = from;
                    resp.StatusCode = 206;
                    resp.Headers["Content-Range"] = $"bytes {from}-{data.Length - 1}/{data.Length}";
                }
                resp.ContentLength64 = data.Length - start;
                if (CutOnce.TryRemove(file, out long cut))
                {
                    resp.OutputStream.Write(data, (int)start, (int)Math.Min(cut, data.Length - start));
                    resp.OutputStream.Flush();
                    resp.Abort();
                    return;
                }
                resp.OutputStream.Write(data, (int)start, (int)(data.Length - start));
                resp.Close();
                return;
            }
            resp.StatusCode = 404;
            resp.Close();
        }
        catch (Exception) { try { resp.Abort(); } catch { } }
    }

    public void Dispose()
    {
        try { _listener.Stop(); _listener.Close(); } catch { }
        try { _loop.Wait(2000); } catch { }
    }
}
