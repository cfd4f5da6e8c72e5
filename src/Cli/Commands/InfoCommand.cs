using Engine.Loader;
using Engine.Runtime;

namespace Engine.Cli.Commands;

/// <summary>engine info: what a model folder holds and what the engine made of it.</summary>
public static class InfoCommand
{
    public static CommandSpec Spec { get; } = new("info", "show a model's architecture, sizes, dtypes, parameter count and hook names",
        "engine info --model M [--json]",
        [Common.ModelOption, Common.JsonOption], Run);

    static int Run(CliArgs a)
    {
        using var model = Common.LoadModel(a);
        var c = model.Config;
        var tok = Common.Tokenizer(model);
        var counts = model.ParameterCounts;
        string tokKind = model.Tokenizer?.Kind ?? (tok != null ? "bundled GPT-2 (no tokenizer files in the folder; vocabulary size matches)" : "none (pass --tokens)");
        if (a.Flag("--json"))
        {
            Common.WriteJson(a.Out, w =>
            {
                w.WriteStartObject();
                w.Header("info", model, null);
                w.WriteStartObject("config");
                w.WriteNumber("n_layers", c.NLayers);
                w.WriteNumber("d_model", c.DModel);
                w.WriteNumber("n_heads", c.NHeads);
                w.WriteNumber("n_kv_heads", c.NKvHeads);
                w.WriteNumber("d_head", c.HeadDim);
                w.WriteNumber("d_mlp", c.DMlp);
                w.WriteNumber("vocab_size", c.VocabSize);
                w.WriteNumber("context_length", c.ContextLength);
                w.WriteString("norm", c.Norm == NormKind.LayerNorm ? "layernorm" : "rmsnorm");
                w.WriteNumber("norm_eps", c.NormEps);
                w.WriteNumber("norm_weight_offset", c.NormWeightOffset);
                w.WriteString("activation", c.Activation.ToString());
                w.WriteBoolean("gated_mlp", c.GatedMlp);
                w.WriteString("positions", c.Positions == PositionKind.Rotary ? "rotary" : "learned");
                if (c.Positions == PositionKind.Rotary) { w.WriteNumber("rotary_dim", c.RotaryDim); w.WriteNumber("rope_theta", c.RopeTheta); }
                w.WriteBoolean("parallel_residual", c.ParallelResidual);
                w.WriteBoolean("tied_embeddings", c.TiedEmbeddings);
                w.WriteNumber("embed_scale", c.EmbedScale);
                w.WriteNumber("attn_scale", c.AttnScale);
                w.WriteString("qkv_layout", c.QkvLayout.ToString());
                w.WriteBoolean("qkv_bias", c.QkvBias);
                w.WriteBoolean("out_bias", c.OutBias);
                w.WriteBoolean("mlp_bias", c.MlpBias);
                if (c.BosTokenId is int bos) w.WriteNumber("bos_token_id", bos);
                w.Ints("eos_token_ids", c.EosTokenIds);
                w.WriteEndObject();
                w.WriteNumber("parameter_count", model.ParameterCount);
                w.WriteStartObject("parameters_by_dtype");
                foreach (var kv in counts.OrderBy(k => k.Key)) w.WriteNumber(kv.Key.Name(), kv.Value);
                w.WriteEndObject();
                w.WriteNumber("mapped_bytes", model.MappedBytes);
                w.WriteString("tokenizer", tokKind);
                w.WriteStartArray("unused_tensors");
                foreach (var u in model.UnusedTensors) w.WriteStringValue(u);
                w.WriteEndArray();
                w.WriteStartArray("hooks");
                foreach (var h in model.HookNames) w.WriteStringValue(h);
                w.WriteEndArray();
                w.WriteEndObject();
            });
            return 0;
        }
        var o = a.Out;
        o.WriteLine($"model      {model.Folder}");
        o.WriteLine($"family     {c.ModelType}: {c.NLayers} layers, d_model {c.DModel}, {c.NHeads} heads ({c.NKvHeads} kv), d_head {c.HeadDim}, d_mlp {c.DMlp}, vocab {c.VocabSize}, context {c.ContextLength}");
        o.WriteLine($"blocks     {(c.Norm == NormKind.LayerNorm ? "LayerNorm" : "RMSNorm")} (eps {c.NormEps}{(c.NormWeightOffset != 0 ? $", weight offset {c.NormWeightOffset}" : "")}), " +
                    $"{(c.GatedMlp ? "gated " : "")}MLP {c.Activation}, {(c.Positions == PositionKind.Rotary ? $"RoPE (dim {c.RotaryDim}, theta {c.RopeTheta})" : "learned positions")}, " +
                    $"{(c.ParallelResidual ? "parallel" : "sequential")} residual, {(c.TiedEmbeddings ? "tied" : "untied")} unembedding");
        o.WriteLine($"parameters {model.ParameterCount:N0} ({string.Join(", ", counts.OrderBy(k => k.Key).Select(kv => $"{kv.Key.Name()}: {kv.Value:N0}"))}), {model.MappedBytes / 1048576.0:F1} MiB mapped");
        o.WriteLine($"tokenizer  {tokKind}");
        if (model.UnusedTensors.Count > 0) o.WriteLine($"unused     {string.Join(", ", model.UnusedTensors)}");
        var hooks = model.HookNames;
        o.WriteLine($"hooks      {hooks.Count}: " + string.Join(", ", hooks.Where(h => !h.StartsWith("blocks.") || h.StartsWith("blocks.0."))) + (c.NLayers > 1 ? $" (and the same for blocks 1..{c.NLayers - 1})" : ""));
        return 0;
    }
}
