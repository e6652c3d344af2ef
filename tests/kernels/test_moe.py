"""The whole MoE op (routing -> mlp1 -> mlp2) against moe_ref, the reference model's MoE."""
import pytest
import torch

from gpt_oss_triton.kernels.moe import moe
from gpt_oss_triton.kernels.reference import moe_ref
from helpers import assert_close
from moe_testdata import random_moe_weights


def near_tie_tokens(t, gate_weight, gate_bias, k):
    """Tokens whose k-th and (k+1)-th bf16 router logits are within 2 ulps: rounding may pick either."""
    logits = torch.nn.functional.linear(t, gate_weight, gate_bias).float()
    top = logits.topk(k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]) <= 2 * torch.finfo(torch.bfloat16).eps * top[:, k - 1].abs()


def compare_moe_with_reference(t, w, experts_per_token, residual=None, name="moe"):
    out = moe(t, **w, experts_per_token=experts_per_token, residual=residual)
    expected = moe_ref(t, **w, experts_per_token=experts_per_token).float()
    if residual is not None:
        expected += residual.float()
    ties = near_tie_tokens(t, w["gate_weight"], w["gate_bias"], experts_per_token)
    assert ties.sum() <= max(1, len(ties) // 10), f"{int(ties.sum())} near-tie tokens of {len(ties)}: reseed"
    # The reference rounds to bf16 at three more points than the kernels (h, the expert outputs, the sum), and
    # the interpreter's fp32 -> bf16 casts truncate where the GPU rounds to nearest: both err by a few ulps.
    assert_close(out[~ties], expected[~ties], torch.bfloat16, scale=3.0, name=name)


@pytest.mark.parametrize("T, E, H, I, residual", [
    (1, 8, 64, 64, False),      # decode
    (9, 32, 96, 64, True),      # decode, 20B's expert count
    (90, 8, 64, 96, True),      # prefill
])
def test_moe_matches_reference(T, E, H, I, residual, device):
    gen = torch.Generator().manual_seed(T + E + H)
    w = random_moe_weights(E, H, I, gen=gen, device=device)
    t = torch.randn(T, H, generator=gen).to(torch.bfloat16).to(device)
    res = torch.randn(T, H, generator=gen).to(torch.bfloat16).to(device) if residual else None
    compare_moe_with_reference(t, w, 4, res)
