using Engine.Runtime;

namespace Engine.Training;

/// <summary>A task of the text recipes: its words, a training sampler and the held-out set.</summary>
public abstract class TextTask
{
    public abstract string Name { get; }
    public abstract IEnumerable<string> Words { get; }
    /// <summary>One training text (without BOS).</summary>
    public abstract string Sample(Rng rng);
    /// <summary>Held-out examples: (prompt, answer) texts, or for induction built by <see cref="HeldOut"/> itself.</summary>
    public abstract EvalTask HeldOut(WordTokenizer tok, ulong seed);
    public virtual Example Encode(WordTokenizer tok, string text)
    {
        var ids = tok.Encode(text);
        return new Example(ids, Recipe.NextTokens(ids), null, Name);
    }

    /// <summary>A (prompt, answer) example: the answer's tokens are scored (teacher-forced; exact match = greedy decoding gets them all).</summary>
    protected static EvalExample PromptAnswer(WordTokenizer tok, string prompt, string answer)
    {
        var p = tok.Encode(prompt);
        var a = tok.Encode(answer, bos: false);
        var tokens = p.Concat(a).ToArray();
        return new EvalExample(tokens, Enumerable.Range(p.Length - 1, a.Length).ToArray(), a, null, prompt, answer);
    }
}

/// <summary>The tasks, their shared vocabulary and the recipes' mixtures.</summary>
public static class TextTasks
{
    public static readonly string[] Arithmetic = ["arithmetic"];
    public static readonly string[] Facts = ["facts"];
    public static readonly string[] Ioi = ["ioi"];
    public static readonly string[] Demo = ["facts", "arithmetic", "ioi", "induction"];

    /// <summary>Share of each task in the demo mixture.</summary>
    public static double Weight(string task) => task switch { "facts" => 0.2, "arithmetic" => 0.3, "ioi" => 0.15, "induction" => 0.35, _ => 1 };

    static readonly Lazy<TextTask[]> All = new(() => [new FactsTask(), new ArithmeticTask(), new IoiTask(), new WordInductionTask()]);
    static readonly Lazy<WordTokenizer> SharedTokenizer = new(() => new WordTokenizer(All.Value.SelectMany(t => t.Words)));

    public static TextTask Get(string name) => All.Value.First(t => t.Name == name);
    /// <summary>One vocabulary for every text recipe (so their models share token ids).</summary>
    public static WordTokenizer Tokenizer => SharedTokenizer.Value;
}

/// <summary>A recipe over one or more text tasks, with the shared word-level tokenizer.</summary>
public sealed class TextRecipe(string[] tasks) : Recipe
{
    readonly TextTask[] _tasks = tasks.Select(TextTasks.Get).ToArray();
    readonly double[] _cum = Cumulative(tasks);

    static double[] Cumulative(string[] tasks)
    {
        var w = tasks.Select(TextTasks.Weight).ToArray();
        double sum = w.Sum(), acc = 0;
        return w.Select(x => acc += x / sum).ToArray();
    }

    public override string Name => _tasks.Length == 1 ? _tasks[0].Name : "demo";
    public override string Description => _tasks.Length == 1
        ? $"text task '{_tasks[0].Name}' with the word-level tokenizer"
        : "mixture: " + string.Join(", ", _tasks.Select(t => $"{t.Name} {TextTasks.Weight(t.Name):P0}")) + " (word-level tokenizer)";
    public override WordTokenizer Tokenizer => TextTasks.Tokenizer;
    public override int Bos => Tokenizer.Bos;
    public IReadOnlyList<TextTask> Tasks => _tasks;

    public override ArchSpec Arch(string? family = null)
    {
        int v = Tokenizer.VocabSize;
        bool demo = _tasks.Length > 1;
        int layers = demo ? 4 : 2, d = demo ? 128 : 96, mlp = 4 * d;
        return (family ?? "gpt2") switch
        {
            "llama" => new ArchSpec("llama", layers, d, 4, mlp * 2 / 3, v, 64) { BosTokenId = Bos, EosTokenId = Bos },
            _ => new ArchSpec("gpt2", layers, d, 4, mlp, v, 64) { BosTokenId = Bos, EosTokenId = Bos },
        };
    }

    public override TrainDefaults Defaults => _tasks.Length > 1
        ? new(Steps: 3000, Batch: 48, LearningRate: 2e-3, WarmupSteps: 200, WeightDecay: 0.05, InitStd: 0.05)
        : new(Steps: 1500, Batch: 32, LearningRate: 2e-3, WarmupSteps: 100, WeightDecay: 0.05, InitStd: 0.05);

    public override Example Sample(Rng rng)
    {
        double u = rng.Uniform();
        int i = 0;
        while (i < _cum.Length - 1 && u > _cum[i]) i++;
        var task = _tasks[i];
        return task.Encode(Tokenizer, task.Sample(rng));
    }

    public override IReadOnlyList<EvalTask> HeldOut(ulong seed) => _tasks.Select(t => t.HeldOut(Tokenizer, seed)).ToArray();
}

/// <summary>
/// Facts: "{subject} {relation} {attribute}." for every row of the table Recipes/facts.tsv (24 subjects × 3 relations).
/// Facts are memorised, so the held-out measure is recall: every fact's attribute given "{subject} {relation}".
/// </summary>
public sealed class FactsTask : TextTask
{
    public sealed record Fact(string Subject, string Relation, string Attribute);
    public static IReadOnlyList<Fact> Table { get; } = LoadTable();

    static IReadOnlyList<Fact> LoadTable()
    {
        using var s = typeof(FactsTask).Assembly.GetManifestResourceStream("Engine.Training.Recipes.facts.tsv")
            ?? throw new InvalidOperationException("facts.tsv is missing from Engine.Training");
        using var r = new StreamReader(s);
        var list = new List<Fact>();
        while (r.ReadLine() is { } line)
        {
            if (line.Length == 0 || line.StartsWith('#')) continue;
            var p = line.Split('\t');
            list.Add(new Fact(p[0], p[1], p[2]));
        }
        return list;
    }

    public override string Name => "facts";
    public override IEnumerable<string> Words =>
        Table.Select(f => f.Subject).Concat(Table.SelectMany(f => f.Relation.Split(' ').Select(w => " " + w))).Concat(Table.Select(f => " " + f.Attribute));
    public override string Sample(Rng rng) { var f = Table[rng.Next(Table.Count)]; return $"{f.Subject} {f.Relation} {f.Attribute}."; }
    public override EvalTask HeldOut(WordTokenizer tok, ulong seed) =>
        new("facts", true, Table.Select(f => PromptAnswer(tok, $"{f.Subject} {f.Relation}", " " + f.Attribute)).ToArray(),
            "recall of every fact of the table: the attribute after \"{subject} {relation}\" (exact match)");
}

/// <summary>Arithmetic: "a+b=c." with a, b in 10..49 (digits are single byte tokens); 10% of the pairs are held out.</summary>
public sealed class ArithmeticTask : TextTask
{
    public const int Lo = 10, Hi = 49;
    public override string Name => "arithmetic";
    public override IEnumerable<string> Words => [];
    /// <summary>
    /// About 10% of the pairs, chosen by a 64-bit mix of (a, b): spread over every sum and every last digit (a linear
    /// hash of a and b would pick pairs by a + b, e.g. every sum ending in 7, which no training example would teach).
    /// </summary>
    public static bool IsHeldOut(int a, int b)
    {
        ulong x = (ulong)(a * 100 + b) * 0x9E3779B97F4A7C15UL;
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9UL; x ^= x >> 29;
        return x % 10 == 3;
    }
    public override string Sample(Rng rng)
    {
        int a, b;
        do { a = rng.Between(Lo, Hi); b = rng.Between(Lo, Hi); } while (IsHeldOut(a, b));
        return $"{a}+{b}={a + b}.";
    }

    /// <summary>
    /// The loss is on the answer (the targets from the '=' on: the sum's digits and the final '.'); the operands are
    /// uniform random and only add noise (with them in the loss the held-out sums stay at 0% far longer).
    /// </summary>
    public override Example Encode(WordTokenizer tok, string text)
    {
        var ids = tok.Encode(text);
        int eq = Array.IndexOf(ids, (int)'=');
        var w = new float[ids.Length];
        for (int i = Math.Max(0, eq); i < ids.Length; i++) w[i] = 1f;
        return new Example(ids, Recipe.NextTokens(ids), w, Name);
    }
    public override EvalTask HeldOut(WordTokenizer tok, ulong seed)
    {
        var list = new List<EvalExample>();
        for (int a = Lo; a <= Hi; a++)
            for (int b = Lo; b <= Hi; b++)
                if (IsHeldOut(a, b)) list.Add(PromptAnswer(tok, $"{a}+{b}=", (a + b).ToString(System.Globalization.CultureInfo.InvariantCulture)));
        return new EvalTask("arithmetic", true, list, $"held-out sums a+b (a, b in {Lo}..{Hi}, pairs never trained on): both answer digits right");
    }
}

/// <summary>
/// Indirect object identification: "When A and B went to the store, B gave a drink to" → " A" (two templates, the
/// names in either order). 10% of the ordered (indirect object, subject) name pairs are never trained on; held-out
/// accuracy is on them.
/// </summary>
public sealed class IoiTask : TextTask
{
    public static readonly string[] Names = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Emma", "David", "Lucy", "James", "Anna", "Peter"];
    static readonly string[] Places = ["store", "park", "school", "beach"];
    static readonly string[] Objects = ["drink", "book", "ball", "gift"];
    public override string Name => "ioi";
    public override IEnumerable<string> Words =>
        Names.Select(n => " " + n).Concat(Places.Select(p => " " + p)).Concat(Objects.Select(o => " " + o))
             .Concat(["When", "After", " and", " went", " to", " the", " gave", " a", " met", " at", " handed"]);
    public static bool IsHeldOut(int io, int s) => (io * 31 + s * 17) % 10 == 7;

    public static string Prompt(int template, string a, string b, string subject, string place, string obj) => template == 0
        ? $"When {a} and {b} went to the {place}, {subject} gave a {obj} to"
        : $"After {a} and {b} met at the {place}, {subject} handed a {obj} to";

    (string Prompt, string Answer) Draw(Rng rng, bool heldOut)
    {
        int io, s;
        do { io = rng.Next(Names.Length); s = rng.Next(Names.Length); } while (io == s || IsHeldOut(io, s) != heldOut);
        bool ioFirst = rng.Next(2) == 0;
        string a = Names[ioFirst ? io : s], b = Names[ioFirst ? s : io];
        return (Prompt(rng.Next(2), a, b, Names[s], Places[rng.Next(Places.Length)], Objects[rng.Next(Objects.Length)]), " " + Names[io]);
    }

    public override string Sample(Rng rng) { var (p, a) = Draw(rng, false); return p + a + "."; }
    public override EvalTask HeldOut(WordTokenizer tok, ulong seed)
    {
        var rng = Rng.Derive(seed, "ioi-heldout");
        return new EvalTask("ioi", true, Enumerable.Range(0, 128).Select(_ => { var (p, a) = Draw(rng, true); return PromptAnswer(tok, p, a); }).ToArray(),
            "the indirect object's name (held-out name pairs)");
    }
}

/// <summary>Induction over words: BOS, r random words, then a span of n words twice (n 4..10, 24 words in all, all distinct).</summary>
public sealed class WordInductionTask : TextTask
{
    public static readonly string[] Nouns =
    [
        "cat", "dog", "sun", "car", "tree", "fish", "bird", "lamp", "door", "cup", "hat", "box", "key", "pen", "bell", "ring",
        "moon", "star", "leaf", "rock", "road", "ship", "shoe", "coin", "bag", "map", "egg", "ice", "owl", "fox", "bee", "ant",
        "cow", "pig", "jar", "net", "bus", "bed", "toy", "oak",
    ];
    public const int Total = 24, MinSpan = 4, MaxSpan = 10;
    public override string Name => "induction";
    public override IEnumerable<string> Words => Nouns.Select(n => " " + n);

    public (string Text, int R, int N) Draw(Rng rng)
    {
        int n = rng.Between(MinSpan, MaxSpan), r = Total - 2 * n;
        var pool = Enumerable.Range(0, Nouns.Length).ToArray();
        for (int i = 0; i < r + n; i++) { int j = i + rng.Next(pool.Length - i); (pool[i], pool[j]) = (pool[j], pool[i]); }
        var words = pool.Take(r).Concat(pool.Skip(r).Take(n)).Concat(pool.Skip(r).Take(n)).Select(i => " " + Nouns[i]);
        return (string.Concat(words), r, n);
    }

    public override string Sample(Rng rng) => Draw(rng).Text;

    /// <summary>
    /// As the symbol induction recipe: the loss is on the second copy only (targets from the last word of the first
    /// copy on); the other words are uniform random draws. The span is found again from the words (all distinct).
    /// </summary>
    public override Example Encode(WordTokenizer tok, string text)
    {
        var ids = tok.Encode(text);
        int words = ids.Length - 1, n = 0;
        for (int k = words / 2; k >= 1 && n == 0; k--)
            if (ids.AsSpan(ids.Length - k).SequenceEqual(ids.AsSpan(ids.Length - 2 * k, k))) n = k;
        if (n == 0) return base.Encode(tok, text);
        var w = InductionRecipe.Weights(words - 2 * n, n, ids.Length);
        return new Example(ids, Recipe.NextTokens(ids), w, Name);
    }
    public override EvalTask HeldOut(WordTokenizer tok, ulong seed)
    {
        var rng = Rng.Derive(seed, "word-induction-heldout");
        var list = new List<EvalExample>();
        for (int k = 0; k < 128; k++)
        {
            var (text, r, n) = Draw(rng);
            var ids = tok.Encode(text);
            list.Add(InductionRecipe.Scored(ids, r, n) with { Text = text });
        }
        return new EvalTask("induction", false, list, "token accuracy on the repeated half (second copy, after its first word)");
    }
}
