using Engine.Loader;
using Engine.Loader.Tokenization;

namespace Engine.Interp;

/// <summary>
/// Finds the token positions of a subject string inside a prompt, as ROME's find_token_range does: decode the prompt,
/// find the first occurrence of the text, and take every token whose decoded span overlaps it.
/// </summary>
public static class SubjectLocator
{
    public static int[] Find(ModelTokenizer tokenizer, int[] tokens, string subject, string argument = "--subject")
    {
        if (string.IsNullOrEmpty(subject)) throw new UsageException($"{argument}: empty subject text");
        string whole = tokenizer.Decode(tokens);
        // Character offset where each token's text starts (prefix decodes; O(T^2) but prompts are short).
        var starts = new int[tokens.Length + 1];
        bool prefixesOk = true;
        for (int k = 1; k <= tokens.Length; k++)
        {
            string prefix = tokenizer.Decode(tokens.AsSpan(0, k));
            if (!whole.StartsWith(prefix, StringComparison.Ordinal)) { prefixesOk = false; break; }
            starts[k] = prefix.Length;
        }
        int loc = whole.IndexOf(subject, StringComparison.Ordinal);
        if (loc >= 0 && prefixesOk)
        {
            int end = loc + subject.Length;
            var list = new List<int>();
            for (int k = 0; k < tokens.Length; k++)
                if (starts[k + 1] > loc && starts[k] < end) list.Add(k);
            if (list.Count > 0) return list.ToArray();
        }
        // Fallback: the subject's own tokens (with and without a leading space) as a contiguous run of the prompt.
        foreach (var text in new[] { subject, " " + subject })
        {
            var ids = tokenizer.Encode(text, addBos: false);
            for (int i = 0; ids.Length > 0 && i + ids.Length <= tokens.Length; i++)
                if (tokens.AsSpan(i, ids.Length).SequenceEqual(ids)) return Enumerable.Range(i, ids.Length).ToArray();
        }
        throw new UsageException($"{argument}: '{subject}' does not occur in the prompt \"{whole}\"");
    }
}
