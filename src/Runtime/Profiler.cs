using System.Diagnostics;
using Engine.Kernels;
using Engine.Kernels.Profiling;
using Engine.Loader;

namespace Engine.Runtime;

/// <summary>
/// Profiles a model on a backend: a prompt's prefill and greedy decode steps through the KV cache, every backend op
/// timed by a <see cref="ProfilingBackend"/> (with device synchronisation on a GPU backend) and every pass's wall time
/// marked, so that per-op totals can be held against the wall time (<see cref="ProfileReport"/>).
/// </summary>
public static class Profiler
{
    /// <summary>
    /// Runs <paramref name="warmup"/> unrecorded rounds (kernel compilation, weight upload, first-touch of the arena),
    /// then the recorded one: phase "prefill" (the prompt from position 0) and phase "decode" (<paramref name="decode"/>
    /// greedy steps, one token each). The backend stays the caller's.
    /// </summary>
    public static OpProfile Run(Model model, IBackend backend, int[] tokens, int decode, int warmup = 1, bool trace = false, bool allLogits = false)
    {
        if (tokens.Length == 0) throw new UsageException("empty input: at least one token is needed");
        if (decode < 0) throw new UsageException($"decode steps {decode} must not be negative");
        int capacity = tokens.Length + decode;
        if (capacity > model.Config.ContextLength)
            throw new UsageException($"{tokens.Length} prompt tokens + {decode} decode steps exceed the model's context of {model.Config.ContextLength}");
        using var prof = new ProfilingBackend(backend, ownsInner: false);
        using var session = new Session(model, new SessionOptions { Device = prof, Capacity = capacity, AllLogits = allLogits, SkipUnusedRows = !allLogits });
        var profile = prof.Profile;
        int V = model.Config.VocabSize;
        for (int round = -warmup; round <= 0; round++)
        {
            profile.Clear();
            profile.Trace = trace && round == 0;
            profile.Phase = "prefill";
            long t0 = Stopwatch.GetTimestamp();
            var logits = session.Run(tokens);
            long t1 = Stopwatch.GetTimestamp();
            profile.Pass("prefill", t0, t1, tokens.Length);
            int next = Session.ArgMax(logits[^V..]);
            profile.Phase = "decode";
            for (int s = 0; s < decode; s++)
            {
                int pos = session.Length;
                t0 = Stopwatch.GetTimestamp();
                logits = session.Forward([next]);
                t1 = Stopwatch.GetTimestamp();
                profile.Pass($"decode @{pos}", t0, t1, 1);
                next = Session.ArgMax(logits[^V..]);
            }
        }
        return profile;
    }
}
