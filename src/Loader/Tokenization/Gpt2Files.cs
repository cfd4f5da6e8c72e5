using System.Text.RegularExpressions;

namespace Engine.Loader.Tokenization;

/// <summary>GPT-2 style byte-level BPE files: vocab.json ({token: id}) and merges.txt ("#version" line, then "a b" lines).</summary>
internal static class Gpt2Files
{
    /// <summary>Loads the pair; <c>qwen2</c> selects Qwen2's pre-tokenizer regex and NFC (Qwen2Tokenizer) instead of GPT-2's.</summary>
    public static ByteLevelBpe Load(string vocabPath, string mergesPath, IReadOnlyList<AddedToken> extraAdded, bool qwen2)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        using (var doc = JsonNode.ParseFile(vocabPath))
        {
            foreach (var (tok, idNode) in new JsonNode(vocabPath, doc.RootElement, "").Members()) vocab[tok] = idNode.TokenId();
        }
        if (vocab.Count == 0) throw new ModelFormatException($"{vocabPath}: empty vocabulary");

        var lines = new List<string>();
        using (var reader = new StringReader(System.Text.Encoding.UTF8.GetString(TokenizerLimits.ReadFile(mergesPath)).TrimStart('\uFEFF')))
            for (string? line = reader.ReadLine(); line != null; line = reader.ReadLine()) lines.Add(line);
        var merges = new List<string>(lines.Count);
        for (int i = 0; i < lines.Count; i++)
        {
            string line = lines[i];
            if (line.Length == 0 || (i == 0 && line.StartsWith("#version", StringComparison.Ordinal))) continue;
            int sp = line.IndexOf(' ');
            if (sp <= 0 || sp == line.Length - 1 || line.IndexOf(' ', sp + 1) >= 0)
                throw new ModelFormatException($"{mergesPath}: line {i + 1}: expected two tokens separated by one space, got \"{Short(line)}\"");
            string a = line[..sp], b = line[(sp + 1)..];
            if (!vocab.ContainsKey(a) || !vocab.ContainsKey(b) || !vocab.ContainsKey(a + b))
                throw new ModelFormatException($"{mergesPath}: line {i + 1}: merge \"{Short(line)}\" uses a token missing from vocab.json");
            merges.Add(line);
        }

        var added = new List<AddedToken>(extraAdded);
        if (vocab.TryGetValue("<|endoftext|>", out int eot) && !added.Any(t => t.Content == "<|endoftext|>"))
            added.Add(new AddedToken("<|endoftext|>", eot, true));
        var regex = TokenizerLimits.Pattern(qwen2 ? ByteLevelBpe.Qwen2Pattern : ByteLevelBpe.Gpt2Pattern);
        return ByteLevelBpe.Create(vocabPath, vocab, merges, added, [regex], ignoreMerges: false, nfc: qwen2);
    }

    static string Short(string s) => s.Length <= 60 ? s : s[..60] + "...";
}
