// Logit lens with the engine as a library: dotnet run --project samples/LogitLens -- MODEL [TOKEN_IDS]
// MODEL: a Hugging Face folder (config.json + *.safetensors) or ORG/NAME from the local Hugging Face cache.
using Engine.Interp;
using Engine.Runtime;

string modelPath = args.Length > 0 ? args[0] : "tests/fixtures/gpt2";
int[] tokens = args.Length > 1 ? args[1].Split(',').Select(int.Parse).ToArray() : [1, 2, 3, 4];

using var model = Model.Load(modelPath);                                   // memory-mapped, zero-copy weights
using var session = new Session(model, new SessionOptions { Backend = "cpu", Capacity = tokens.Length });

// A hook: read the residual stream after the first block (a tap is a view of the runtime's own buffer).
double norm = 0;
using (session.Hooks.Add("blocks.0.hook_resid_post", tap =>
{
    foreach (float x in tap.Row(tap.Shape.D0 - 1)) norm += (double)x * x;
}))
{
    session.Run(tokens);
}
Console.WriteLine($"|blocks.0.hook_resid_post[last]| = {Math.Sqrt(norm):F4}");

// The logit lens: each layer's residual read through the final norm and the unembedding.
var lens = LogitLens.Run(session, tokens, k: 3);
var text = (int id) => model.Tokenizer?.TokenText(id) ?? $"<{id}>";
for (int layer = 0; layer < lens.TopIds.Length; layer++)
{
    var top = lens.TopIds[layer][^1];                                       // last position
    var probs = lens.TopProbs[layer][^1];
    Console.WriteLine($"layer {layer}: " + string.Join("  ", top.Select((id, i) => $"{text(id)} {probs[i]:P1}")));
}
