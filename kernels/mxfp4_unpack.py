"""In-register MXFP4 unpack: the building block every expert GEMM dequantizes its weights with.

    packed [R, C/2] uint8 (E2M1 codes, element 2j in the low nibble of byte j, 2j+1 in the high one),
    scales [R, C/32] uint8 (E8M0)  ->  values [R, C] = FP4_VALUES[code] * 2**(scale - 127)

Bit-exact with `kernels.mxfp4.mxfp4_dequantize` for scale bytes 2..254, where every value is a normal
number or (6 * 2**127) inf; bytes 0 and 1 would need subnormals, which the interpreter's bf16 cast and
flush-to-zero hardware paths lose, and 255 is E8M0's NaN. Checkpoint scales sit far inside (around 2**-6). Decoding is integer arithmetic on the code, no table:
a magnitude m = code & 7 >= 2 is the normal number 2**((m >> 1) - 1) * (1 + (m & 1) / 2), whose fp32 bits
are (m << 22) + (126 << 23); m = 1 is 0.5 (bits 126 << 23) and m = 0 is 0. The scale is the fp32 whose
exponent field is the scale byte, so the product is exact (at most 2 significant bits), and so is the cast
to bf16.
"""
import triton
import triton.language as tl


@triton.jit
def mxfp4_unpack(packed, scales, OUT_DTYPE: tl.constexpr):
    """packed [R, C/2] uint8, scales [R, C/32] uint8 -> [R, C] of OUT_DTYPE."""
    R: tl.constexpr = packed.shape[0]
    HALF_C: tl.constexpr = packed.shape[1]
    GROUPS: tl.constexpr = scales.shape[1]
    codes = tl.reshape(tl.join(packed & 0xF, packed >> 4), (R, 2 * HALF_C)).to(tl.uint32)
    mag = codes & 7
    bits = tl.where(mag < 2, mag * (126 << 23), (mag << 22) + (126 << 23)) | ((codes & 8) << 28)
    values = tl.reshape(bits.to(tl.float32, bitcast=True), (R, GROUPS, 32))
    scale = (scales.to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    return tl.reshape(values * scale[:, :, None], (R, 2 * HALF_C)).to(OUT_DTYPE)
