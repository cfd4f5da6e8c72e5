using System.Runtime.InteropServices;
using Engine.Loader;
using Engine.Runtime;

namespace Engine.Peers.Onnx;

/// <summary>
/// Builds ONNX models (onnx.proto field numbers: ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
/// ValueInfoProto, TypeProto, TensorShapeProto) with <see cref="ProtoMessage"/>.
/// </summary>
public sealed class OnnxGraph
{
    public const int Float = 1, Int64 = 7;   // TensorProto.DataType

    readonly ProtoMessage _graph = new();
    int _next;

    public OnnxGraph(string name) => _graph.String(2, name);

    public string Fresh(string hint) => $"{hint}_{_next++}";

    /// <summary>Adds a node; returns its first output name.</summary>
    public string Node(string op, string[] inputs, string? output = null, Action<NodeAttributes>? attrs = null, int outputs = 1, string domain = "")
    {
        var outs = new string[outputs];
        outs[0] = output ?? Fresh(op);
        for (int i = 1; i < outputs; i++) outs[i] = Fresh(op);
        NodeMulti(op, inputs, outs, attrs, domain);
        return outs[0];
    }

    public void NodeMulti(string op, string[] inputs, string[] outputs, Action<NodeAttributes>? attrs = null, string domain = "")
    {
        var n = new ProtoMessage();
        foreach (var i in inputs) n.String(1, i);
        foreach (var o in outputs) n.String(2, o);
        n.String(3, Fresh("n_" + op));
        n.String(4, op);
        if (domain.Length > 0) n.String(7, domain);
        attrs?.Invoke(new NodeAttributes(n));
        _graph.Message(1, n);
    }

    /// <summary>Adds an initializer of raw little-endian bytes; returns its name.</summary>
    public string Initializer(string name, int dataType, long[] dims, byte[] raw)
    {
        var t = new ProtoMessage();
        foreach (var d in dims) t.Int(1, d);
        t.Int(2, dataType);
        t.String(8, name);
        t.Bytes(9, raw);
        _graph.Message(5, t);
        return name;
    }

    public string Floats(string name, long[] dims, ReadOnlySpan<float> data) => Initializer(name, Float, dims, MemoryMarshal.AsBytes(data).ToArray());
    public string Longs(string name, params long[] data) => Initializer(name, Int64, [data.Length], MemoryMarshal.AsBytes(data.AsSpan()).ToArray());
    public string Scalar(string name, float v) => Initializer(name, Float, [], BitConverter.GetBytes(v));

    static ProtoMessage ValueInfo(string name, int elemType, object[] dims)
    {
        var shape = new ProtoMessage();
        foreach (var d in dims)
        {
            var dim = new ProtoMessage();
            if (d is string p) dim.String(2, p); else dim.Int(1, Convert.ToInt64(d));
            shape.Message(1, dim);
        }
        var tensor = new ProtoMessage().Int(1, elemType).Message(2, shape);
        return new ProtoMessage().String(1, name).Message(2, new ProtoMessage().Message(1, tensor));
    }

    public void Input(string name, int elemType, params object[] dims) => _graph.Message(11, ValueInfo(name, elemType, dims));
    public void Output(string name, int elemType, params object[] dims) => _graph.Message(12, ValueInfo(name, elemType, dims));

    /// <summary>Writes a ModelProto (IR version 9, default opset <paramref name="opset"/>).</summary>
    public void Save(string path, int opset)
    {
        var model = new ProtoMessage()
            .Int(1, 9)
            .String(2, "engine-peers")
            .String(3, "1")
            .Message(7, _graph)
            .Message(8, new ProtoMessage().String(1, "").Int(2, opset));
        AtomicFile.Write(path, s =>
        {
            var bs = new BufferedStream(s, 1 << 20);
            model.WriteTo(bs);
            bs.Flush();
        });
    }
}

/// <summary>AttributeProto writer for one node (type codes: FLOAT 1, INT 2, STRING 3, FLOATS 6, INTS 7).</summary>
public readonly struct NodeAttributes(ProtoMessage node)
{
    public NodeAttributes Int(string name, long v) { node.Message(5, new ProtoMessage().String(1, name).Int(20, 2).Int(3, v)); return this; }
    public NodeAttributes Float(string name, float v) { node.Message(5, new ProtoMessage().String(1, name).Int(20, 1).Float(2, v)); return this; }
    public NodeAttributes String(string name, string v) { node.Message(5, new ProtoMessage().String(1, name).Int(20, 3).String(4, v)); return this; }
    public NodeAttributes Ints(string name, params long[] v) { node.Message(5, new ProtoMessage().String(1, name).Int(20, 7).Packed(8, v)); return this; }
}

/// <summary>
/// GPT-2 (prefill, no KV cache) as an ONNX graph with the weights of an engine-loadable folder, in F32:
/// input_ids int64 [1, T] (T dynamic) → logits float [1, vocab] of the last position (as llama-bench's ppN and the
/// engine's bench). Standard ONNX ops only (opset 20: LayerNormalization, MatMul, Gemm, Softmax, Gelu tanh), causal mask
/// from a constant [ctx, ctx] sliced to [T, T].
/// </summary>
public static class Gpt2Onnx
{
    public const int Opset = 20;

    public static void Build(Model model, string path)
    {
        var c = model.Config;
        var w = model.Weights;
        if (c.ModelType != "gpt2") throw new UsageException($"the ONNX peer builds GPT-2 graphs only (model_type '{c.ModelType}')");
        int D = c.DModel, H = c.NHeads, hd = c.HeadDim, V = c.VocabSize, ctx = c.ContextLength;
        var g = new OnnxGraph("gpt2_prefill");
        g.Input("input_ids", OnnxGraph.Int64, 1, "T");
        g.Output("logits", OnnxGraph.Float, 1, V);

        string F32(string name, TensorView t) => g.Floats(name, t.Shape, t.ToFloatArray());
        string Vec(string name, float[] v) => g.Floats(name, [v.Length], v);
        string wte = F32("wte", w.TokenEmbedding);
        string wpe = F32("wpe", w.PositionEmbedding!.Value);
        var mask = new float[(long)ctx * ctx];
        for (int i = 0; i < ctx; i++)
            for (int j = i + 1; j < ctx; j++) mask[(long)i * ctx + j] = float.NegativeInfinity;
        string maskAll = g.Floats("causal_mask", [ctx, ctx], mask);
        string zero1 = g.Longs("c_zero1", 0), zero2 = g.Longs("c_zero2", 0, 0), axis0 = g.Longs("c_axis0", 0), axes01 = g.Longs("c_axes01", 0, 1);
        string shape2d = g.Longs("c_shape_td", -1, D), shapeHeads = g.Longs("c_shape_thd", -1, H, hd);
        string splitSizes = g.Longs("c_split", D, D, D);
        string scale = g.Scalar("c_attn_scale", c.AttnScale);

        string emb = g.Node("Gather", [wte, "input_ids"], attrs: a => a.Int("axis", 0));         // [1, T, D]
        string x = g.Node("Reshape", [emb, shape2d]);                                            // [T, D]
        string tvec = g.Node("Shape", ["input_ids"], attrs: a => a.Int("start", 1));            // [T]
        string pos = g.Node("Slice", [wpe, zero1, tvec, axis0]);                                 // [T, D]
        x = g.Node("Add", [x, pos]);
        string tt = g.Node("Concat", [tvec, tvec], attrs: a => a.Int("axis", 0));
        string causal = g.Node("Slice", [maskAll, zero2, tt, axes01]);                           // [T, T]

        string Linear(string input, Linear lin, string name)
        {
            // Conv1D weights are [in, out]: exactly MatMul's right operand.
            if (!lin.InputMajor) throw new InvalidOperationException("GPT-2 weights are expected input-major");
            string wt = F32(name + ".weight", lin.W);
            string y = g.Node("MatMul", [input, wt]);
            return lin.Bias != null ? g.Node("Add", [y, Vec(name + ".bias", lin.Bias)]) : y;
        }
        string LayerNorm(string input, float[] weight, float[]? bias, string name) =>
            g.Node("LayerNormalization", [input, Vec(name + ".weight", weight), Vec(name + ".bias", bias!)],
                attrs: a => a.Int("axis", -1).Float("epsilon", c.NormEps));

        for (int l = 0; l < c.NLayers; l++)
        {
            var lw = w.Layers[l];
            string p = $"h{l}";
            string h = LayerNorm(x, lw.Ln1Weight, lw.Ln1Bias, p + ".ln_1");
            string qkv = Linear(h, lw.Qkv!, p + ".attn.c_attn");                                 // [T, 3D]
            string[] parts = [g.Fresh("q"), g.Fresh("k"), g.Fresh("v")];
            g.NodeMulti("Split", [qkv, splitSizes], parts, a => a.Int("axis", 1));
            string q = g.Node("Transpose", [g.Node("Reshape", [parts[0], shapeHeads])], attrs: a => a.Ints("perm", 1, 0, 2));   // [H, T, hd]
            string kT = g.Node("Transpose", [g.Node("Reshape", [parts[1], shapeHeads])], attrs: a => a.Ints("perm", 1, 2, 0));  // [H, hd, T]
            string v = g.Node("Transpose", [g.Node("Reshape", [parts[2], shapeHeads])], attrs: a => a.Ints("perm", 1, 0, 2));   // [H, T, hd]
            string s = g.Node("Mul", [g.Node("MatMul", [q, kT]), scale]);                        // [H, T, T]
            s = g.Node("Add", [s, causal]);
            string pr = g.Node("Softmax", [s], attrs: a => a.Int("axis", -1));
            string z = g.Node("MatMul", [pr, v]);                                                // [H, T, hd]
            z = g.Node("Reshape", [g.Node("Transpose", [z], attrs: a => a.Ints("perm", 1, 0, 2)), shape2d]);   // [T, D]
            x = g.Node("Add", [x, Linear(z, lw.O, p + ".attn.c_proj")]);
            h = LayerNorm(x, lw.Ln2Weight, lw.Ln2Bias, p + ".ln_2");
            string m = Linear(h, lw.MlpIn, p + ".mlp.c_fc");
            m = g.Node("Gelu", [m], attrs: a => a.String("approximate", c.Activation == ActivationKind.GeluTanh ? "tanh" : "none"));
            x = g.Node("Add", [x, Linear(m, lw.MlpOut, p + ".mlp.c_proj")]);
        }
        string last = g.Node("Slice", [x, g.Longs("c_minus1", -1), g.Longs("c_max", long.MaxValue), axis0]);   // [1, D]
        last = LayerNorm(last, w.FinalNormWeight, w.FinalNormBias, "ln_f");
        g.Node("Gemm", [last, wte], "logits", a => a.Int("transB", 1));                         // [1, V]
        g.Save(path, Opset);
    }
}
