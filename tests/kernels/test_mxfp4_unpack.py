"""The in-kernel MXFP4 unpack against the torch codec, bit for bit: every byte value under every scale 2..254."""
import pytest
import torch
import triton
import triton.language as tl

from gpt_oss_triton.kernels.mxfp4 import mxfp4_dequantize
from gpt_oss_triton.kernels.mxfp4_unpack import mxfp4_unpack


@triton.jit
def _unpack_rows_kernel(blocks_ptr, scales_ptr, out_ptr, n_rows, BLOCK_R: tl.constexpr, C: tl.constexpr,
                        OUT_DTYPE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = rows[:, None] < n_rows
    packed = tl.load(blocks_ptr + rows[:, None] * (C // 2) + tl.arange(0, C // 2)[None, :], mask=mask)
    scales = tl.load(scales_ptr + rows[:, None] * (C // 32) + tl.arange(0, C // 32)[None, :], mask=mask)
    values = mxfp4_unpack(packed, scales, OUT_DTYPE)
    tl.store(out_ptr + rows[:, None] * C + tl.arange(0, C)[None, :], values, mask=mask)


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply")  # 6 * 2**127 is inf, in the codec too
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unpack_matches_codec_bit_exact(dtype, device):
    # Row r, group g holds all 256 byte values (16 groups of 16 bytes) under scale 2 + (r + g) % 253:
    # every (byte, scale) combination appears, each scale at every group position of the row.
    n_rows, groups = 253, 16
    blocks = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(1, groups, 16).expand(n_rows, -1, -1)
    scales = (2 + (torch.arange(n_rows)[:, None] + torch.arange(groups)[None, :]) % 253).to(torch.uint8)
    blocks, scales = blocks.contiguous().to(device), scales.to(device)
    out = torch.empty(n_rows, groups * 32, dtype=dtype, device=device)
    block_r = 16
    _unpack_rows_kernel[(triton.cdiv(n_rows, block_r),)](
        blocks, scales, out, n_rows, BLOCK_R=block_r, C=groups * 32,
        OUT_DTYPE=tl.bfloat16 if dtype == torch.bfloat16 else tl.float32)
    expected = mxfp4_dequantize(blocks, scales, dtype)
    int_view = torch.int16 if dtype == torch.bfloat16 else torch.int32
    same = out.view(int_view) == expected.view(int_view)  # bits: tells -0.0 from +0.0, inf from a big finite
    if not same.all():
        r, c = (int(i) for i in torch.nonzero(~same)[0])
        raise AssertionError(f"{int((~same).sum())} values differ; first at row {r} col {c}: byte "
                             f"{int(blocks[r, c // 32, (c % 32) // 2])} scale {int(scales[r, c // 32])}: "
                             f"got {out[r, c].item()!r}, expected {expected[r, c].item()!r}")
