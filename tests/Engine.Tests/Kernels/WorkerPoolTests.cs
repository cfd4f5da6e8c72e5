using Engine.Kernels.Threading;
using Xunit;

namespace Engine.Tests.Kernels;

/// <summary>The pool must run every item exactly once per call and never let an item of one call run after it returned.</summary>
public class WorkerPoolTests
{
    sealed class Counting(int size) : IParallelWork
    {
        public readonly int[] Hits = new int[size];
        public volatile bool Finished;
        public int LateRuns;
        public void Execute(int index)
        {
            if (Finished) Interlocked.Increment(ref LateRuns);
            Interlocked.Increment(ref Hits[index]);
            if ((index & 7) == 0) Thread.SpinWait(50);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(8)]
    public void EveryItemRunsOnceAndNoneAfterTheCallReturns(int threads)
    {
        using var pool = new WorkerPool(threads);
        var rng = new Random(threads);
        var previous = new List<Counting>();
        for (int call = 0; call < 20_000; call++)
        {
            int count = 1 + rng.Next(40);
            var work = new Counting(count);
            pool.Run(work, count);
            work.Finished = true;
            Assert.All(work.Hits, h => Assert.Equal(1, h));
            previous.Add(work);
            if (previous.Count > 64) previous.RemoveAt(0);
            if ((call & 1023) == 0) Thread.Sleep(1);      // let workers fall asleep now and then
        }
        Thread.Sleep(20);
        Assert.All(previous, w => Assert.Equal(0, w.LateRuns));
    }

    sealed class Failing : IParallelWork
    {
        public void Execute(int index) { if (index == 5) throw new InvalidOperationException("boom"); }
    }

    [Fact]
    public void AnExceptionInAnItemReachesTheCallerAndThePoolKeepsWorking()
    {
        using var pool = new WorkerPool(2);
        var e = Assert.Throws<AggregateException>(() => pool.Run(new Failing(), 10));
        Assert.Contains("boom", e.InnerException!.Message);
        var ok = new Counting(10);
        pool.Run(ok, 10);
        Assert.All(ok.Hits, h => Assert.Equal(1, h));
    }

    /// <summary>Items that run long on a worker while the caller finishes early: the caller must wait for them, even
    /// when a worker of the previous (short) call signals completion late.</summary>
    sealed class SlowOnWorkers(int callerThread) : IParallelWork
    {
        public volatile bool Finished;
        public int LateRuns, Runs;
        public void Execute(int index)
        {
            if (Environment.CurrentManagedThreadId != callerThread) Thread.SpinWait(20_000);   // ~tens of µs: past the caller's spin
            if (Finished) Interlocked.Increment(ref LateRuns);
            Interlocked.Increment(ref Runs);
        }
    }

    [Fact]
    public void ShortAndLongCallsAlternatingNeverReturnEarly()
    {
        using var pool = new WorkerPool(2);
        int caller = Environment.CurrentManagedThreadId;
        var quick = new Counting(2);
        var all = new List<SlowOnWorkers>();
        var deadline = DateTime.UtcNow.AddSeconds(3);
        while (DateTime.UtcNow < deadline)
        {
            for (int i = 0; i < 50; i++) pool.Run(quick, 2);
            var slow = new SlowOnWorkers(caller);
            pool.Run(slow, 2);
            slow.Finished = true;
            Assert.Equal(2, slow.Runs);
            all.Add(slow);
        }
        Thread.Sleep(20);
        Assert.All(all, w => Assert.Equal(0, w.LateRuns));
    }
}
