using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine make-model: writes a random-weight model of a known shape as a Hugging Face folder.</summary>
public static class MakeModelCommand
{
    public static CommandSpec Spec { get; } = new("make-model", "write a random-weight model of a known shape (for benchmarks) as a Hugging Face folder",
        "engine make-model --shape demo|gpt2-small|smollm2-135m --out DIR [--dtype f32|bf16|f16] [--seed S]",
        [new("--shape", string.Join(" | ", RandomModelShape.Presets.Keys), ValueName: "S"),
         new("--preset", "same as --shape", ValueName: "S"),
         new("--out", "folder to create (must not hold a model yet unless --force)", ValueName: "DIR"),
         new("--dtype", "weight dtype", ValueName: "f32|bf16|f16", Default: "f32"),
         new("--seed", "random seed", ValueName: "S", Default: "1234"),
         Common.ForceOption], Run);

    static int Run(CliArgs a)
    {
        var (preset, shape) = BenchCommand.Shape(a) ?? throw new UsageException("engine make-model: option --shape is required");
        string outDir = a.Require("--out");
        if (File.Exists(Path.Combine(outDir, "model.safetensors")) && !a.Flag("--force")) throw new UsageException($"--out: '{outDir}' already holds a model; pass --force to overwrite it");
        var dtype = a.Choice("--dtype", "f32", "bf16", "f16") switch { "bf16" => DType.BF16, "f16" => DType.F16, _ => DType.F32 };
        int seed = a.Int("--seed", 1234, 0);
        RandomModel.Create(outDir, shape, dtype, (ulong)seed);
        a.Out.WriteLine($"wrote a random-weight {preset} model ({dtype.Name()}) to {outDir}");
        return 0;
    }
}
