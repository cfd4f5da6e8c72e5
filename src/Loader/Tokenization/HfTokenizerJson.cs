using System.Text.Json;
using System.Text.RegularExpressions;

namespace Engine.Loader.Tokenization;

/// <summary>
/// Reads a Hugging Face <c>tokenizer.json</c> with a BPE model into a tokenizer:
/// <list type="bullet">
/// <item>byte-level BPE (a ByteLevel pre-tokenizer: GPT-2, GPT-NeoX/Pythia, Qwen2, Llama-3) → Microsoft.ML.Tokenizers'
/// BpeTokenizer (BpeOptions ByteLevel = true) with our pre-tokenizer: the Split regexes of the file, or GPT-2's regex for
/// ByteLevel use_regex = true;</item>
/// <item>SentencePiece-style BPE (Llama-2, Mistral, Gemma: '▁' spaces via Prepend/Replace normalizers or Metaspace,
/// byte_fallback) → <see cref="SentencePieceBpe"/> with the file's merge ranks.</item>
/// </list>
/// added_tokens are matched whole in the text (special or not); the post_processor's TemplateProcessing tells whether
/// a BOS token is added.
/// </summary>
internal static class HfTokenizerJson
{
    public sealed record Result(TokenizerCore Core, string Kind, int? TemplateBosId, bool TemplateAddsBos);

    public static Result Load(string file)
    {
        using var doc = JsonNode.ParseFile(file);
        var root = new JsonNode(file, doc.RootElement, "");
        var model = root["model"];
        if (model.IsNull) throw root.Error("no \"model\" (not a Hugging Face tokenizer.json)");
        if (model.Kind != JsonValueKind.Object) throw model.Error("expected an object");
        string type = model["type"].StringOrNull() ?? (model.Has("merges") ? "BPE" : throw model["type"].Error("missing"));
        if (type != "BPE")
            throw model["type"].Error($"unsupported tokenizer model type '{type}' (supported: BPE)");
        if (model["continuing_subword_prefix"].StringOrNull() is { Length: > 0 } csp)
            throw model["continuing_subword_prefix"].Error($"'{csp}' is not supported");
        if (model["end_of_word_suffix"].StringOrNull() is { Length: > 0 } ews)
            throw model["end_of_word_suffix"].Error($"'{ews}' is not supported");

        var vocab = ReadVocab(model["vocab"]);
        var merges = ReadMerges(model["merges"]);
        var added = ReadAddedTokens(root["added_tokens"]);
        var (templateBos, templateAddsBos) = ReadTemplate(root["post_processor"]);

        var pre = root["pre_tokenizer"];
        bool byteLevel = ContainsType(pre, "ByteLevel");
        if (byteLevel)
        {
            var normalizer = root["normalizer"];
            bool nfc = false;
            foreach (var n in Flatten(normalizer, "normalizers"))
            {
                string t = n["type"].String();
                if (t == "NFC") nfc = true;
                else throw n["type"].Error($"normalizer '{t}' is not supported with a ByteLevel pre-tokenizer (supported: NFC)");
            }
            var splits = new List<Regex>();
            foreach (var p in Flatten(pre, "pretokenizers"))
            {
                string t = p["type"].String();
                switch (t)
                {
                    case "ByteLevel":
                        if (p["add_prefix_space"].BoolOrNull() == true) throw p["add_prefix_space"].Error("true is not supported");
                        if (p["use_regex"].BoolOrNull() ?? true) splits.Add(MakeRegex(ByteLevelBpe.Gpt2Pattern, p));
                        break;
                    case "Split":
                        splits.Add(ReadSplit(p));
                        break;
                    case "Digits":
                        splits.Add(MakeRegex(p["individual_digits"].BoolOrNull() == true ? @"\p{N}" : @"\p{N}+", p));
                        break;
                    default:
                        throw p["type"].Error($"pre-tokenizer '{t}' is not supported with ByteLevel (supported: ByteLevel, Split, Digits)");
                }
            }
            var mergeStrings = new List<string>(merges.Count);
            for (int i = 0; i < merges.Count; i++)
            {
                var (a, b) = merges[i];
                if (a.Contains(' ') || b.Contains(' '))
                    throw model["merges"].Error($"merge #{i} \"{a}\" + \"{b}\" contains a space, which byte-level BPE cannot hold");
                if (!vocab.ContainsKey(a) || !vocab.ContainsKey(b) || !vocab.ContainsKey(a + b))
                    throw new JsonNode(file, default, $"model.merges[{i}]").Error($"merge \"{a} {b}\" uses a token missing from model.vocab");
                mergeStrings.Add(a + " " + b);
            }
            bool ignoreMerges = model["ignore_merges"].BoolOrNull() ?? false;
            var core = ByteLevelBpe.Create(file, vocab, mergeStrings, added, splits, ignoreMerges, nfc);
            return new Result(core, "tokenizer.json BPE", templateBos, templateAddsBos);
        }

        // SentencePiece-style BPE.
        var replacements = new List<(string, string)>();
        string? prepend = null;
        bool nfcSp = false;
        foreach (var n in Flatten(root["normalizer"], "normalizers"))
        {
            string t = n["type"].String();
            switch (t)
            {
                case "Prepend": prepend = (prepend ?? "") + n["prepend"].String(); break;
                case "Replace": replacements.Add((ReadLiteralPattern(n["pattern"]), n["content"].String())); break;
                case "NFC": nfcSp = true; break;
                default: throw n["type"].Error($"normalizer '{t}' is not supported (supported: Prepend, Replace, NFC)");
            }
        }
        bool metaspace = false, metaSplit = false;
        string? metaPrepend = null;
        foreach (var p in Flatten(pre, "pretokenizers"))
        {
            string t = p["type"].String();
            if (t != "Metaspace") throw p["type"].Error($"pre-tokenizer '{t}' is not supported (supported: ByteLevel, Split, Digits, Metaspace)");
            string repl = p["replacement"].StringOrNull() ?? "▁";
            if (repl != "▁") throw p["replacement"].Error($"'{repl}' is not supported (only '▁')");
            metaspace = true;
            metaSplit = p["split"].BoolOrNull() ?? true;
            metaPrepend = p["prepend_scheme"].StringOrNull() ?? ((p["add_prefix_space"].BoolOrNull() ?? true) ? "always" : "never");
            if (metaPrepend is not ("always" or "first" or "never")) throw p["prepend_scheme"].Error($"unknown prepend scheme '{metaPrepend}'");
        }
        if (prepend != null && prepend.Length == 0) prepend = null;
        var norm = new SentencePieceBpe.Normalization
        {
            Prepend = prepend, Replacements = replacements, Nfc = nfcSp,
            Metaspace = metaspace, MetaspacePrepend = metaPrepend, MetaspaceSplit = metaSplit,
        };
        bool strip = ReadDecoderStrip(root["decoder"]);
        var spm = SentencePieceBpe.FromHfBpe(vocab, merges, added, model["unk_token"].StringOrNull(),
            model["byte_fallback"].BoolOrNull() ?? false, model["fuse_unk"].BoolOrNull() ?? false, strip, norm, file);
        return new Result(spm, "tokenizer.json BPE (sentencepiece-style)", templateBos, templateAddsBos);
    }

    static Dictionary<string, int> ReadVocab(JsonNode v)
    {
        if (v.IsNull) throw v.Error("missing");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (tok, idNode) in v.Members()) vocab[tok] = idNode.TokenId();
        if (vocab.Count == 0) throw v.Error("empty vocabulary");
        return vocab;
    }

    /// <summary>Merges as "a b" strings (older files) or [a, b] pairs (newer files).</summary>
    static List<(string, string)> ReadMerges(JsonNode m)
    {
        var list = new List<(string, string)>();
        if (m.IsNull) return list;
        foreach (var item in m.Items())
        {
            if (item.Kind == JsonValueKind.String)
            {
                string s = item.String();
                int sp = s.IndexOf(' ');
                if (sp <= 0 || sp == s.Length - 1 || s.IndexOf(' ', sp + 1) >= 0) throw item.Error($"merge \"{s}\" is not two tokens separated by one space");
                list.Add((s[..sp], s[(sp + 1)..]));
            }
            else if (item.Kind == JsonValueKind.Array && item.Element.GetArrayLength() == 2)
            {
                var parts = item.Items().ToArray();
                list.Add((parts[0].String(), parts[1].String()));
            }
            else throw item.Error("expected a string \"a b\" or a pair [a, b]");
        }
        return list;
    }

    static List<AddedToken> ReadAddedTokens(JsonNode a)
    {
        var list = new List<AddedToken>();
        if (a.IsNull) return list;
        foreach (var t in a.Items())
        {
            string content = t["content"].String();
            if (content.Length == 0) throw t["content"].Error("empty added token");
            list.Add(new AddedToken(content, t["id"].TokenId(), t["special"].BoolOrNull() ?? false));
        }
        return list;
    }

    /// <summary>The node itself, or its children when it is a Sequence (key: "normalizers"/"pretokenizers"/...).</summary>
    static IEnumerable<JsonNode> Flatten(JsonNode n, string childrenKey)
    {
        if (n.IsNull) yield break;
        if (n["type"].StringOrNull() == "Sequence")
        {
            foreach (var c in n[childrenKey].Items())
                foreach (var x in Flatten(c, childrenKey)) yield return x;
        }
        else yield return n;
    }

    static bool ContainsType(JsonNode n, string type) =>
        Flatten(n, "pretokenizers").Any(p => p["type"].StringOrNull() == type);

    static Regex ReadSplit(JsonNode p)
    {
        string behavior = p["behavior"].StringOrNull() ?? "Isolated";
        if (behavior != "Isolated") throw p["behavior"].Error($"Split behavior '{behavior}' is not supported (supported: Isolated)");
        if (p["invert"].BoolOrNull() == true) throw p["invert"].Error("true is not supported");
        var pattern = p["pattern"];
        if (pattern.Has("Regex")) return MakeRegex(pattern["Regex"].String(), pattern["Regex"]);
        if (pattern.Has("String")) return MakeRegex(Regex.Escape(pattern["String"].String()), pattern["String"]);
        throw pattern.Error("expected {\"Regex\": ...} or {\"String\": ...}");
    }

    static string ReadLiteralPattern(JsonNode pattern)
    {
        if (pattern.Has("String")) return pattern["String"].String();
        throw pattern.Error("only {\"String\": ...} patterns are supported");
    }

    static Regex MakeRegex(string pattern, JsonNode where)
    {
        // Hugging Face compiles these with Oniguruma; the patterns in use (GPT-2, Llama-3, Qwen2: \p{L}, \p{N}, (?i:...),
        // lookahead) mean the same in .NET.
        try { return TokenizerLimits.Pattern(pattern); }
        catch (ArgumentException e) { throw where.Error($"regex cannot be used in .NET ({ByteLevelBpe.OneLine(e.Message)})"); }
    }

    /// <summary>(BOS id, adds BOS) from a TemplateProcessing post-processor whose "single" template starts with a special token.</summary>
    static (int? Bos, bool Adds) ReadTemplate(JsonNode pp)
    {
        foreach (var p in Flatten(pp, "processors"))
        {
            if (p["type"].StringOrNull() != "TemplateProcessing") continue;
            var single = p["single"];
            if (single.IsNull) continue;
            var first = single.Items().FirstOrDefault();
            if (first.Kind != JsonValueKind.Object || !first.Has("SpecialToken")) return (null, false);
            string name = first["SpecialToken"]["id"].String();
            var st = p["special_tokens"];
            if (!st.Has(name)) throw st.Error($"template uses special token '{name}' that it does not define");
            var ids = st[name]["ids"].Items().ToArray();
            if (ids.Length != 1) throw st[name]["ids"].Error("expected exactly one id");
            return (ids[0].TokenId(), true);
        }
        return (null, false);
    }

    /// <summary>Whether decoding drops the leading space of the text (decoder Strip start ≥ 1, or Metaspace with a prefix).</summary>
    static bool ReadDecoderStrip(JsonNode d)
    {
        foreach (var x in Flatten(d, "decoders"))
        {
            string? t = x["type"].StringOrNull();
            if (t == "Strip" && (x["start"].IntOrNull() ?? 0) >= 1) return true;
            if (t == "Metaspace")
            {
                string scheme = x["prepend_scheme"].StringOrNull() ?? ((x["add_prefix_space"].BoolOrNull() ?? true) ? "always" : "never");
                if (scheme != "never") return true;
            }
        }
        return false;
    }
}
