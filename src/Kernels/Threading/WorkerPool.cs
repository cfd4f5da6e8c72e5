namespace Engine.Kernels.Threading;

/// <summary>A unit of parallel work: Execute(i) for every i in [0, count), in any order, on any thread.</summary>
public interface IParallelWork
{
    void Execute(int index);
}

/// <summary>
/// A fixed set of worker threads that run <see cref="IParallelWork"/> items without allocating: the caller keeps
/// reusable work objects, the pool hands out indices with an interlocked counter and the calling thread works too.
/// One pool never runs two jobs at once (calls are serialised); nested calls run inline.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    public static WorkerPool Shared { get; } = new(DefaultThreads());

    public int Threads { get; }

    readonly Thread[] _workers;
    readonly SemaphoreSlim _start = new(0);
    readonly ManualResetEventSlim _done = new(false);
    readonly object _gate = new();
    IParallelWork? _work;
    int _count, _next, _active;
    Exception? _error;
    volatile bool _stopping;
    [ThreadStatic] static bool t_inPool;

    public WorkerPool(int threads)
    {
        Threads = Math.Max(1, threads);
        _workers = new Thread[Threads - 1];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"engine-worker-{i + 1}" };
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
            _start.Release(helpers);
            t_inPool = true;
            try { Drain(); }
            finally { t_inPool = false; }
            if (Interlocked.Decrement(ref _active) != 0) _done.Wait();
            _work = null;
            if (_error != null) throw new AggregateException("a parallel kernel failed", _error);
        }
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

    void WorkerLoop()
    {
        t_inPool = true;
        while (true)
        {
            _start.Wait();
            if (_stopping) return;
            Drain();
            if (Interlocked.Decrement(ref _active) == 0) _done.Set();
        }
    }

    /// <summary>Stops the workers (idempotent; a one-thread pool has none to stop).</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        if (_workers.Length > 0) _start.Release(_workers.Length);
    }
}
