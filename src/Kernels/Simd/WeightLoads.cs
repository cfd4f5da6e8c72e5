using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Engine.Kernels.Simd;

/// <summary>
/// Loads of weights in their stored dtype, widened to float inside the kernel (no float copy of the model).
/// Implemented once per dtype as a struct so that generic kernels specialise at JIT time with no dispatch cost.
/// Pointers may be unaligned.
/// </summary>
internal unsafe interface IWeightLoad
{
    /// <summary>Bytes per element.</summary>
    static abstract int Size { get; }
    /// <summary>16 consecutive elements starting at p (element index 0).</summary>
    static abstract Vector512<float> Load16(byte* p);
    /// <summary>8 consecutive elements.</summary>
    static abstract Vector256<float> Load8(byte* p);
    static abstract float Load1(byte* p);
}

internal unsafe struct F32Load : IWeightLoad
{
    public static int Size => 4;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load16(byte* p) => Vector512.Load((float*)p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(byte* p) => Vector256.Load((float*)p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => Unsafe.ReadUnaligned<float>(p);
}

/// <summary>BF16: the 16 bits are the high half of a float.</summary>
internal unsafe struct BF16Load : IWeightLoad
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p) => Vector512.ShiftLeft(Widen16(p), 16).AsSingle();

    /// <summary>16 unsigned 16-bit values zero-extended to 32 bits: one vpmovzxwd with a memory operand on AVX-512.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<uint> Widen16(byte* p) =>
        Avx512F.IsSupported ? Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)p))
                            : Vector512.WidenLower(Vector512.Create(Vector256.Load((ushort*)p), Vector256<ushort>.Zero));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p) =>
        Vector256.ShiftLeft(Vector256.WidenLower(Vector256.Create(Vector128.Load((ushort*)p), Vector128<ushort>.Zero)), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => BitConverter.Int32BitsToSingle(Unsafe.ReadUnaligned<ushort>(p) << 16);
}

/// <summary>
/// IEEE half, any value: exponent/mantissa shifted into float position and the exponent rebased by 112 in the integer
/// domain (subnormal halves by 113, then 2^-14 subtracted: exact, and no float operation with a subnormal input);
/// exponent 31 (Inf/NaN) is mapped to float's all-ones exponent; the sign is moved to bit 31. Used for F16 tensors that
/// hold Inf/NaN or subnormal halves (<see cref="Engine.Loader.Linear.NormalHalves"/>).
/// </summary>
internal unsafe struct F16Load : IWeightLoad
{
    public static int Size => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p)
    {
        var h = BF16Load.Widen16(p);
        var magnitude = Vector512.ShiftLeft(h & Vector512.Create(0x7FFFu), 13);
        var exponent = h & Vector512.Create(0x7C00u);
        // Exponent + 112 in the integer domain (exact for normal halves). A subnormal or zero half (exponent 0) gets
        // exponent 113, i.e. 2^-14 (1 + m/1024), and 2^-14 is subtracted (exact): no float operation sees a subnormal
        // input, which would cost a microcode assist.
        var sub = Vector512.Equals(exponent, Vector512<uint>.Zero);
        var value = (magnitude + Vector512.Create(0x38000000u) + (sub & Vector512.Create(0x00800000u))).AsSingle()
                    - (sub & Vector512.Create(0x38800000u)).AsSingle();
        var infNan = Vector512.Equals(exponent, Vector512.Create(0x7C00u));
        value = Vector512.ConditionalSelect(infNan.AsSingle(), (magnitude | Vector512.Create(0x7F800000u)).AsSingle(), value);
        return (value.AsUInt32() | Vector512.ShiftLeft(h & Vector512.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p)
    {
        var h = Vector256.WidenLower(Vector256.Create(Vector128.Load((ushort*)p), Vector128<ushort>.Zero));
        var magnitude = Vector256.ShiftLeft(h & Vector256.Create(0x7FFFu), 13);
        var exponent = h & Vector256.Create(0x7C00u);
        var sub = Vector256.Equals(exponent, Vector256<uint>.Zero);
        var value = (magnitude + Vector256.Create(0x38000000u) + (sub & Vector256.Create(0x00800000u))).AsSingle()
                    - (sub & Vector256.Create(0x38800000u)).AsSingle();
        var infNan = Vector256.Equals(exponent, Vector256.Create(0x7C00u));
        value = Vector256.ConditionalSelect(infNan.AsSingle(), (magnitude | Vector256.Create(0x7F800000u)).AsSingle(), value);
        return (value.AsUInt32() | Vector256.ShiftLeft(h & Vector256.Create(0x8000u), 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => (float)Unsafe.ReadUnaligned<Half>(p);
}

/// <summary>
/// IEEE half known to be finite (the tensor was scanned: <see cref="Engine.Loader.Linear.AllFinite"/>): sign-extended
/// to 32 bits and shifted by 13, so bit 28 and the bits above it are copies of the sign while exponent and mantissa sit
/// where a float's do; a mask keeps bit 31 (the sign) and clears bits 30..28 (<see cref="Bits16"/>: 2^-112 times the
/// value), and the product by <see cref="Scale"/> rebiases the exponent (exact, subnormal halves included). Four
/// operations per 16 weights instead of seven (zero-extend, two masks, two shifts, or, product); no Inf/NaN mapping.
/// </summary>
internal unsafe struct F16FiniteLoad : IWeightLoad
{
    public static int Size => 2;
    /// <summary>2^112: <see cref="Bits16"/> times this is the weight.</summary>
    public const float Scale = 5.192296858534828e33f;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* p) => Bits16(p) * Vector512.Create(Scale);

    /// <summary>16 halves as floats 2^-112 times their value (the load without its product by <see cref="Scale"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Bits16(byte* p) => Bits16(SignExtended16(p));

    /// <summary>The bit patterns of <see cref="Bits16(byte*)"/> from halves already sign-extended to 32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Bits16(Vector512<int> s) => (Vector512.ShiftLeft(s, 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>16 halves sign-extended to 32 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<int> SignExtended16(byte* p) =>
        Avx512F.IsSupported ? Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p))
                            : Vector512.WidenLower(Vector512.Create(Vector256.Load((short*)p), Vector256<short>.Zero));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p)
    {
        var s = Vector256.WidenLower(Vector256.Create(Vector128.Load((short*)p), Vector128<short>.Zero));
        return (Vector256.ShiftLeft(s, 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(Scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => (float)Unsafe.ReadUnaligned<Half>(p);
}

/// <summary>
/// Finite IEEE half as <see cref="F16FiniteLoad.Bits16"/>: 2^-112 times its value (the widening without its product by
/// 2^112), exact as a bit pattern (subnormal floats included). Only for products whose other factor was multiplied by
/// 2^112 beforehand: fma(bits, x · 2^112, acc) = fma(w, x, acc) bit for bit, since the FMA's product is exact.
/// </summary>
internal unsafe struct F16BitsLoad : IWeightLoad
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load16(byte* p) => F16FiniteLoad.Bits16(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* p)
    {
        var s = Vector256.WidenLower(Vector256.Create(Vector128.Load((short*)p), Vector128<short>.Zero));
        return (Vector256.ShiftLeft(s, 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* p) => BitConverter.Int32BitsToSingle((Unsafe.ReadUnaligned<short>(p) << 13) & unchecked((int)0x8FFFE000));
}

/// <summary>
/// The widening of <see cref="F16Load"/> under another name: it marks finite F16 weights whose subnormal halves sit in
/// few 16-half groups, so that the input-major decode product reads them through <see cref="F16BitsCheckedLoad"/> (the
/// other kernels take <see cref="F16Load"/> itself for such weights).
/// </summary>
internal unsafe struct F16SubnormalLoad : IWeightLoad
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load16(byte* p) => F16Load.Load16(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(byte* p) => F16Load.Load8(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => (float)Unsafe.ReadUnaligned<Half>(p);
}

/// <summary>
/// <see cref="F16BitsLoad"/> for finite tensors that hold subnormal halves: the same values (so every path stays exact),
/// and the hot loops take <see cref="Fma"/>, which sends the 16 halves that contain a subnormal (whose bit pattern would
/// be a subnormal float: a microcode assist in the FMA) through the exact widening and the unscaled x instead.
/// </summary>
internal unsafe struct F16BitsCheckedLoad : IWeightLoad
{
    public static int Size => 2;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load16(byte* p) => F16FiniteLoad.Bits16(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(byte* p) => F16BitsLoad.Load8(p);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Load1(byte* p) => F16BitsLoad.Load1(p);

    /// <summary>
    /// fma(w, x, acc) for the 16 halves at p and a = x · 2^112 (exact): fma(bits, a, acc) when none of them is subnormal,
    /// else fma(exact w, a · 2^-112, acc), the same value bit for bit (both products are exact).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Fma(Vector512<float> a, byte* p, Vector512<float> acc)
    {
        var h = F16FiniteLoad.SignExtended16(p);
        // |h| in 1 .. 0x3FF: a subnormal half (zero is not: its pattern is a float zero).
        var magnitude = h & Vector512.Create(0x7FFF);
        if (Vector512.LessThanAny((magnitude - Vector512<int>.One).AsUInt32(), Vector512.Create(0x3FFu)))
            return Vector512.FusedMultiplyAdd(F16Load.Load16(p), a * Vector512.Create(1f / F16FiniteLoad.Scale), acc);
        return Vector512.FusedMultiplyAdd(F16FiniteLoad.Bits16(h), a, acc);
    }
}
