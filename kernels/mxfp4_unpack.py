"""In-register MXFP4 decode of the repacked layout (kernels/mxfp4.py, mxfp4_repack): what the expert GEMMs use.

    factor = mxfp4_factor(scales [R, G] uint8, FAST)
    v0, v1, v2, v3 = mxfp4_decode4(packed [R, C] uint16, factor broadcast to [R, C], FAST, OUT_DTYPE)
        v_j[r, c] = FP4_VALUES[code j of packed[r, c]] * 2**(scale - 127)        (codes 4c + j of the row)

FAST (the GPU path): one 32-bit register holds two uint16 (pack=2), and every code goes to bf16 in 2-4 integer
instructions and one bf16x2 multiply:
- code j's magnitude bits (m, e0, e1) sit at REPACK_MAG[j] and its sign at REPACK_SIGN[j]; a mask, at most one
  shift and a multiply by 2**a + 2**b (two shifted copies with no overlapping bits, so no carries) put them at
  bf16 bits 6, 7, 8 and 15, the same way in both halves, and a last mask clears the rest;
- those bits read as a bf16 are the code's value times 2**-126, exactly: an E2M1 code is the bf16 whose exponent
  field is e1 e0 and mantissa m, with E2M1's subnormal (0.5) landing on bf16's subnormal 2**-127;
- fma.rn.bf16x2 with the factor 2**(scale - 1) (bf16 bits (scale + 126) << 7, two copies: one IMAD from the
  byte) and -0.0 gives the value exactly (2 significant bits, within bf16's range, subnormals kept: PTX's bf16
  fma has no flush-to-zero). The factor is a normal bf16 only for scale bytes 0..128 (|values| <= 12): the
  layout's loader checks `fast_decode_ok` and otherwise runs the portable path.
The PTX is checked instruction by instruction against the torch codec by an emulator (tests/kernels/
test_mxfp4_unpack.py): the interpreter cannot run inline assembly.

Portable (the interpreter, and scale bytes above 128 on a GPU): the same values from plain integer and float
operations in fp32, cast to OUT_DTYPE.
"""
import triton
import triton.language as tl

from .mxfp4 import REPACK_MAG, REPACK_SIGN

FAST_MAX_SCALE = 128

# $0..$3: codes 0..3 of both uint16 (bf16x2 each); $4: the two uint16; $5, $6: their factors.
DECODE_ASM = tl.constexpr("""{
.reg .b32 f, u, nz;
mov.b32 nz, 0x80008000;
prmt.b32 f, $5, $6, 0x5410;
and.b32 u, $4, 0x81C081C0;
fma.rn.bf16x2 $0, u, f, nz;
shl.b32 u, $4, 3;
and.b32 u, u, 0x81C081C0;
fma.rn.bf16x2 $1, u, f, nz;
and.b32 u, $4, 0x40074007;
mul.lo.u32 u, u, 0x42;
and.b32 u, u, 0x81C081C0;
fma.rn.bf16x2 $2, u, f, nz;
shr.u32 u, $4, 3;
and.b32 u, u, 0x05C005C0;
mul.lo.u32 u, u, 0x21;
and.b32 u, u, 0x81C081C0;
fma.rn.bf16x2 $3, u, f, nz;
}""")
_MAG0, _MAG1, _MAG2, _MAG3 = (tl.constexpr(m) for m in REPACK_MAG)
_SIGN0, _SIGN1, _SIGN2, _SIGN3 = (tl.constexpr(s) for s in REPACK_SIGN)


def fast_decode_ok(scales) -> bool:
    """Whether the FAST decode is exact for these scale bytes (a torch tensor)."""
    return scales.numel() == 0 or int(scales.max()) <= FAST_MAX_SCALE


@triton.jit
def mxfp4_factor(scales, FAST: tl.constexpr):
    """scale bytes -> FAST: uint32 holding bf16 2**(s - 1) twice; portable: fp32 2**(s - 127) (s = 0 subnormal)."""
    s = scales.to(tl.uint32)
    if FAST:
        factor = s * 0x00800080 + 0x3F003F00
    else:
        factor = tl.where(s == 0, 2.0 ** -127, (s << 23).to(tl.float32, bitcast=True))
    return factor


@triton.jit
def _code(packed, MAG: tl.constexpr, SIGN: tl.constexpr, factor, OUT_DTYPE: tl.constexpr):
    """One code's value: magnitude m >= 2 is the normal 2**((m >> 1) - 1) * (1 + (m & 1) / 2) (fp32 bits
    (m << 22) + (126 << 23)), m = 1 is 0.5 (bits 126 << 23), m = 0 is 0."""
    mag = (packed >> MAG) & 7
    bits = tl.where(mag < 2, mag * (126 << 23), (mag << 22) + (126 << 23)) | (((packed >> SIGN) & 1) << 31)
    return (bits.to(tl.float32, bitcast=True) * factor).to(OUT_DTYPE)


@triton.jit
def mxfp4_decode4(packed, factor, FAST: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """packed [...] uint16 (4 repacked codes each), factor (mxfp4_factor, broadcast to packed's shape) -> the four
    codes' values, each [...] of OUT_DTYPE (bf16 when FAST)."""
    if FAST:
        v0, v1, v2, v3 = tl.inline_asm_elementwise(DECODE_ASM, "=r,=r,=r,=r,r,r,r", [packed, factor],
                                                   dtype=(tl.bfloat16, tl.bfloat16, tl.bfloat16, tl.bfloat16),
                                                   is_pure=True, pack=2)
    else:
        v = packed.to(tl.uint32)
        v0, v1 = _code(v, _MAG0, _SIGN0, factor, OUT_DTYPE), _code(v, _MAG1, _SIGN1, factor, OUT_DTYPE)
        v2, v3 = _code(v, _MAG2, _SIGN2, factor, OUT_DTYPE), _code(v, _MAG3, _SIGN3, factor, OUT_DTYPE)
    return v0, v1, v2, v3


@triton.jit
def permuted_k(k):
    """Index k along K -> its position in the kernels' K order (mxfp4.permute_k): 16 q + 8 g + 4 b + j within
    each chunk of 64 goes to 32 g + 8 j + 2 q + b."""
    w = k % 64
    return k - w + 32 * ((w // 8) % 2) + 8 * (w % 4) + 2 * (w // 16) + (w // 4) % 2


@triton.jit
def true_k(p):
    """Position p of the kernels' K order -> the index along K it holds (the inverse of permuted_k)."""
    w = p % 64
    return p - w + 16 * ((w // 2) % 4) + 8 * (w // 32) + 4 * (w % 2) + (w // 8) % 4
