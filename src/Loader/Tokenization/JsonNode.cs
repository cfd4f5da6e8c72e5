using System.Text.Json;

namespace Engine.Loader.Tokenization;

/// <summary>
/// Typed access to a JSON value of a tokenizer file; every error is a one-line <see cref="ModelFormatException"/>
/// naming the file and the key path (e.g. "tokenizer.json: key 'model.merges[3]': expected a string or [a, b]").
/// </summary>
internal readonly struct JsonNode(string file, JsonElement element, string path)
{
    public string File => file;
    public string Path => path;
    public JsonElement Element => element;
    public JsonValueKind Kind => element.ValueKind;
    public bool IsNull => element.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined;

    /// <summary>Reads and parses a JSON file; its root must be an object.</summary>
    public static JsonDocument ParseFile(string file)
    {
        byte[] bytes = TokenizerLimits.ReadFile(file);
        if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new ModelFormatException($"{file}: not valid UTF-8 JSON");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { MaxDepth = 256, AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip }); }
        catch (JsonException e) { throw new ModelFormatException($"{file}: not valid JSON ({ByteLevelBpe.OneLine(e.Message)})"); }
        catch (ArgumentException e) { throw new ModelFormatException($"{file}: not valid UTF-8 JSON ({ByteLevelBpe.OneLine(e.Message)})"); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new ModelFormatException($"{file}: must be a JSON object");
        }
        return doc;
    }

    public ModelFormatException Error(string why) =>
        new(path.Length == 0 ? $"{file}: {why}" : $"{file}: key '{path}': {why}");

    static string KindName(JsonValueKind k) => k switch
    {
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Number => "a number",
        JsonValueKind.String => "a string",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };

    string Sub(string key) => path.Length == 0 ? key : path + "." + key;

    /// <summary>The member, or a null node when it is absent.</summary>
    public JsonNode this[string key]
    {
        get
        {
            if (element.ValueKind != JsonValueKind.Object) throw Error($"expected an object, got {KindName(element.ValueKind)}");
            return element.TryGetProperty(key, out var e) ? new JsonNode(file, e, Sub(key)) : new JsonNode(file, default, Sub(key));
        }
    }

    public bool Has(string key) => element.ValueKind == JsonValueKind.Object && element.TryGetProperty(key, out var e) && e.ValueKind != JsonValueKind.Null;

    public string? StringOrNull()
    {
        if (IsNull) return null;
        if (element.ValueKind != JsonValueKind.String) throw Error($"expected a string, got {KindName(element.ValueKind)}");
        return element.GetString();
    }

    public string String() => StringOrNull() ?? throw Error("missing");

    public bool? BoolOrNull()
    {
        if (IsNull) return null;
        return element.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error($"expected true or false, got {KindName(element.ValueKind)}"),
        };
    }

    public int? IntOrNull()
    {
        if (IsNull) return null;
        if (element.ValueKind != JsonValueKind.Number || !element.TryGetInt32(out int v)) throw Error($"expected an integer, got {(element.ValueKind == JsonValueKind.Number ? element.GetRawText() : KindName(element.ValueKind))}");
        return v;
    }

    public int Int() => IntOrNull() ?? throw Error("missing");

    /// <summary>A token id: an integer in [0, 16M) (larger ids would make tables absurdly large).</summary>
    public int TokenId()
    {
        int v = Int();
        if (v < 0 || v >= MaxTokenId) throw Error($"token id {v} is out of range [0, {MaxTokenId})");
        return v;
    }

    public const int MaxTokenId = 1 << 24;

    public IEnumerable<JsonNode> Items()
    {
        if (element.ValueKind != JsonValueKind.Array) throw Error($"expected an array, got {KindName(element.ValueKind)}");
        int i = 0;
        foreach (var e in element.EnumerateArray()) yield return new JsonNode(file, e, $"{path}[{i++}]");
    }

    public IEnumerable<(string Key, JsonNode Value)> Members()
    {
        if (element.ValueKind != JsonValueKind.Object) throw Error($"expected an object, got {KindName(element.ValueKind)}");
        foreach (var p in element.EnumerateObject()) yield return (p.Name, new JsonNode(file, p.Value, Sub(p.Name)));
    }

    /// <summary>A token written either as a string or as an AddedToken object {"content": ...} (tokenizer_config.json).</summary>
    public string? TokenContentOrNull()
    {
        if (IsNull) return null;
        if (element.ValueKind == JsonValueKind.String) return element.GetString();
        if (element.ValueKind == JsonValueKind.Object) return this["content"].StringOrNull();
        throw Error($"expected a string or an object with \"content\", got {KindName(element.ValueKind)}");
    }
}
