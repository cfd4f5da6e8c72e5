using Engine.Loader;

namespace Engine.Interp.Sweeps;

/// <summary>
/// Where a long sweep keeps the value of every finished cell, so that an interrupted sweep resumes without redoing
/// them (activation patching, causal tracing, ablation and noise sweeps take one through their options). Cells are
/// numbered by the method (stable for the same inputs); the value is the cell's metric as the method stores it.
/// A resumed sweep reads finished cells back and schedules the others exactly as an uninterrupted run would (batched
/// passes whose cells are all finished are skipped whole), so its result is the same, bit for bit.
/// </summary>
public interface ICellJournal
{
    /// <summary>The recorded value of <paramref name="cell"/>, if it finished in an earlier run.</summary>
    bool TryGet(long cell, out double value);

    /// <summary>Records a finished cell (append-only). May throw <see cref="SweepStoppedException"/> to stop the sweep.</summary>
    void Record(long cell, double value);
}

/// <summary>A sweep stopped on purpose before its end (a cell budget such as <c>--stop-after</c>); resume it later.</summary>
public sealed class SweepStoppedException(string message) : EngineException(message);

/// <summary>Helpers for methods that take an <see cref="ICellJournal"/>.</summary>
public static class CellJournals
{
    /// <summary>True when the journal holds the cell.</summary>
    public static bool Has(this ICellJournal? journal, long cell) => journal != null && journal.TryGet(cell, out _);

    /// <summary>Sweep options whose passes are skipped when all their cells (numbered <paramref name="offset"/> + index) are recorded.</summary>
    public static SweepOptions Resuming(this SweepOptions options, ICellJournal? journal, long offset = 0) =>
        journal == null ? options : options with { Recorded = i => journal.Has(offset + i) };
}
