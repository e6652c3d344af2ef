"""RMSNorm and the fused residual-add + RMSNorm against the torch references."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.kernels.reference import rmsnorm_ref
from gpt_oss_triton.kernels.rmsnorm import add_rmsnorm, add_rmsnorm_ref, rmsnorm


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(3, 7, 2880), (1, 100)])
def test_rmsnorm(shape, dtype, device):
    x = (torch.randn(shape) * 3 + 1).to(dtype).to(device)
    scale = torch.rand(shape[-1]).to(device) + 0.5
    assert_close(rmsnorm(x, scale), rmsnorm_ref(x, scale))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_rmsnorm(dtype, device):
    x = (torch.randn(19, 2880) * 4).to(dtype).to(device)
    delta = torch.randn(19, 2880).to(dtype).to(device)
    scale = torch.rand(2880).to(device) + 0.5
    h, t = add_rmsnorm(x, delta, scale)
    h_ref, t_ref = add_rmsnorm_ref(x, delta, scale)
    assert_close(h, h_ref, name="x + delta")
    assert_close(t, t_ref, name="rmsnorm(x + delta)")


def test_rmsnorm_rejects_bad_inputs(device):
    x = torch.zeros(2, 16, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"scale must be \[H\] = \[16\]"):
        rmsnorm(x, torch.ones(8, device=device))
    with pytest.raises(TypeError, match="x must be bf16, fp16 or fp32"):
        rmsnorm(x.long(), torch.ones(16, device=device))
    with pytest.raises(ValueError, match="delta must match x"):
        add_rmsnorm(x, x.float(), torch.ones(16, device=device))
