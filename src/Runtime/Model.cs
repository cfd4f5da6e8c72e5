using Engine.Loader;
using Engine.Loader.Tokenization;

namespace Engine.Runtime;

/// <summary>
/// A loaded checkpoint: resolved configuration, memory-mapped weights bound to their roles, and the tokenizer when the
/// folder has one. Immutable and shareable between sessions; dispose it to unmap the files.
/// </summary>
public sealed class Model : IDisposable
{
    public string Folder { get; }
    public ModelConfig Config { get; }
    public ModelWeights Weights { get; }
    public ModelTokenizer? Tokenizer { get; }
    /// <summary>Checkpoint tensors that no role uses (reported, not fatal).</summary>
    public IReadOnlyList<string> UnusedTensors { get; }
    readonly WeightStore _store;

    Model(string folder, ModelConfig config, WeightStore store, ModelWeights weights, ModelTokenizer? tokenizer)
    {
        Folder = folder; Config = config; _store = store; Weights = weights; Tokenizer = tokenizer;
        UnusedTensors = store.Unused.ToList();
    }

    /// <summary>Loads a folder or a Hugging Face repo id found in the local cache.</summary>
    public static Model Load(string modelPathOrRepoId)
    {
        string folder = ModelFolder.Resolve(modelPathOrRepoId);
        string configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) throw new ModelConfigException($"{configPath}: file not found (is '{modelPathOrRepoId}' a Hugging Face model folder?)");
        var config = ModelConfig.Load(configPath);
        var store = WeightStore.Open(folder);
        try
        {
            var weights = ModelWeights.Bind(config, store);
            if (config.Positions == PositionKind.Learned && weights.PositionEmbedding is { } wpe && wpe.Shape[0] < config.ContextLength)
                config = config with { ContextLength = (int)wpe.Shape[0] };
            var tokenizer = ModelTokenizer.TryLoad(folder, config);
            return new Model(folder, config, store, weights, tokenizer);
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    public IReadOnlyDictionary<DType, long> ParameterCounts => _store.ParameterCountsByDType();
    public long ParameterCount => ParameterCounts.Values.Sum();
    public long MappedBytes => _store.MappedBytes;
    public IReadOnlyList<string> HookNames => HookPoints.All(Config);

    /// <summary>Checks token ids against the vocabulary; the message names the argument, the index and the id.</summary>
    public void ValidateTokens(ReadOnlySpan<int> tokens, string argument = "--tokens")
    {
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
                throw new UsageException($"{argument}: token id {tokens[i]} at index {i} is out of range (vocabulary size {Config.VocabSize})");
    }

    public void Dispose() => _store.Dispose();
}
