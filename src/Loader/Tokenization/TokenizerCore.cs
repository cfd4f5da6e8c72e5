using System.Text;

namespace Engine.Loader.Tokenization;

/// <summary>
/// One tokenizer implementation behind <see cref="ModelTokenizer"/>. Encoding never adds BOS/EOS (the wrapper does);
/// every id passed to Decode/TokenText is already checked to be in [0, Size) or a padding id beyond it.
/// </summary>
internal abstract class TokenizerCore
{
    /// <summary>Largest id any token of the files uses, plus one.</summary>
    public abstract int Size { get; }

    /// <summary>Appends the ids of <paramref name="text"/> (special tokens written in the text are recognised).</summary>
    public abstract void Encode(string text, List<int> output);

    /// <summary>Text of the ids; ids with no token decode to nothing; special tokens are skipped when asked.</summary>
    public abstract string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens);

    /// <summary>Readable text of one token, or null where the id has no token.</summary>
    public abstract string? TokenText(int id);

    /// <summary>The id of a token given by its text (as tokenizer_config.json writes bos_token), or null.</summary>
    public abstract int? IdOf(string token);

    /// <summary>Turns token bytes into readable text: valid UTF-8 as is, stray bytes of a split character as &lt;0xNN&gt;.</summary>
    public static string BytesToReadable(ReadOnlySpan<byte> bytes)
    {
        var sb = new StringBuilder(bytes.Length);
        int i = 0;
        while (i < bytes.Length)
        {
            var status = Rune.DecodeFromUtf8(bytes[i..], out Rune rune, out int consumed);
            if (status == System.Buffers.OperationStatus.Done)
            {
                sb.Append(rune.ToString());
                i += consumed;
            }
            else
            {
                sb.Append("<0x").Append(bytes[i].ToString("X2")).Append('>');
                i++;
            }
        }
        return sb.ToString();
    }

    /// <summary>UTF-8 bytes to text, invalid sequences replaced by U+FFFD (as Hugging Face decodes).</summary>
    public static string Utf8Lossy(ReadOnlySpan<byte> bytes) => Encoding.UTF8.GetString(bytes);
}
