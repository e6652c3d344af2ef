"""The skinny decode linear layer against linear_ref: every prologue/epilogue combination, batch 1 to past one
row tile, N and K tails; fp32 outputs with a tolerance that a 0.1% error in any term would break."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.kernels.linear import linear, linear_ref
from gpt_oss_triton.kernels.reference import rmsnorm_ref


def _inputs(M, N, K, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, K, generator=g) * 2 + 0.5).bfloat16()
    w = (torch.randn(N, K, generator=g) / K ** 0.5).bfloat16()
    bias = torch.randn(N, generator=g).bfloat16()
    residual = (torch.randn(M, N, generator=g) * 4).bfloat16()
    scale = torch.rand(K, generator=g) + 0.5
    return [t.to(device) for t in (x, w, bias, residual, scale)]


@pytest.mark.parametrize("M", [1, 5, 16, 17, 64])
@pytest.mark.parametrize("N,K", [(48, 128), (37, 200)])  # N, K tails: not multiples of any tile
@pytest.mark.parametrize("terms", ["plain", "bias", "bias+residual", "norm", "norm+bias+residual"])
def test_linear(M, N, K, terms, device):
    x, w, bias, residual, scale = _inputs(M, N, K, device)
    kw = dict(bias=bias if "bias" in terms else None, residual=residual if "residual" in terms else None,
              norm_scale=scale if "norm" in terms else None)
    y = linear(x, w, **kw, out_dtype=torch.float32)
    expected = linear_ref(x, w, **kw)
    # fp32 accumulators over bf16 inputs: only summation order differs.
    assert_close(y, expected, torch.float32, scale=0.1, name=terms)


def test_linear_rounds_once_to_bf16(device):
    """The bf16 output is the fp32 result rounded once (to nearest even; the interpreter is made to round so)."""
    x, w, bias, residual, scale = _inputs(3, 40, 96, device)
    y = linear(x, w, bias, residual, scale)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, linear(x, w, bias, residual, scale, out_dtype=torch.float32).to(torch.bfloat16))


def test_linear_norm_prologue_is_rmsnorm_then_linear(device):
    """The folded norm is the block's RMSNorm: against the unfused pair, within the bf16 rounding of its output."""
    x, w, bias, _, scale = _inputs(4, 64, 256, device)
    y = linear(x, w, bias, norm_scale=scale, eps=1e-5, out_dtype=torch.float32)
    unfused = rmsnorm_ref(x, scale, 1e-5).float() @ w.float().T + bias.float()
    assert_close(y, unfused, torch.bfloat16, scale=0.5, name="rstd * ((x * scale) @ W^T) vs rmsnorm(x) @ W^T")


def test_linear_rejects_bad_inputs(device):
    x, w, bias, residual, scale = _inputs(2, 16, 32, device)
    with pytest.raises(ValueError, match=r"weight must be a contiguous \[N, 32\]"):
        linear(x, w[:, :16])
    with pytest.raises(ValueError, match=r"bias must be a contiguous float \[16\]"):
        linear(x, w, bias[:8])
    with pytest.raises(ValueError, match=r"residual must be \[2, 16\]"):
        linear(x, w, residual=residual[:1])
    with pytest.raises(ValueError, match=r"norm_scale must be a contiguous float \[32\]"):
        linear(x, w, norm_scale=scale[:16])
    with pytest.raises(ValueError, match="x must be \\[M, K\\] bf16"):
        linear(x.float(), w)
