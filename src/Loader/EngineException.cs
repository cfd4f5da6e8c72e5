namespace Engine.Loader;

/// <summary>
/// The one error type the engine throws for bad input (files, keys, arguments). Its message is a single line
/// that names the file, key or argument at fault; the CLI prints it as is and exits non-zero.
/// </summary>
public class EngineException : Exception
{
    /// <summary>An error with a one-line message (control characters are escaped, very long messages shortened).</summary>
    public EngineException(string message) : base(OneLine(message)) { }
    /// <summary>An error with a one-line message and the exception that caused it.</summary>
    public EngineException(string message, Exception inner) : base(OneLine(message), inner) { }

    /// <summary>Longest message kept whole; longer ones keep their start and end.</summary>
    public const int MaxMessageLength = 2000;

    /// <summary>
    /// The message as one printable line: names taken from hostile files (a tensor name with a newline, a 1 MB key)
    /// are escaped (\n, \r, \t, \u001b, ...) and a message over <see cref="MaxMessageLength"/> characters keeps its
    /// start and end.
    /// </summary>
    public static string OneLine(string? message)
    {
        message ??= "";
        bool clean = message.Length <= MaxMessageLength;
        foreach (char ch in message) if (char.IsControl(ch) || ch is '\u2028' or '\u2029') { clean = false; break; }
        if (clean) return message;
        var sb = new System.Text.StringBuilder(Math.Min(message.Length, MaxMessageLength + 16));
        foreach (char ch in message)
        {
            switch (ch)
            {
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (char.IsControl(ch) || ch is '\u2028' or '\u2029') sb.Append("\\u").Append(((int)ch).ToString("x4"));
                    else sb.Append(ch);
                    break;
            }
        }
        if (sb.Length <= MaxMessageLength) return sb.ToString();
        string s = sb.ToString();
        int half = MaxMessageLength / 2;
        return s[..half] + $" ...({s.Length - 2 * half} characters left out)... " + s[^half..];
    }
}

/// <summary>A model file is malformed: truncated, inconsistent header, bad offsets, unknown dtype.</summary>
public sealed class ModelFormatException(string message) : EngineException(message);

/// <summary>config.json or the weights describe something the engine does not support, or do not agree.</summary>
public sealed class ModelConfigException(string message) : EngineException(message);

/// <summary>A user argument is invalid (token id out of range, prompt longer than the context, ...).</summary>
public sealed class UsageException(string message) : EngineException(message);

/// <summary>A computation produced NaN or infinity where the caller asked for finite values (<c>--check-finite</c>).</summary>
public sealed class NumericsException(string message) : EngineException(message);
