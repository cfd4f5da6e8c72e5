using System.Text;
using System.Text.Json;
using Engine.Tests.Support;
using Xunit;

namespace Engine.Tests.Embedding;

/// <summary>
/// engine pull against a hub served on 127.0.0.1 (no test touches the internet): the Hugging Face cache layout, resume
/// after an interrupted download (Range request), checksums, HF_TOKEN, one-line errors offline, and --model ORG/NAME
/// loading from the cache afterwards.
/// </summary>
public class PullTests
{
    const string Repo = "test-org/tiny-gpt2";

    static (HubServer Server, Dictionary<string, byte[]> Files) Serve()
    {
        string fx = TestPaths.Fixture("gpt2");
        var files = new Dictionary<string, byte[]>
        {
            ["config.json"] = File.ReadAllBytes(Path.Combine(fx, "config.json")),
            ["model.safetensors"] = File.ReadAllBytes(Path.Combine(fx, "model.safetensors")),
            ["README.md"] = Encoding.UTF8.GetBytes("# tiny gpt2\n"),
            ["extra/generation_config.json"] = Encoding.UTF8.GetBytes("{\"bos_token_id\": 511}"),
        };
        return (new HubServer(Repo, files, ["model.safetensors"]), files);
    }

    static void AssertError(Support.Cli.Result r, params string[] fragments)
    {
        Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}: {r.Stderr}");
        string err = r.Stderr.TrimEnd('\n');
        Assert.StartsWith("engine: error: ", err.Split('\n')[^1]);
        Assert.DoesNotContain("   at ", r.Stderr);
        foreach (var f in fragments) Assert.Contains(f, err);
    }

    [Fact]
    public void PullsIntoTheCacheLayoutResumesAndLoads()
    {
        using var dir = new TempDir();
        var (server, files) = Serve();
        using var _ = server;
        string hub = Path.Combine(dir.Path, "hub");
        string[] pull = ["pull", Repo, "--endpoint", server.Endpoint, "--cache", hub, "--json"];

        // 1. the weights are cut after 100,000 bytes: an error naming the file, the partial blob kept
        server.CutOnce["model.safetensors"] = 100_000;
        var first = Support.Cli.Run(pull);
        AssertError(first, "model.safetensors", "resume");
        string repoDir = Path.Combine(hub, "models--test-org--tiny-gpt2");
        string sha = HubServer.Sha256(files["model.safetensors"]);
        string partial = Path.Combine(repoDir, "blobs", sha + ".incomplete");
        Assert.True(File.Exists(partial), "the partial download is kept");
        long partialLength = new FileInfo(partial).Length;
        Assert.InRange(partialLength, 1, files["model.safetensors"].Length - 1);

        // 2. again: resumes with a Range request from where it stopped
        var second = Support.Cli.Run(pull);
        Assert.True(second.ExitCode == 0, second.Stderr);
        Assert.Contains(server.Log, l => l.Contains("resolve") && l.Contains($"range=bytes={partialLength}-"));
        using (var doc = JsonDocument.Parse(second.Stdout))
        {
            var root = doc.RootElement;
            Assert.Equal(HubServer.Commit, root.GetProperty("commit").GetString());
            var got = root.GetProperty("files").EnumerateArray().Select(f => f.GetProperty("path").GetString()!).Order().ToArray();
            Assert.Equal(["config.json", "extra/generation_config.json", "model.safetensors"], got);   // README.md is not a model file
        }
        // the layout huggingface_hub uses: blobs by hash, snapshot links, refs/main
        Assert.Equal(HubServer.Commit, File.ReadAllText(Path.Combine(repoDir, "refs", "main")).Trim());
        string snap = Path.Combine(repoDir, "snapshots", HubServer.Commit);
        foreach (var name in new[] { "config.json", "model.safetensors", "extra/generation_config.json" })
        {
            var link = new FileInfo(Path.Combine(snap, name));
            Assert.NotNull(link.LinkTarget);
            Assert.StartsWith("../", link.LinkTarget);
            Assert.Equal(files[name], File.ReadAllBytes(link.FullName));
        }
        Assert.True(File.Exists(Path.Combine(repoDir, "blobs", sha)));
        Assert.True(File.Exists(Path.Combine(repoDir, "blobs", HubServer.GitBlobId(files["config.json"]))));
        Assert.False(File.Exists(partial));

        // 3. once more: everything is cached, nothing is fetched
        int before = server.Log.Count(l => l.Contains("/resolve/"));
        var third = Support.Cli.Run(pull);
        Assert.True(third.ExitCode == 0, third.Stderr);
        Assert.Equal(before, server.Log.Count(l => l.Contains("/resolve/")));
        Assert.DoesNotContain("\"downloaded\": true", third.Stdout);

        // 4. --model ORG/NAME now loads from the cache ($HF_HUB_CACHE), in a child process with the environment set
        var run = EngineProcess.Run(["run", "--model", Repo, "--tokens", "1,2,3", "--json"], new Dictionary<string, string?> { ["HF_HUB_CACHE"] = hub });
        Assert.True(run.ExitCode == 0, run.Stderr);
        Assert.Contains(snap, run.Stdout);
        var direct = Support.Cli.Run("run", "--model", TestPaths.Fixture("gpt2"), "--tokens", "1,2,3", "--json");
        Assert.Equal(TopIds(direct.Stdout), TopIds(run.Stdout));
    }

    static string TopIds(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return string.Join(",", doc.RootElement.GetProperty("top").EnumerateArray().Select(t => t.GetProperty("id").GetInt32()));
    }

    [Fact]
    public void CorruptedDownloadIsDiscarded()
    {
        using var dir = new TempDir();
        var (server, _) = Serve();
        using var __ = server;
        server.Corrupt.Add("model.safetensors");
        var r = Support.Cli.Run("pull", Repo, "--endpoint", server.Endpoint, "--cache", dir.Path, "--include", "*.safetensors");
        AssertError(r, "model.safetensors", "sha256", "does not match");
        Assert.Empty(Directory.GetFiles(Path.Combine(dir.Path, "models--test-org--tiny-gpt2", "blobs")));
        server.Corrupt.Clear();
        server.Corrupt.Add("config.json");
        AssertError(Support.Cli.Run("pull", Repo, "--endpoint", server.Endpoint, "--cache", dir.Path, "--include", "config.json"), "config.json", "git blob sha1");
    }

    [Fact]
    public void TokenIsSentAndRequired()
    {
        using var dir = new TempDir();
        var (server, _) = Serve();
        using var __ = server;
        server.RequiredToken = "hf_secret123";
        string[] pull = ["pull", Repo, "--endpoint", server.Endpoint, "--cache", dir.Path];
        AssertError(EngineProcess.Run(pull), "access denied", "HF_TOKEN");
        var ok = EngineProcess.Run(pull, new Dictionary<string, string?> { ["HF_TOKEN"] = "hf_secret123" });
        Assert.True(ok.ExitCode == 0, ok.Stderr);
        Assert.Contains(server.Log, l => l.Contains("auth=Bearer hf_secret123"));
        AssertError(EngineProcess.Run(pull, new Dictionary<string, string?> { ["HF_TOKEN"] = "wrong" }), "access denied with the HF_TOKEN given");
    }

    [Fact]
    public void OfflineAndUnknownGiveOneLineErrors()
    {
        using var dir = new TempDir();
        var (server, _) = Serve();
        using var __ = server;
        AssertError(Support.Cli.Run("pull", Repo, "--endpoint", "http://127.0.0.1:9", "--cache", dir.Path), "cannot reach http://127.0.0.1:9", "offline?");
        AssertError(Support.Cli.Run("pull", "test-org/other", "--endpoint", server.Endpoint, "--cache", dir.Path), "not found");
        AssertError(Support.Cli.Run("pull", Repo, "--revision", "v9", "--endpoint", server.Endpoint, "--cache", dir.Path), "revision 'v9' not found");
        AssertError(Support.Cli.Run("pull", "../../etc", "--endpoint", server.Endpoint, "--cache", dir.Path), "not a Hugging Face repo id");
        AssertError(Support.Cli.Run("pull", Repo, "--endpoint", "ftp://x", "--cache", dir.Path), "--endpoint");
        AssertError(Support.Cli.Run("pull", Repo, "--endpoint", server.Endpoint, "--cache", dir.Path, "--include", "*.bin"), "no file");
        AssertError(EngineProcess.Run(["pull", Repo, "--endpoint", server.Endpoint, "--cache", dir.Path], new Dictionary<string, string?> { ["HF_HUB_OFFLINE"] = "1" }), "HF_HUB_OFFLINE");
        AssertError(Support.Cli.Run("pull"), "give the repo id");
    }

    [Fact]
    public void EndpointComesFromTheEnvironment()
    {
        using var dir = new TempDir();
        var (server, _) = Serve();
        using var __ = server;
        var r = EngineProcess.Run(["pull", Repo, "--include", "config.json"],
            new Dictionary<string, string?> { ["HF_ENDPOINT"] = server.Endpoint, ["HF_HUB_CACHE"] = null, ["HF_HOME"] = dir.Path });
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.True(File.Exists(Path.Combine(dir.Path, "hub", "models--test-org--tiny-gpt2", "snapshots", HubServer.Commit, "config.json")));
    }
}
