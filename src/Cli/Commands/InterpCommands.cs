namespace Engine.Cli.Commands;

/// <summary>The interpretability commands (lens, patch, ablate, trace, dla, ...), registered here.</summary>
public static partial class InterpCommands
{
    public static CommandSpec[] Specs => [];
}
