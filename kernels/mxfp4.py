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
