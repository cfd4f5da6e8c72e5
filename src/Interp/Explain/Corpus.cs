using System.Security.Cryptography;
using System.Text;
using Engine.Loader;
using Engine.Loader.Tokenization;
using Engine.Runtime;

namespace Engine.Interp.Explain;

/// <summary>One document of a corpus: where it came from and its token ids.</summary>
public sealed record CorpusDocument(string Source, int[] Tokens);

/// <summary>
/// One window of <c>context</c> tokens: the model's input for one run. <see cref="Start"/> is the offset of its first
/// document token; when <see cref="HasBos"/>, position 0 is a BOS token that the explainer added (and never reports).
/// </summary>
public sealed record CorpusWindow(int Index, int Document, string Source, int Start, bool HasBos, int[] Tokens);

/// <summary>
/// A text corpus cut into windows. Files: <c>*.txt</c> (text, through the model's tokenizer; without one, UTF-8 bytes
/// are the token ids, which needs a vocabulary of at least 256) and <c>*.ids</c> (token ids separated by whitespace or
/// commas). A folder is read recursively in ordinal order of relative paths. Each document is cut into consecutive,
/// non-overlapping windows of <c>context</c> tokens (BOS included when added); the last one may be shorter.
/// </summary>
public sealed class Corpus
{
    public IReadOnlyList<CorpusDocument> Documents { get; }
    public IReadOnlyList<CorpusWindow> Windows { get; }
    /// <summary>Where the corpus came from ("built-in sample corpus", a path).</summary>
    public string Origin { get; }
    /// <summary>How text became tokens: "tokenizer (...)", "utf-8 bytes (no tokenizer)", "token ids".</summary>
    public string Tokenization { get; }
    public int Context { get; }

    Corpus(IReadOnlyList<CorpusDocument> docs, string origin, string tokenization, int context, int? bos)
    {
        if (context < 2 && bos != null) throw new UsageException("--context: must be at least 2 when a BOS token is added");
        if (context < 1) throw new UsageException("--context: must be at least 1");
        Documents = docs; Origin = origin; Tokenization = tokenization; Context = context;
        var windows = new List<CorpusWindow>();
        int step = context - (bos != null ? 1 : 0);
        for (int d = 0; d < docs.Count; d++)
        {
            var toks = docs[d].Tokens;
            for (int s = 0; s < toks.Length; s += step)
            {
                int n = Math.Min(step, toks.Length - s);
                var w = new int[n + (bos != null ? 1 : 0)];
                if (bos is int b) w[0] = b;
                Array.Copy(toks, s, w, bos != null ? 1 : 0, n);
                windows.Add(new CorpusWindow(windows.Count, d, docs[d].Source, s, bos != null, w));
            }
        }
        if (windows.Count == 0) throw new UsageException("--corpus: the corpus has no tokens");
        Windows = windows;
    }

    /// <summary>Names of the embedded sample corpus files (corpus/*.txt of the repository).</summary>
    public static IReadOnlyList<string> SampleFiles =>
        typeof(Corpus).Assembly.GetManifestResourceNames().Where(n => n.StartsWith(SamplePrefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();

    const string SamplePrefix = "Engine.Interp.Corpus.";

    /// <summary>
    /// Reads a corpus. <paramref name="path"/> null = the built-in sample corpus. <paramref name="bos"/>: prepend BOS
    /// to every window (null: the tokenizer's convention).
    /// </summary>
    public static Corpus Load(string? path, Model model, ModelTokenizer? tokenizer, int context, bool? bos = null)
    {
        var texts = new List<(string Source, string Text, bool Ids)>();
        string origin;
        if (path == null)
        {
            origin = "built-in sample corpus (corpus/*.txt)";
            foreach (var name in SampleFiles)
            {
                using var s = typeof(Corpus).Assembly.GetManifestResourceStream(name)!;
                using var r = new StreamReader(s, Encoding.UTF8);
                texts.Add(("corpus/" + name[SamplePrefix.Length..], r.ReadToEnd(), false));
            }
        }
        else
        {
            string full = Path.GetFullPath(path);
            origin = full;
            if (Directory.Exists(full))
            {
                var files = Directory.EnumerateFiles(full, "*", SearchOption.AllDirectories)
                    .Where(f => f.EndsWith(".txt", StringComparison.OrdinalIgnoreCase) || f.EndsWith(".ids", StringComparison.OrdinalIgnoreCase))
                    .Select(f => (Full: f, Rel: Path.GetRelativePath(full, f).Replace('\\', '/')))
                    .OrderBy(f => f.Rel, StringComparer.Ordinal).ToList();
                if (files.Count == 0) throw new UsageException($"--corpus: folder '{path}' has no .txt or .ids files");
                foreach (var (f, rel) in files) texts.Add((rel, ReadText(f), f.EndsWith(".ids", StringComparison.OrdinalIgnoreCase)));
            }
            else if (File.Exists(full)) texts.Add((Path.GetFileName(full), ReadText(full), full.EndsWith(".ids", StringComparison.OrdinalIgnoreCase)));
            else throw new UsageException($"--corpus: '{path}' does not exist");
        }

        int vocab = model.Config.VocabSize;
        bool anyText = texts.Any(t => !t.Ids);
        string tokenization = !anyText ? "token ids (.ids files)"
            : tokenizer != null ? $"tokenizer ({tokenizer.Kind})"
            : "utf-8 bytes as token ids (the model has no tokenizer)";
        if (anyText && tokenizer == null && vocab < 256)
            throw new UsageException($"--corpus: the model has no tokenizer and a vocabulary of {vocab} (< 256), so text cannot be read as bytes; give .ids files of token ids");
        int? bosId = null;
        bool wantBos = bos ?? (tokenizer?.AddBosByDefault ?? false);
        if (wantBos)
            bosId = tokenizer?.BosId ?? model.Config.BosTokenId
                ?? throw new UsageException("--bos: the model has no BOS token");

        var docs = new List<CorpusDocument>();
        foreach (var (source, text, ids) in texts)
        {
            int[] tokens;
            if (ids) tokens = ParseIds(text, source);
            else if (tokenizer != null) tokens = tokenizer.Encode(text, addBos: false);
            else tokens = Encoding.UTF8.GetBytes(text).Select(b => (int)b).ToArray();
            foreach (int t in tokens)
                if ((uint)t >= (uint)vocab) throw new UsageException($"--corpus: {source}: token id {t} is out of range (vocabulary size {vocab})");
            if (tokens.Length > 0) docs.Add(new CorpusDocument(source, tokens));
        }
        return new Corpus(docs, origin, tokenization, context, bosId);
    }

    /// <summary>A corpus made of given documents (tests, prompts).</summary>
    public static Corpus FromDocuments(IReadOnlyList<CorpusDocument> docs, int context, int? bos = null, string origin = "given documents") =>
        new(docs, origin, "token ids", context, bos);

    static string ReadText(string path)
    {
        var bytes = File.ReadAllBytes(path);
        try { return new UTF8Encoding(false, true).GetString(bytes).TrimStart('\uFEFF'); }
        catch (DecoderFallbackException) { throw new UsageException($"--corpus: '{path}' is not valid UTF-8 text"); }
    }

    static int[] ParseIds(string text, string source)
    {
        var parts = text.Split([' ', '\t', '\n', '\r', ','], StringSplitOptions.RemoveEmptyEntries);
        var r = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out r[i]))
                throw new UsageException($"--corpus: {source}: '{parts[i]}' is not a token id");
        return r;
    }

    /// <summary>A hash of every window's tokens and source (identifies the corpus in a checkpoint).</summary>
    public string Fingerprint()
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> b = stackalloc byte[4];
        foreach (var w in Windows)
        {
            h.AppendData(Encoding.UTF8.GetBytes(w.Source + "\n"));
            BitConverter.TryWriteBytes(b, w.Tokens.Length); h.AppendData(b);
            foreach (int t in w.Tokens) { BitConverter.TryWriteBytes(b, t); h.AppendData(b); }
        }
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant();
    }
}
