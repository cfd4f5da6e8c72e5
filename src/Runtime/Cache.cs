namespace Engine.Runtime;

/// <summary>A copied activation: data in row-major order and its shape.</summary>
public sealed record CachedTensor(float[] Data, int[] Shape)
{
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";
}

/// <summary>Activations copied out of a run, by hook name (TransformerLens's ActivationCache).</summary>
public sealed class ActivationCache
{
    readonly Dictionary<string, CachedTensor> _items = new(StringComparer.Ordinal);
    readonly List<string> _order = [];

    public IReadOnlyList<string> Names => _order;
    public int Count => _order.Count;
    public bool Contains(string name) => _items.ContainsKey(name);
    public CachedTensor this[string name] => _items.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"hook '{name}' is not in the cache");
    public bool TryGet(string name, out CachedTensor tensor) => _items.TryGetValue(name, out tensor!);

    internal void Set(string name, CachedTensor t)
    {
        if (!_items.ContainsKey(name)) _order.Add(name);
        _items[name] = t;
    }
}

public sealed partial class Session
{
    /// <summary>
    /// Runs tokens from position 0 and copies the taps whose names pass the filter (null = all). Only those are copied;
    /// the hooks added for it are removed afterwards. Returns the logits [T, V] (a copy) and the cache.
    /// </summary>
    public (float[] Logits, ActivationCache Cache) RunWithCache(ReadOnlySpan<int> tokens, Func<string, bool>? filter = null)
    {
        var cache = new ActivationCache();
        using (Hooks.AddWhere(filter ?? (_ => true), tap => cache.Set(tap.Name, new CachedTensor(tap.Data.ToArray(), tap.Shape.ToArray()))))
        {
            var logits = Run(tokens).ToArray();
            return (logits, cache);
        }
    }
}
