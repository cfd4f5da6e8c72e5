using System.Text.Json;

namespace Engine.Loader.Tokenization;

/// <summary>
/// What tokenizer_config.json (and added_tokens.json) add to the tokenizer files: add_bos_token, bos_token, eos_token,
/// and added tokens (added_tokens_decoder) for folders whose vocab.json lacks them (Qwen2's slow-tokenizer files).
/// </summary>
internal sealed class TokenizerConfig
{
    public string File { get; init; } = "tokenizer_config.json";
    public bool? AddBosToken { get; init; }
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public List<AddedToken> AddedTokens { get; init; } = [];

    public static TokenizerConfig Load(string configPath, string addedTokensPath)
    {
        var added = new Dictionary<int, AddedToken>();
        bool? addBos = null;
        string? bos = null, eos = null;
        if (System.IO.File.Exists(configPath))
        {
            using var doc = JsonNode.ParseFile(configPath);
            var root = new JsonNode(configPath, doc.RootElement, "");
            addBos = root["add_bos_token"].BoolOrNull();
            bos = root["bos_token"].TokenContentOrNull();
            eos = root["eos_token"].TokenContentOrNull();
            if (root.Has("added_tokens_decoder"))
            {
                foreach (var (key, t) in root["added_tokens_decoder"].Members())
                {
                    if (!int.TryParse(key, out int id) || id < 0 || id >= JsonNode.MaxTokenId) throw t.Error($"'{key}' is not a token id");
                    string content = t["content"].String();
                    if (content.Length == 0) throw t["content"].Error("empty added token");
                    added[id] = new AddedToken(content, id, t["special"].BoolOrNull() ?? false);
                }
            }
        }
        if (System.IO.File.Exists(addedTokensPath))
        {
            using var doc = JsonNode.ParseFile(addedTokensPath);
            var root = new JsonNode(addedTokensPath, doc.RootElement, "");
            foreach (var (content, idNode) in root.Members())
            {
                int id = idNode.TokenId();
                if (content.Length > 0) added.TryAdd(id, new AddedToken(content, id, false));
            }
        }
        return new TokenizerConfig
        {
            File = configPath, AddBosToken = addBos, BosToken = bos, EosToken = eos,
            AddedTokens = added.Values.OrderBy(t => t.Id).ToList(),
        };
    }
}
