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


@pytest.mark.parametrize("op", ["rmsnorm", "add_rmsnorm", "rmsnorm_ref"])
def test_rmsnorm_low_rms_rows(op, device):
    """Guards where eps sits: x * rsqrt(mean(x^2) + eps). Rows of RMS 1e-4..1 (x = c * random signs, so
    mean(x^2) = c^2 exactly) against that formula in fp64: at RMS 1e-3 the eps of 1e-5 outweighs mean(x^2)
    ten times, and eps moved outside the sqrt (1 / (rms + eps)) is off by 3x. The kernels and the reference
    (which the model and every other test use) are each checked against the formula."""
    rms = torch.tensor([1e-4, 1e-3, 3e-3, 1e-2, 1.0], dtype=torch.float64)
    signs = torch.randint(0, 2, (5, 64), generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = rms[:, None] * signs
    scale = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    expected = x / torch.sqrt(rms[:, None] ** 2 + 1e-5) * scale
    x32, scale32 = x.float().to(device), scale.float().to(device)
    if op == "add_rmsnorm":  # the row arrives as x + delta
        out = add_rmsnorm(x32 * 0.5, x32 * 0.5, scale32)[1]
    else:
        out = {"rmsnorm": rmsnorm, "rmsnorm_ref": rmsnorm_ref}[op](x32, scale32)
    assert_close(out, expected.float(), name=f"{op} at RMS {rms.tolist()}")


def test_rmsnorm_rejects_bad_inputs(device):
    x = torch.zeros(2, 16, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"scale must be \[H\] = \[16\]"):
        rmsnorm(x, torch.ones(8, device=device))
    with pytest.raises(TypeError, match="x must be bf16, fp16 or fp32"):
        rmsnorm(x.long(), torch.ones(16, device=device))
    with pytest.raises(ValueError, match="delta must match x"):
        add_rmsnorm(x, x.float(), torch.ones(16, device=device))
