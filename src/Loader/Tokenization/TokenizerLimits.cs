using System.Collections.Concurrent;
using System.Text.RegularExpressions;

namespace Engine.Loader.Tokenization;

/// <summary>
/// Sanity limits of the tokenizer readers, checked before a file is read (no unbounded allocation for a hostile or
/// corrupt file), and the compiled pre-tokenizer regexes shared by the tokenizers of one process.
/// </summary>
internal static class TokenizerLimits
{
    /// <summary>Largest tokenizer file read (tokenizer.json, vocab.json, merges.txt, tokenizer.model, ...): 512 MiB.
    /// Real ones are under 40 MB.</summary>
    public const long MaxFileBytes = 512L * 1024 * 1024;

    /// <summary>How long one pre-tokenizer regex may run on one text before encoding is abandoned (a pattern from a file
    /// with catastrophic backtracking).</summary>
    public static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Reads a whole tokenizer file, refusing one over <see cref="MaxFileBytes"/> before reading it.</summary>
    public static byte[] ReadFile(string file)
    {
        try
        {
            var info = new FileInfo(file);
            if (info.Length > MaxFileBytes)
                throw new ModelFormatException($"{file}: {info.Length} bytes is larger than the limit of {MaxFileBytes} bytes for a tokenizer file");
            return File.ReadAllBytes(file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ModelFormatException($"{file}: cannot read ({e.Message})");
        }
    }

    static readonly ConcurrentDictionary<string, Regex> Compiled = new(StringComparer.Ordinal);

    /// <summary>
    /// A compiled, culture-invariant regex with <see cref="RegexTimeout"/>, shared by every tokenizer of the process that
    /// uses the same pattern (compiling takes milliseconds). At most 256 patterns are kept. Invalid patterns throw
    /// ArgumentException.
    /// </summary>
    public static Regex Pattern(string pattern)
    {
        if (Compiled.TryGetValue(pattern, out var r)) return r;
        r = new Regex(pattern, RegexOptions.CultureInvariant | RegexOptions.Compiled, RegexTimeout);
        if (Compiled.Count < 256) Compiled.TryAdd(pattern, r);
        return r;
    }
}
