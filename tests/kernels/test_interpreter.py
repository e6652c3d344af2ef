"""The interpreter stands in for the GPU in every kernel test: its fp32 -> bf16 cast must round as the GPU does."""
import pytest
import torch
import triton
import triton.language as tl

from gpt_oss_triton.kernels._interpreter import interpreting


@triton.jit
def _cast_kernel(X, Y, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(Y + i, tl.load(X + i).to(tl.bfloat16))


def test_fp32_to_bf16_rounds_to_nearest_even():
    if not interpreting():
        pytest.skip("checks the interpreter; a GPU rounds natively")
    g = torch.Generator().manual_seed(0)
    ties = torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 2 ** -130 * 3])  # halfway: to even
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 3.3895e38, 1e-40])
    x = torch.cat([torch.randn(1024 - len(ties) - len(special), generator=g) * 100, ties, special])
    y = torch.empty(1024, dtype=torch.bfloat16)
    _cast_kernel[(1,)](x, y, N=1024)
    expected = x.to(torch.bfloat16)
    assert torch.equal(y.view(torch.int16)[:-7], expected.view(torch.int16)[:-7])
    assert torch.isnan(y[-7]) and torch.equal(y[-6:], expected[-6:])
