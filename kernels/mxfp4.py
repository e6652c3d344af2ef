"""MXFP4 codec in plain torch: the layout on disk and the reference for every in-kernel unpack.

A block is 32 consecutive values along the reduction dimension: 16 bytes of E2M1 codes
(element 2j in the low nibble of byte j, element 2j+1 in the high nibble) and one E8M0
scale byte. Value = FP4_VALUES[code] * 2**(scale - 127).

    blocks [..., G, 16] uint8, scales [..., G] uint8  <->  values [..., G * 32]
"""
import torch

MXFP4_BLOCK = 32
FP4_VALUES = (+0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_E2M1_MAX = 6.0
# Midpoints between the 8 magnitudes: a value exactly on one rounds to the even code.
_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise TypeError(f"mxfp4: blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.dim() < 2 or blocks.shape[-1] != MXFP4_BLOCK // 2:
        raise ValueError(f"mxfp4: blocks must have shape [..., G, 16], got {list(blocks.shape)}")
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(f"mxfp4: scales shape {list(scales.shape)} must equal blocks shape without its last dim "
                         f"{list(blocks.shape[:-1])}")


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Unpack [..., G, 16] codes and [..., G] scales to [..., G*32] values of `dtype`."""
    _check_packed(blocks, scales)
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    codes = torch.stack((blocks & 0x0F, blocks >> 4), dim=-1).flatten(-2)  # [..., G, 32], low nibble first
    return (lut[codes.long()] * e8m0_to_float(scales).unsqueeze(-1)).flatten(-2).to(dtype)


def e8m0_to_float(scales: torch.Tensor) -> torch.Tensor:
    """2**(s - 127) in fp32, exactly: the byte is the float's exponent field (s = 0 is the subnormal 2**-127)."""
    pow2 = (scales.to(torch.int32) << 23).view(torch.float32)
    return torch.where(scales == 0, torch.full_like(pow2, 2.0 ** -127), pow2)


def mxfp4_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [..., K] (K a multiple of 32) to (blocks [..., K/32, 16] uint8, scales [..., K/32] uint8).

    Each block takes the smallest power-of-two scale that fits its largest magnitude into E2M1's
    range (so nothing clips), and each value the nearest code, ties to the even code. Values
    that are already MXFP4-representable come back exactly.
    """
    if x.shape[-1] % MXFP4_BLOCK:
        raise ValueError(f"mxfp4_quantize: last dim {x.shape[-1]} is not a multiple of {MXFP4_BLOCK}")
    if not torch.isfinite(x).all():
        raise ValueError("mxfp4_quantize: input holds inf or nan")
    v = x.float().reshape(*x.shape[:-1], x.shape[-1] // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = v.abs().amax(dim=-1)
    # frexp gives amax/6 = m * 2**e with m in [0.5, 1): ceil(log2(amax/6)) is e, or e-1 when m is exactly 0.5.
    mant, exp = torch.frexp(amax / _E2M1_MAX)
    exp = torch.where(mant == 0.5, exp - 1, exp)
    exp = torch.where(amax > 0, exp, torch.full_like(exp, -127)).clamp(-127, 127)
    scaled = torch.ldexp(v, -exp.unsqueeze(-1)).abs()
    mids = torch.tensor(_MIDPOINTS, dtype=torch.float32, device=x.device)
    mag = torch.bucketize(scaled, mids)  # a value equal to a midpoint gets the lower code
    on_mid = (mag < len(_MIDPOINTS)) & (scaled == mids[mag.clamp(max=len(_MIDPOINTS) - 1)])
    mag = torch.where(on_mid & (mag % 2 == 1), mag + 1, mag)
    codes = (mag | torch.where(v < 0, 8, 0)).to(torch.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.contiguous(), (exp + 127).to(torch.uint8)


# --- the layout the Triton kernels read (kernels/moe_gemm.py), repacked at load, and its K order -----------------
#
# Codes: every 16-bit pair of bytes (b0, b1) of the checkpoint holds codes 4i..4i+3 of a row (n0 = b0 & 15,
# n1 = b0 >> 4, n2 = b1 & 15, n3 = b1 >> 4). Repacked, the same 16 bits hold code j's magnitude (3 bits) at
# REPACK_MAG[j] and its sign at REPACK_SIGN[j]: positions from which few bit operations place each code at the
# bf16 mantissa/exponent bits 6..8 and sign bit 15 (kernels/mxfp4_unpack.py). Bytes stay where they were.
# Scales: [E, N, K/32] reordered so that the 16 scales of rows 16t..16t+15 for group g are 16 contiguous bytes,
# row 16t + 8 rh + r at byte 2 r + rh: one aligned 16-byte load per row group (pipelined with the codes).
# Both are permutations of the same bytes (shapes and sizes unchanged); `mxfp4_unrepack` inverts them.
REPACK_MAG = (6, 3, 0, 9)
REPACK_SIGN = (15, 12, 14, 13)
REPACK_ROWS = 16
# The kernels' activations are permuted within every chunk of KCHUNK positions along the reduction dim:
# the element at k = 16 q + 8 g + 4 b + j (q < 4, g < 2, b < 2, j < 4) sits at 32 g + 8 j + 2 q + b.
KCHUNK = 64


def _pairs(blocks: torch.Tensor) -> torch.Tensor:
    b = blocks.view(*blocks.shape[:-1], 8, 2).to(torch.int32)
    return b[..., 0] | (b[..., 1] << 8)


def _from_pairs(v: torch.Tensor, shape) -> torch.Tensor:
    return torch.stack((v & 0xFF, v >> 8), dim=-1).to(torch.uint8).view(shape)


def mxfp4_repack(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Checkpoint blocks [E, N, G, 16] and scales [E, N, G] (N a multiple of 16) -> the kernels' layout (new tensors
    of the same shapes and dtypes)."""
    _check_packed(blocks, scales)
    E, N, G = scales.shape
    if N % REPACK_ROWS:
        raise ValueError(f"mxfp4_repack: {N} rows are not a multiple of {REPACK_ROWS}")
    v = _pairs(blocks)
    r = torch.zeros_like(v)
    for j in range(4):
        code = (v >> (4 * j)) & 15
        r |= ((code & 7) << REPACK_MAG[j]) | ((code >> 3) << REPACK_SIGN[j])
    s = scales.view(E, N // 16, 2, 8, G).permute(0, 1, 4, 3, 2).contiguous().view(E, N, G)
    return _from_pairs(r, blocks.shape), s


def mxfp4_unrepack(blocks: torch.Tensor, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of mxfp4_repack: the checkpoint layout back, bit for bit."""
    _check_packed(blocks, scales)
    E, N, G = scales.shape
    r = _pairs(blocks)
    v = torch.zeros_like(r)
    for j in range(4):
        code = ((r >> REPACK_MAG[j]) & 7) | (((r >> REPACK_SIGN[j]) & 1) << 3)
        v |= code << (4 * j)
    s = scales.view(E, N // 16, G, 8, 2).permute(0, 1, 4, 3, 2).contiguous().view(E, N, G)
    return _from_pairs(v, blocks.shape), s


def permute_k(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] -> [..., cdiv(K, 64) * 64] in the kernels' K order (zero padded)."""
    K = x.shape[-1]
    pad = -K % KCHUNK
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    C = x.shape[-1] // KCHUNK
    x = x.reshape(*x.shape[:-1], C, 4, 2, 2, 4)  # c q g b j
    n = x.dim()
    return x.permute(*range(n - 5), n - 5, n - 3, n - 1, n - 4, n - 2).reshape(*x.shape[:-5], C * KCHUNK)


def unpermute_k(x: torch.Tensor, K: int) -> torch.Tensor:
    """The inverse of permute_k: [..., cdiv(K, 64) * 64] -> [..., K]."""
    C = x.shape[-1] // KCHUNK
    x = x.reshape(*x.shape[:-1], C, 2, 4, 4, 2)  # c g j q b
    n = x.dim()
    x = x.permute(*range(n - 5), n - 5, n - 2, n - 4, n - 1, n - 3).reshape(*x.shape[:-5], C * KCHUNK)
    return x[..., :K]
