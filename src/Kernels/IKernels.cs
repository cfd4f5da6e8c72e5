using Engine.Loader;

namespace Engine.Kernels;

/// <summary>
/// The operations of a transformer forward pass, over float32 activations in row-major spans.
/// Parameter order: sources, parameters, destinations. Every implementation is checked against
/// <see cref="Reference.ReferenceKernels"/> (scalar, double accumulation) in the op grid of the tests.
/// Shapes use T = rows (positions), Tk = keys visible (pos0 + T), H = query heads, K = key/value heads, d = head size.
/// </summary>
public interface IKernels
{
    /// <summary>Registered name: "cpu-ref", "cpu", ...</summary>
    string Name { get; }

    /// <summary>dst[t, :] = table[ids[t], :] widened to float. table [V, D], dst [T, D].</summary>
    void EmbeddingGather(ReadOnlySpan<int> ids, TensorView table, Span<float> dst);

    /// <summary>y = x W^T + b. x [rows, w.In], y [rows, w.Out].</summary>
    void MatMul(ReadOnlySpan<float> x, int rows, Linear w, Span<float> y);

    /// <summary>LayerNorm per row: y = (x - mean) / s * w + b with s = sqrt(biased var + eps); scale[r] = s.</summary>
    void LayerNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y, Span<float> scale);

    /// <summary>RMSNorm per row: y = x / s * (offset + w) with s = sqrt(mean(x^2) + eps); scale[r] = s.</summary>
    void RmsNorm(ReadOnlySpan<float> x, int rows, int dim, ReadOnlySpan<float> weight, float weightOffset, float eps, Span<float> y, Span<float> scale);

    /// <summary>In-place rotate_half RoPE on the first rope.RotaryDim dims of each head. x [rows, heads, headDim]; row t is position pos0 + t.</summary>
    void Rope(Span<float> x, int rows, int heads, int headDim, int pos0, RopeTable rope);

    /// <summary>scores[h, t, j] = q[t, h] . k[j, h / (H/K)] * scale for j &lt;= pos0 + t, -inf above. q [T, H, d], k [Tk, K, d], scores [H, T, Tk].</summary>
    void AttentionScores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, in AttentionShape s, Span<float> scores);

    /// <summary>pattern[h, t, :] = softmax over j &lt;= pos0 + t of scores[h, t, j]; 0 above the diagonal. Both [H, T, Tk].</summary>
    void AttentionSoftmax(ReadOnlySpan<float> scores, in AttentionShape s, Span<float> pattern);

    /// <summary>z[t, h] = sum_j pattern[h, t, j] v[j, h / (H/K)]. pattern [H, T, Tk], v [Tk, K, d], z [T, H, d].</summary>
    void AttentionMix(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z);

    /// <summary>
    /// The three steps above without materialising scores or pattern. On the host backends ("cpu-ref", "cpu") it gives
    /// bit-identical z to running them one after the other, so a hook on scores or pattern that changes nothing changes
    /// no bit of the result. A device backend may compute it differently and then documents how far it may differ: the
    /// ILGPU backends run an online softmax (flash attention) whose z agrees with the three steps within float rounding
    /// (the op grid's tolerance), not bit for bit.
    /// </summary>
    void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, in AttentionShape s, Span<float> z);

    /// <summary>y = act(x), elementwise.</summary>
    void Activation(ActivationKind kind, ReadOnlySpan<float> x, Span<float> y);

    /// <summary>y = act(gate) * up, elementwise.</summary>
    void GatedActivation(ActivationKind kind, ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> y);

    /// <summary>acc += x, elementwise.</summary>
    void AddInPlace(ReadOnlySpan<float> x, Span<float> acc);

    /// <summary>x *= s, elementwise.</summary>
    void ScaleInPlace(Span<float> x, float s);
}

/// <summary>Dimensions of one attention call. Query row t sits at absolute position Pos0 + t and sees keys 0..Pos0+t.</summary>
public readonly record struct AttentionShape(int Rows, int Pos0, int Heads, int KvHeads, int HeadDim, float Scale)
{
    /// <summary>Keys visible to the last row (= row stride of scores/pattern).</summary>
    public int Keys => Pos0 + Rows;
    public int Group => Heads / KvHeads;
}
