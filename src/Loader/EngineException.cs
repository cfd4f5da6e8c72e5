namespace Engine.Loader;

/// <summary>
/// The one error type the engine throws for bad input (files, keys, arguments). Its message is a single line
/// that names the file, key or argument at fault; the CLI prints it as is and exits non-zero.
/// </summary>
public class EngineException : Exception
{
    public EngineException(string message) : base(message) { }
    public EngineException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A model file is malformed: truncated, inconsistent header, bad offsets, unknown dtype.</summary>
public sealed class ModelFormatException(string message) : EngineException(message);

/// <summary>config.json or the weights describe something the engine does not support, or do not agree.</summary>
public sealed class ModelConfigException(string message) : EngineException(message);

/// <summary>A user argument is invalid (token id out of range, prompt longer than the context, ...).</summary>
public sealed class UsageException(string message) : EngineException(message);
