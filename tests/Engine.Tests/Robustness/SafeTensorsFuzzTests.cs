using System.Buffers.Binary;
using System.Text;
using System.Text.Json.Nodes;
using Engine.Loader;
using Engine.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Engine.Tests.Robustness;

/// <summary>
/// SafeTensorFile.Open on random and mutated files (fixed seed): truncated files, huge / negative / off-by-one header
/// lengths, offsets past the end, reversed or overlapping, shapes whose product overflows, dtype/shape mismatches,
/// non-UTF-8 and deeply nested JSON. Every case opens (and then every byte of every tensor is read, which would fault
/// on a range outside the mapping) or ends in a one-line ModelFormatException.
/// </summary>
public class SafeTensorsFuzzTests(ITestOutputHelper output)
{
    static readonly string[] DTypeNames = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "BOOL", "F8_E4M3", "f32", "", "X"];

    static byte[] File(byte[] header, byte[] data, ulong? lengthField = null)
    {
        var b = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(b, lengthField ?? (ulong)header.Length);
        header.CopyTo(b, 8);
        data.CopyTo(b, 8 + header.Length);
        return b;
    }

    /// <summary>A valid file of 0..5 tensors (random dtypes and shapes, maybe unaligned), as bytes.</summary>
    static byte[] ValidFile(Random r)
    {
        var o = new JsonObject();
        long offset = 0;
        int n = r.Next(6);
        if (r.Next(3) == 0) o["__metadata__"] = new JsonObject { ["format"] = "pt", ["k"] = Mutate.Text(r) };
        for (int i = 0; i < n; i++)
        {
            string dt = DTypeNames[r.Next(9)];
            int size = dt switch { "F32" or "I32" => 4, "F16" or "BF16" or "I16" => 2, "F64" or "I64" => 8, _ => 1 };
            var shape = new JsonArray();
            long count = 1;
            int rank = r.Next(4);
            for (int k = 0; k < rank; k++) { int d = r.Next(5); shape.Add(d); count *= d; }
            long gap = r.Next(4) == 0 ? r.Next(3) : 0;
            o["t" + i] = new JsonObject { ["dtype"] = dt, ["shape"] = shape, ["data_offsets"] = new JsonArray(offset + gap, offset + gap + count * size) };
            offset += gap + count * size;
        }
        var header = Encoding.UTF8.GetBytes(o.ToJsonString());
        var data = new byte[offset + r.Next(3)];
        r.NextBytes(data);
        return File(header, data);
    }

    /// <summary>A header built from hostile parts: random dtypes, ranks, huge or negative dimensions and offsets.</summary>
    static byte[] HostileFile(Random r)
    {
        var o = new JsonObject();
        int n = 1 + r.Next(4);
        long dataLen = r.Next(6) == 0 ? 0 : r.Next(1, 256);
        for (int i = 0; i < n; i++)
        {
            var shape = new JsonArray();
            int rank = r.Next(10) == 0 ? 9 + r.Next(3) : r.Next(4);
            for (int k = 0; k < rank; k++)
                shape.Add(r.Next(8) switch
                {
                    0 => JsonValue.Create(-1), 1 => JsonValue.Create(long.MaxValue), 2 => JsonValue.Create(1L << 32),
                    3 => JsonNode.Parse("1.5"), 4 => JsonValue.Create("4"), 5 => JsonNode.Parse("1e30"), _ => JsonValue.Create(r.Next(6)),
                });
            long Off() => r.Next(8) switch
            {
                0 => -1, 1 => long.MaxValue, 2 => dataLen + 1, 3 => r.Next((int)dataLen + 1) - 4, _ => r.Next((int)dataLen + 1),
            };
            JsonNode? offsets = r.Next(12) switch
            {
                0 => new JsonArray(Off()), 1 => new JsonArray(Off(), Off(), Off()), 2 => JsonValue.Create("0,4"), 3 => null,
                4 => JsonNode.Parse("[0.5, 4]"), 5 => JsonNode.Parse("[0, 18446744073709551615]"),
                _ => new JsonArray(Off(), Off()),
            };
            var e = new JsonObject();
            if (r.Next(12) != 0) e["dtype"] = r.Next(10) == 0 ? Mutate.Value(r) : DTypeNames[r.Next(DTypeNames.Length)];
            if (r.Next(12) != 0) e["shape"] = r.Next(12) == 0 ? Mutate.Value(r) : shape;
            if (offsets != null) e["data_offsets"] = offsets;
            o[r.Next(10) == 0 ? "" : r.Next(10) == 0 ? "__metadata__" : "t" + r.Next(3) + Mutate.Text(r)] = r.Next(15) == 0 ? Mutate.Value(r) : e;
        }
        var data = new byte[dataLen];
        r.NextBytes(data);
        return File(Encoding.UTF8.GetBytes(o.ToJsonString()), data);
    }

    static byte[] HeaderLengthAttack(Random r, byte[] valid)
    {
        ulong h = BinaryPrimitives.ReadUInt64LittleEndian(valid);
        ulong fileLen = (ulong)valid.Length;
        ulong[] choices =
        [
            0, 1, 2, h - 1, h + 1, h + 8, fileLen - 8, fileLen - 7, fileLen, ulong.MaxValue, (ulong)long.MaxValue, 1UL << 63,
            (ulong)SafeTensorFile.MaxHeaderBytes, (ulong)SafeTensorFile.MaxHeaderBytes + 1, 1UL << 32, uint.MaxValue, (ulong)r.NextInt64(),
        ];
        var b = (byte[])valid.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(b, choices[r.Next(choices.Length)]);
        return b;
    }

    /// <summary>Header JSON that is not plain: deep nesting, invalid UTF-8, BOM, NUL, not an object, duplicates.</summary>
    static byte[] OddJson(Random r)
    {
        string s = r.Next(7) switch
        {
            0 => Mutate.Deep(r, 1 + r.Next(3000)),
            1 => "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            2 => "\uFEFF{}",
            3 => "{\"a\":" + Mutate.Deep(r, 10 + r.Next(30)) + "}",
            4 => "[]",
            5 => "{\"__metadata__\":{\"x\":" + Mutate.Deep(r, 1 + r.Next(40)) + "}}",
            _ => "{\"t\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
        };
        var header = Encoding.UTF8.GetBytes(s);
        if (r.Next(3) == 0 && header.Length > 0)
        {
            // invalid UTF-8: a lone continuation byte, an overlong encoding, a surrogate half, or a truncated sequence
            byte[][] bad = [[0x80], [0xC0, 0xAF], [0xED, 0xA0, 0x80], [0xE2, 0x82], [0xFF], [0xF4, 0x90, 0x80, 0x80]];
            var list = header.ToList();
            list.InsertRange(r.Next(list.Count + 1), bad[r.Next(bad.Length)]);
            header = list.ToArray();
        }
        return File(header, new byte[r.Next(16)]);
    }

    /// <summary>Opens the bytes as a file; on success reads every tensor byte and checks the ranges.</summary>
    static void OpenAndRead(string path, byte[] bytes)
    {
        System.IO.File.WriteAllBytes(path, bytes);
        using var f = SafeTensorFile.Open(path);
        foreach (var t in f.Tensors.Values)
        {
            if (t.FileOffset < f.DataStart || t.FileOffset + t.ByteLength > f.FileLength)
                throw new InvalidOperationException($"tensor {t.Name} [{t.FileOffset}, {t.FileOffset + t.ByteLength}) outside the data region [{f.DataStart}, {f.FileLength})");
            var v = f.View(t);
            long sum = 0;
            foreach (byte b in v.AsBytes()) sum += b;
            if (t.DType.IsFloatWeight() && t.ElementCount > 0)
            {
                var buf = new float[Math.Min(t.ElementCount, 4096)];
                v.Widen(t.ElementCount - buf.Length, buf);
            }
            GC.KeepAlive(sum);
        }
    }

    [Fact]
    public void RandomAndMutatedFiles()
    {
        using var dir = TempDir.InMemory();
        string path = dir.File("fuzz.safetensors");
        var r = new Random(20240607);
        var outcomes = new FuzzOutcomes("safetensors (SafeTensorFile.Open)");
        var fixture = System.IO.File.ReadAllBytes(Path.Combine(TestPaths.Fixture("gpt2"), "model.safetensors"));
        int fixtureHeaderEnd = 8 + (int)BinaryPrimitives.ReadUInt64LittleEndian(fixture);
        var sw = System.Diagnostics.Stopwatch.StartNew();

        var times = new double[6];
        for (int i = 0, n = FuzzLog.Scaled(12_000); i < n; i++)
        {
            double t0 = sw.Elapsed.TotalMilliseconds;
            byte[] bytes = (i % 6) switch
            {
                0 => ValidFile(r),
                1 => Mutate.Bytes(ValidFile(r), r),
                2 => HostileFile(r),
                3 => HeaderLengthAttack(r, ValidFile(r)),
                4 => OddJson(r),
                _ => MutateFixture(r, fixture, fixtureHeaderEnd),
            };
            outcomes.Run(() => Convert.ToBase64String(bytes.Length > 400 ? bytes[..400] : bytes), () => OpenAndRead(path, bytes),
                e => e is ModelFormatException ? (e.Message.StartsWith(path) ? FuzzOutcomes.OneLine(e) : "message does not name the file") : "not a ModelFormatException");
            times[i % 6] += sw.Elapsed.TotalMilliseconds - t0;
        }
        output.WriteLine("ms per kind: " + string.Join(", ", times.Select(t => t.ToString("F0"))));
        output.WriteLine($"{sw.Elapsed.TotalSeconds:F1} s");
        outcomes.Report(output, FuzzLog.Scaled(10_000));
    }

    /// <summary>The real gpt2 fixture with its header mutated (bytes or JSON structure) or the file truncated.</summary>
    static byte[] MutateFixture(Random r, byte[] fixture, int headerEnd)
    {
        switch (r.Next(4))
        {
            case 0:
                return fixture[..r.Next(fixture.Length)];
            case 1:
            {
                var header = Mutate.Bytes(fixture[8..headerEnd], r);
                return File(header, fixture[headerEnd..], r.Next(2) == 0 ? (ulong)header.Length : (ulong)(headerEnd - 8));
            }
            default:
            {
                string json = Encoding.UTF8.GetString(fixture, 8, headerEnd - 8);
                var header = Encoding.UTF8.GetBytes(Mutate.Json(json, r));
                return File(header, fixture[headerEnd..]);
            }
        }
    }
}
