using System.Text.Json;

namespace Engine.Loader;

/// <summary>
/// All tensors of a model folder: model.safetensors, or the shards named by model.safetensors.index.json, memory-mapped.
/// Lookups are checked (name, shape, dtype) and recorded, so that tensors left unused can be listed.
/// </summary>
public sealed class WeightStore : IDisposable
{
    readonly List<SafeTensorFile> _files = [];
    readonly Dictionary<string, SafeTensorFile> _byName = new(StringComparer.Ordinal);
    readonly HashSet<string> _used = new(StringComparer.Ordinal);
    readonly HashSet<string> _ignored = new(StringComparer.Ordinal);

    public string Folder { get; }
    public IReadOnlyList<SafeTensorFile> Files => _files;
    public IEnumerable<string> Names => _byName.Keys;

    WeightStore(string folder) { Folder = folder; }

    public static WeightStore Open(string folder)
    {
        var store = new WeightStore(folder);
        try
        {
            string single = Path.Combine(folder, "model.safetensors");
            string index = Path.Combine(folder, "model.safetensors.index.json");
            if (File.Exists(index)) store.OpenSharded(index);
            else if (File.Exists(single)) store.Add(SafeTensorFile.Open(single));
            else
            {
                var any = Directory.GetFiles(folder, "*.safetensors").Order(StringComparer.Ordinal).ToList();
                if (any.Count == 0) throw new ModelFormatException($"{folder}: no model.safetensors or model.safetensors.index.json");
                foreach (var f in any) store.Add(SafeTensorFile.Open(f));
            }
            return store;
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    void OpenSharded(string indexPath)
    {
        var bytes = File.ReadAllBytes(indexPath);
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new ModelFormatException($"{indexPath}: not valid UTF-8 JSON");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (Exception e) when (e is JsonException or ArgumentException) { throw new ModelFormatException($"{indexPath}: not valid JSON ({e.Message.Split('\n')[0]})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new ModelFormatException($"{indexPath}: key 'weight_map' missing or not an object");
            var shards = new Dictionary<string, SafeTensorFile>(StringComparer.Ordinal);
            string dir = Path.GetDirectoryName(indexPath)!;
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String) throw new ModelFormatException($"{indexPath}: weight_map['{entry.Name}'] is not a file name");
                string shardName = entry.Value.GetString()!;
                if (shardName.Contains("..") || Path.IsPathRooted(shardName)) throw new ModelFormatException($"{indexPath}: weight_map['{entry.Name}'] = '{shardName}' points outside the folder");
                if (!shards.TryGetValue(shardName, out var shard))
                {
                    string p = Path.Combine(dir, shardName);
                    if (!File.Exists(p)) throw new ModelFormatException($"{indexPath}: shard '{shardName}' (for '{entry.Name}') not found");
                    shard = SafeTensorFile.Open(p);
                    _files.Add(shard);
                    shards[shardName] = shard;
                }
                if (!shard.Contains(entry.Name)) throw new ModelFormatException($"{shard.Path}: tensor '{entry.Name}' listed in {Path.GetFileName(indexPath)} is not in the shard");
                _byName[entry.Name] = shard;
            }
        }
    }

    void Add(SafeTensorFile f)
    {
        _files.Add(f);
        foreach (var name in f.Tensors.Keys)
        {
            if (_byName.ContainsKey(name)) throw new ModelFormatException($"{f.Path}: tensor '{name}' is also in {_byName[name].Path}");
            _byName[name] = f;
        }
    }

    public bool Contains(string name) => _byName.ContainsKey(name);

    public TensorInfo Info(string name) =>
        _byName.TryGetValue(name, out var f) ? f.Tensors[name] : throw new ModelFormatException($"{Folder}: missing tensor '{name}'");

    /// <summary>A float weight with exactly the given shape; errors name the tensor.</summary>
    public TensorView Get(string name, params long[] shape)
    {
        if (!_byName.TryGetValue(name, out var f)) throw new ModelFormatException($"{Folder}: missing tensor '{name}' (expected shape [{string.Join(", ", shape)}])");
        var info = f.Tensors[name];
        if (!info.DType.IsFloatWeight()) throw new ModelFormatException($"{f.Path}: tensor '{name}' has dtype {info.DType.Name()}; weights must be F32, F16 or BF16");
        if (!info.Shape.SequenceEqual(shape))
            throw new ModelFormatException($"{f.Path}: tensor '{name}' has shape {info.ShapeText}, expected [{string.Join(", ", shape)}]");
        _used.Add(name);
        return f.View(info);
    }

    public TensorView? TryGet(string name, params long[] shape) => Contains(name) ? Get(name, shape) : null;

    /// <summary>Marks a tensor as known and deliberately not used (e.g. a saved copy of a tied lm_head, cached RoPE tables).</summary>
    public void Ignore(string name) { if (Contains(name)) _ignored.Add(name); }

    public IEnumerable<string> Unused => _byName.Keys.Where(n => !_used.Contains(n) && !_ignored.Contains(n)).Order(StringComparer.Ordinal);

    public IReadOnlyDictionary<DType, long> ParameterCountsByDType()
    {
        var d = new Dictionary<DType, long>();
        foreach (var n in _used) { var i = Info(n); d[i.DType] = d.GetValueOrDefault(i.DType) + i.ElementCount; }
        return d;
    }

    public long MappedBytes => _files.Sum(f => f.FileLength);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
