using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Engine.Peers.Peers;

/// <summary>
/// A peer that lives in its own child process (this same program started with <c>--worker KIND ...</c>, see
/// <see cref="Worker"/>): no library's worker threads (llama.cpp's OpenMP team, ONNX Runtime's pool, OpenBLAS's
/// threads, the engine's pool) exist in the process of another. Measured 2026-12-07 with every peer in one process:
/// the engine's GPT-2 16-token prefill ran at 198 tokens/s there against 803 alone.
/// The parent drives the child over stdin/stdout, one request line and one reply line per call; timing is done inside
/// the child (a Stopwatch around the call), so the pipe's latency is not part of any figure.
/// </summary>
public sealed class ChildProcess : IDisposable
{
    readonly Process _process;
    readonly string _kind;

    public JsonObject Settings { get; }
    public int Pid => _process.Id;

    public ChildProcess(string kind, IEnumerable<string> args)
    {
        _kind = kind;
        var psi = new ProcessStartInfo
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = false,   // the child's log goes straight to ours
            UseShellExecute = false,
        };
        string self = Environment.ProcessPath ?? throw new InvalidOperationException("cannot find this program's path to start a worker");
        psi.FileName = self;
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
            psi.ArgumentList.Add(typeof(ChildProcess).Assembly.Location);   // run as `dotnet engine-peers.dll`
        psi.ArgumentList.Add("--worker");
        psi.ArgumentList.Add(kind);
        foreach (var a in args) psi.ArgumentList.Add(a);
        _process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start the {kind} worker");
        Noise.Watch(_process.Id);
        string ready = ReadReply();
        Settings = JsonNode.Parse(ready)!.AsObject();
    }

    /// <summary>Sends one request; returns the reply's payload (the text after "ok ").</summary>
    public string Call(string request)
    {
        _process.StandardInput.WriteLine(request);
        _process.StandardInput.Flush();
        return ReadReply();
    }

    public double CallSeconds(string request) => double.Parse(Call(request), CultureInfo.InvariantCulture);

    string ReadReply()
    {
        while (true)
        {
            string? line = _process.StandardOutput.ReadLine();
            if (line == null)
            {
                _process.WaitForExit(5000);
                throw new InvalidOperationException($"the {_kind} worker exited" + (_process.HasExited ? $" with code {_process.ExitCode}" : "") + " (its log is above)");
            }
            if (line.StartsWith(Worker.Ok)) return line[Worker.Ok.Length..];
            if (line.StartsWith(Worker.Error)) throw new InvalidOperationException($"{_kind} worker: {line[Worker.Error.Length..]}");
            Console.Error.WriteLine(line);   // something a native library printed on stdout
        }
    }

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.StandardInput.WriteLine("quit");
                _process.StandardInput.Flush();
                if (!_process.WaitForExit(10_000)) _process.Kill(true);
            }
        }
        catch (Exception e) when (e is IOException or InvalidOperationException) { }
        Noise.Unwatch(_process.Id);
        _process.Dispose();
    }

    public static string Tokens(int[] tokens) => string.Join(',', tokens);
}

/// <summary>An end-to-end peer (engine, llama.cpp, ONNX Runtime) timed in a <see cref="ChildProcess"/>.</summary>
public sealed class ChildPeer : IEndToEndPeer
{
    readonly ChildProcess _child;

    public ChildPeer(string name, bool canDecode, string kind, IEnumerable<string> args)
    {
        Name = name;
        CanDecode = canDecode;
        _child = new ChildProcess(kind, args);
    }

    public string Name { get; }
    public bool CanDecode { get; }
    public IReadOnlyDictionary<string, string> Settings =>
        _child.Settings.ToDictionary(kv => kv.Key, kv => kv.Value?.ToString() ?? "");

    public double Prefill(int[] tokens) => _child.CallSeconds($"prefill {ChildProcess.Tokens(tokens)}");
    public double Decode(int[] prompt, int steps) => _child.CallSeconds($"decode {steps} {ChildProcess.Tokens(prompt)}");
    public float[] Logits(int[] tokens, out bool allPositions) =>
        throw new NotSupportedException("logit checks run in the parent process");

    public void Dispose() => _child.Dispose();
}

/// <summary>
/// The child side: <c>engine-peers --worker KIND options</c>. Writes "@ok {settings json}" when ready, then answers
/// one line per request on stdin ("prefill t,t,..", "decode steps t,t,..", "calibrate case", "matmul case calls",
/// "quit") with "@ok value" or "@error message". Protocol lines carry a prefix, and Console.Out goes to stderr, so
/// whatever a native library prints on stdout cannot be taken for a reply.
/// </summary>
public static class Worker
{
    public const string Ok = "@ok ", Error = "@error ";

    public static int Run(string[] args)
    {
        var reply = new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
        Console.SetOut(Console.Error);
        try
        {
            if (args.Length == 0) throw new ArgumentException("--worker: missing kind");
            string kind = args[0];
            var o = new Dictionary<string, string>();
            for (int i = 1; i + 1 < args.Length; i += 2) o[args[i].TrimStart('-')] = args[i + 1];
            string Opt(string k) => o.TryGetValue(k, out var v) ? v : throw new ArgumentException($"--worker {kind}: missing --{k}");
            int IntOpt(string k) => int.Parse(Opt(k), CultureInfo.InvariantCulture);

            IEndToEndPeer? peer = null;
            MatMulBench? mm = null;
            bool blas = false;
            IDisposable? owned = null;
            switch (kind)
            {
                case "engine":
                    var model = Engine.Runtime.Model.Load(Opt("model"));
                    owned = model;
                    peer = new EnginePeer(model, IntOpt("capacity"), skipUnusedRows: Opt("engine-rows") == "skip");
                    break;
                case "llamacpp":
                    LlamaCppPeer.HookLog(o.ContainsKey("verbose"));
                    peer = new LlamaCppPeer(Opt("gguf"), Opt("gguf-type"), IntOpt("capacity"), IntOpt("threads"), Opt("kv"), Opt("fa"));
                    break;
                case "onnx":
                    peer = new OnnxPeer(Opt("onnx"), IntOpt("threads"));
                    break;
                case "matmul-engine":
                case "matmul-openblas":
                    blas = kind == "matmul-openblas";
                    if (blas && !OpenBlas.TryLoad(Opt("openblas-core"), IntOpt("threads"))) throw new InvalidOperationException(OpenBlas.Error);
                    mm = MatMulBench.Open(Opt("file"), MatMulBench.DefaultCases(IntOpt("stream")));
                    break;
                default: throw new ArgumentException($"--worker: unknown kind '{kind}'");
            }
            var settings = new JsonObject { ["pid"] = Environment.ProcessId };
            if (peer != null) foreach (var (k, v) in peer.Settings) settings[k] = v;
            reply.WriteLine(Ok + settings.ToJsonString());

            var ops = new Dictionary<int, Action>();
            Action Op(int c) => ops.TryGetValue(c, out var a) ? a : ops[c] = mm!.Op(mm.Cases[c], blas);
            string? line;
            while ((line = Console.In.ReadLine()) != null)
            {
                var f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f.Length == 0) continue;
                if (f[0] == "quit") break;
                try
                {
                    string result = f[0] switch
                    {
                        "prefill" => S(peer!.Prefill(ParseTokens(f[1]))),
                        "decode" => S(peer!.Decode(ParseTokens(f[2]), int.Parse(f[1], CultureInfo.InvariantCulture))),
                        "calibrate" => MatMulBench.Calibrate(Op(int.Parse(f[1], CultureInfo.InvariantCulture))).ToString(CultureInfo.InvariantCulture),
                        "matmul" => S(MatMulBench.Timed(Op(int.Parse(f[1], CultureInfo.InvariantCulture)), int.Parse(f[2], CultureInfo.InvariantCulture))),
                        _ => throw new ArgumentException($"unknown request '{f[0]}'"),
                    };
                    reply.WriteLine(Ok + result);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    reply.WriteLine(Error + $"{e.GetType().Name}: {e.Message}".ReplaceLineEndings(" "));
                }
            }
            peer?.Dispose();
            mm?.Dispose();
            owned?.Dispose();
            return 0;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            reply.WriteLine(Error + $"{e.GetType().Name}: {e.Message}".ReplaceLineEndings(" "));
            return 1;
        }
    }

    static string S(double x) => x.ToString("R", CultureInfo.InvariantCulture);

    static int[] ParseTokens(string s) => s.Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
}
