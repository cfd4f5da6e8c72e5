using System.Diagnostics;

namespace Engine.Kernels.Threading;

/// <summary>A unit of parallel work: Execute(i) for every i in [0, count), in any order, on any thread.</summary>
public interface IParallelWork
{
    void Execute(int index);
}

/// <summary>
/// A fixed set of worker threads that run <see cref="IParallelWork"/> items without allocating: the caller keeps
/// reusable work objects, the pool hands out indices with an interlocked counter and the calling thread works too.
/// Workers spin for a while after each job before sleeping (<see cref="SpinTicks"/>), so the kernels of a forward pass
/// do not each pay a thread wake-up. One pool never runs two jobs at once (calls are serialised); nested calls run inline.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    public static WorkerPool Shared { get; } = new(DefaultThreads());

    public int Threads { get; }

    /// <summary>
    /// How long an idle worker (or the waiting caller) spins before blocking: ENGINE_SPIN_US microseconds, default 1000.
    /// In a prefill a worker that has finished its items waits for the caller's last item (up to ~0.5 ms of a
    /// GPT-2-small matmul at 128 rows) and the serial code between kernels; asleep by then, it makes the next kernel
    /// wait for its wake-up (about 0.2 ms on a 2-vCPU guest). Measured 2026-12-07 (AMD Zen 4 guest, GPT-2-small F32,
    /// in one process alternating 50 µs and 1 ms, paired medians of 12-60 pairs): with 50 µs the worker slept in 40 of
    /// the 98 kernels of a 128-token prefill, with 1 ms in 2; prefill 16 +2.4%, 128 +1.7%, 512 +5.4% (with the yields
    /// of <see cref="Spin"/>; before them 128 +2.1% and +5.7%, SmolLM2-135M 128 +1.9%). Decode steps come back within
    /// 50 µs either way. More threads than cores: see <see cref="Spin"/> (the pool tests with 8 threads on 2 cores took
    /// 1 m 45 s with a 1 ms spin without yields, 5 s with them).
    /// </summary>
    static readonly long SpinTicks = Stopwatch.Frequency * SpinMicroseconds() / 1_000_000;

    static long SpinMicroseconds()
    {
        var env = Environment.GetEnvironmentVariable("ENGINE_SPIN_US");
        return long.TryParse(env, out long us) && us >= 0 ? us : 1000;
    }

    readonly Thread[] _workers;
    readonly int[] _mailbox;                 // generation a worker is asked to join
    readonly int[] _sleeping;                // 1 while a worker may be blocked on its event
    readonly ManualResetEventSlim[] _wake;
    readonly ManualResetEventSlim _done = new(false);
    readonly object _gate = new();
    IParallelWork? _work;
    int _count, _next, _active, _generation;
    Exception? _error;
    volatile bool _stopping;
    [ThreadStatic] static bool t_inPool;

    public WorkerPool(int threads)
    {
        Threads = Math.Max(1, threads);
        int n = Threads - 1;
        _workers = new Thread[n];
        _mailbox = new int[n];
        _sleeping = new int[n];
        _wake = new ManualResetEventSlim[n];
        for (int i = 0; i < n; i++)
        {
            _wake[i] = new ManualResetEventSlim(false);
            int id = i;
            _workers[i] = new Thread(() => WorkerLoop(id)) { IsBackground = true, Name = $"engine-worker-{i + 1}" };
            _workers[i].Start();
        }
    }

    /// <summary>ENGINE_THREADS if set, else the number of processors.</summary>
    public static int DefaultThreads()
    {
        var env = Environment.GetEnvironmentVariable("ENGINE_THREADS");
        return int.TryParse(env, out int n) && n > 0 ? n : Environment.ProcessorCount;
    }

    public void Run(IParallelWork work, int count)
    {
        if (count <= 0) return;
        if (count == 1 || _workers.Length == 0 || t_inPool)
        {
            for (int i = 0; i < count; i++) work.Execute(i);
            return;
        }
        lock (_gate)
        {
            _work = work; _count = count; _next = 0; _error = null;
            int helpers = Math.Min(_workers.Length, count - 1);
            _active = helpers + 1;
            _done.Reset();
            int gen = ++_generation;
            for (int i = 0; i < helpers; i++)
            {
                Interlocked.Exchange(ref _mailbox[i], gen);                  // full fence: pairs with the worker's sleeping flag
                if (Volatile.Read(ref _sleeping[i]) == 1) _wake[i].Set();
            }
            t_inPool = true;
            try { Drain(); }
            finally { t_inPool = false; }
            if (Interlocked.Decrement(ref _active) != 0)
            {
                // Done means every participant has decremented _active. The event only puts the caller to sleep: a
                // participant of the previous job may still Set it after we Reset it (it decrements, then sets), so a
                // wake-up is re-checked against _active, and the event is reset before checking again.
                long until = Stopwatch.GetTimestamp() + SpinTicks;
                int spins = 0;
                while (Volatile.Read(ref _active) != 0)
                {
                    if (Stopwatch.GetTimestamp() < until) { Spin(ref spins); continue; }
                    _done.Wait();
                    _done.Reset();
                }
            }
            _work = null;
            if (_error != null) throw new AggregateException("a parallel kernel failed", _error);
        }
    }

    /// <summary>
    /// One step of a spin wait; every 32nd step yields the core (sched_yield), so that more threads than cores (a larger
    /// ENGINE_THREADS, several pools or processes) still make progress while one spins; with nothing else runnable the
    /// yield returns at once.
    /// </summary>
    static void Spin(ref int spins)
    {
        if ((++spins & 31) == 0) Thread.Yield();
        else Thread.SpinWait(8);
    }

    void Drain()
    {
        var work = _work!;
        int count = _count;
        try
        {
            int i;
            while ((i = Interlocked.Increment(ref _next) - 1) < count) work.Execute(i);
        }
        catch (Exception e)
        {
            _error ??= e;
            Interlocked.Exchange(ref _next, count);
        }
    }

    void WorkerLoop(int id)
    {
        t_inPool = true;
        int seen = 0;
        while (true)
        {
            long until = Stopwatch.GetTimestamp() + SpinTicks;
            int spins = 0;
            while (Volatile.Read(ref _mailbox[id]) == seen && !_stopping)
            {
                if (Stopwatch.GetTimestamp() < until) { Spin(ref spins); continue; }
                Interlocked.Exchange(ref _sleeping[id], 1);                   // full fence: pairs with Run's mailbox write
                if (Volatile.Read(ref _mailbox[id]) == seen && !_stopping) _wake[id].Wait();
                _wake[id].Reset();
                Volatile.Write(ref _sleeping[id], 0);
            }
            if (_stopping) return;
            seen = Volatile.Read(ref _mailbox[id]);
            Drain();
            if (Interlocked.Decrement(ref _active) == 0) _done.Set();
        }
    }

    /// <summary>Stops the workers (idempotent; a one-thread pool has none to stop).</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        foreach (var w in _wake) w.Set();
    }
}
