"""The torch MXFP4 codec: layout facts from the spec, exact round trips, nearest-code rounding."""
import pytest
import torch

from gpt_oss_triton.kernels.mxfp4 import FP4_VALUES, mxfp4_dequantize, mxfp4_quantize


def test_dequantize_layout_low_nibble_first_and_scale():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x71  # element 0: code 1 (0.5), element 1: code 7 (6.0)
    blocks[0, 1] = 0xF8  # element 2: code 8 (-0), element 3: code 15 (-6)
    x = mxfp4_dequantize(blocks, torch.tensor([129], dtype=torch.uint8), torch.float32)  # 2**(129-127) = 4
    assert x.shape == (32,)
    assert x[:4].tolist() == [2.0, 24.0, -0.0, -24.0]
    assert torch.signbit(x[2])
    assert (x[4:] == 0).all()


@pytest.mark.parametrize("scale", [0, 1, 100, 126, 127, 128, 150, 254])
def test_dequantize_every_byte(scale):
    blocks = torch.arange(256, dtype=torch.uint8).view(16, 16)  # 16 blocks covering every byte value
    x = mxfp4_dequantize(blocks, torch.full((16,), scale, dtype=torch.uint8), torch.float32).double()
    flat = blocks.reshape(-1).long()
    # Exact in float64, then rounded like the fp32 result (scale 254 overflows fp32 to inf for |code| >= 2).
    lut = (torch.tensor(FP4_VALUES, dtype=torch.float64) * 2.0 ** (scale - 127)).float().double()
    assert torch.equal(x[0::2], lut[flat & 15]) and torch.equal(x[1::2], lut[flat >> 4])


def test_round_trip_is_exact_on_representable_values():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (4, 6, 3, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, (4, 6, 3), generator=g, dtype=torch.uint8)
    x = mxfp4_dequantize(blocks, scales, torch.float32)
    b2, s2 = mxfp4_quantize(x)
    assert b2.shape == blocks.shape and s2.shape == scales.shape
    assert torch.equal(mxfp4_dequantize(b2, s2, torch.float32), x)


def test_quantize_picks_the_nearest_code_of_a_scale_that_does_not_clip():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 128, generator=g) * torch.logspace(-3, 3, 64)[:, None]
    blocks, scales = mxfp4_quantize(x)
    q = mxfp4_dequantize(blocks, scales, torch.float32)
    step = torch.ldexp(torch.ones(scales.shape), scales.int() - 127).repeat_interleave(32, dim=-1)
    # No clipping: the block maximum fits in 6 * scale, and half the scale would not hold it.
    amax = x.view(64, 4, 32).abs().amax(-1)
    unit = step.view(64, 4, 32)[..., 0]
    assert (amax <= 6 * unit).all() and (amax > 3 * unit).all()
    # Nearest: no other grid value at this scale is closer.
    grid = torch.tensor(FP4_VALUES)[None, None, :] * step[..., None]
    best = (x[..., None] - grid).abs().min(-1).values
    assert torch.equal((x - q).abs(), best)
    # So the error is bounded by half the widest gap (2 units, between 4 and 6).
    assert ((x - q).abs() <= step).all()


def test_ties_round_to_the_even_code():
    x = torch.zeros(32)
    x[:8] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])  # 6 fixes the scale at 2**0
    blocks, scales = mxfp4_quantize(x)
    assert scales.item() == 127
    assert mxfp4_dequantize(blocks, scales, torch.float32)[:8].tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_zero_and_tiny_blocks():
    x = torch.zeros(2, 32)
    x[1, 0] = 1e-40  # below 6 * 2**-127: flushes to zero rather than failing
    blocks, scales = mxfp4_quantize(x)
    assert (mxfp4_dequantize(blocks, scales, torch.float32) == 0).all()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="not a multiple of 32"):
        mxfp4_quantize(torch.zeros(3, 40))
    with pytest.raises(ValueError, match="inf or nan"):
        mxfp4_quantize(torch.full((32,), float("nan")))
    with pytest.raises(TypeError, match="must be uint8"):
        mxfp4_dequantize(torch.zeros(2, 16), torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"scales shape \[3\]"):
        mxfp4_dequantize(torch.zeros(2, 16, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8))


def test_repack_is_a_bit_exact_permutation():
    from gpt_oss_triton.kernels.mxfp4 import mxfp4_repack, mxfp4_unrepack
    g = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (3, 48, 5, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(0, 256, (3, 48, 5), generator=g, dtype=torch.uint8)
    rb, rs = mxfp4_repack(blocks, scales)
    assert rb.shape == blocks.shape and rs.shape == scales.shape and rb.dtype == rs.dtype == torch.uint8
    assert not torch.equal(rb, blocks)
    b2, s2 = mxfp4_unrepack(rb, rs)
    assert torch.equal(b2, blocks) and torch.equal(s2, scales)
    # the same bytes: per 16-bit pair a permutation of bits, and the scales a permutation of positions
    pairs = lambda b: b.view(-1, 2).to(torch.int32)
    popcount = lambda v: sum((v >> i) & 1 for i in range(8))
    assert torch.equal(popcount(pairs(rb)).sum(1), popcount(pairs(blocks)).sum(1))
    assert torch.equal(rs.flatten().sort().values, scales.flatten().sort().values)
    # scales of rows 16t..16t+15 for one group: 16 contiguous bytes, row 16t + 8 rh + r at 2 r + rh
    t, g, r, rh = 1, 2, 3, 1
    assert rs[0].flatten()[(t * 5 + g) * 16 + 2 * r + rh] == scales[0, 16 * t + 8 * rh + r, g]


def test_repack_places_each_codes_bits():
    from gpt_oss_triton.kernels.mxfp4 import REPACK_MAG, REPACK_SIGN, mxfp4_repack
    blocks = torch.zeros(1, 16, 1, 16, dtype=torch.uint8)
    blocks[0, 0, 0, 0], blocks[0, 0, 0, 1] = 0x9A, 0x3F  # codes 0xA, 0x9, 0xF, 0x3 (low nibble first)
    rb, _ = mxfp4_repack(blocks, torch.zeros(1, 16, 1, dtype=torch.uint8))
    v = int(rb[0, 0, 0, 0]) | (int(rb[0, 0, 0, 1]) << 8)
    for j, code in enumerate((0xA, 0x9, 0xF, 0x3)):
        assert (v >> REPACK_MAG[j]) & 7 == code & 7 and (v >> REPACK_SIGN[j]) & 1 == code >> 3


def test_k_permutation_round_trip_and_positions():
    from gpt_oss_triton.kernels.mxfp4 import permute_k, unpermute_k
    x = torch.arange(160, dtype=torch.float32).view(1, 160)
    p = permute_k(x)
    assert p.shape == (1, 192) and int((p == 0).sum()) == 1 + 32  # x[0] and the padding
    assert torch.equal(unpermute_k(p, 160), x)
    for q, g, b, j in ((0, 0, 0, 0), (3, 1, 1, 3), (2, 0, 1, 1)):
        k = 64 + 16 * q + 8 * g + 4 * b + j
        assert p[0, 64 + 32 * g + 8 * j + 2 * q + b] == k
