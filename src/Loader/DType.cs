using System.Runtime.CompilerServices;

namespace Engine.Loader;

/// <summary>Element types of safetensors tensors. The engine computes with F32/F16/BF16 weights.</summary>
public enum DType { F32, F16, BF16, F64, I64, I32, I16, I8, U8, Bool }

public static class DTypes
{
    public static int Size(this DType t) => t switch
    {
        DType.F64 or DType.I64 => 8,
        DType.F32 or DType.I32 => 4,
        DType.F16 or DType.BF16 or DType.I16 => 2,
        _ => 1,
    };

    public static bool TryParse(string s, out DType t)
    {
        switch (s)
        {
            case "F32": t = DType.F32; return true;
            case "F16": t = DType.F16; return true;
            case "BF16": t = DType.BF16; return true;
            case "F64": t = DType.F64; return true;
            case "I64": t = DType.I64; return true;
            case "I32": t = DType.I32; return true;
            case "I16": t = DType.I16; return true;
            case "I8": t = DType.I8; return true;
            case "U8": t = DType.U8; return true;
            case "BOOL": t = DType.Bool; return true;
            default: t = default; return false;
        }
    }

    public static string Name(this DType t) => t == DType.Bool ? "BOOL" : t.ToString();

    /// <summary>True for the dtypes a weight may be stored in.</summary>
    public static bool IsFloatWeight(this DType t) => t is DType.F32 or DType.F16 or DType.BF16;

    /// <summary>BF16 bits to float: the 16 bits are the high half of an IEEE float.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BF16ToFloat(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Float to BF16 bits, round to nearest even (NaN stays NaN).</summary>
    public static ushort FloatToBF16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return (ushort)((u >> 16) | 0x40);
        uint rounding = 0x7FFF + ((u >> 16) & 1);
        return (ushort)((u + rounding) >> 16);
    }
}
