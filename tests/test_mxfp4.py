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
