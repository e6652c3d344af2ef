"""The whole MoE op (routing -> mlp1 -> mlp2) and the block (norm first, residual added) against moe_ref, the
reference model's MoE; the block's launches at decode."""
import pytest
import torch

from gpt_oss_triton.kernels import launch_plan
from gpt_oss_triton.kernels.moe import moe, moe_block
from gpt_oss_triton.kernels.mxfp4 import mxfp4_repack
from gpt_oss_triton.kernels.reference import moe_ref, rmsnorm_ref
from helpers import assert_close
from moe_testdata import random_moe_weights


def repacked(w: dict) -> dict:
    out = dict(w)
    for mlp in ("mlp1", "mlp2"):
        out[mlp + "_blocks"], out[mlp + "_scales"] = mxfp4_repack(w[mlp + "_blocks"], w[mlp + "_scales"])
    return out


def near_tie_tokens(t, gate_weight, gate_bias, k):
    """Tokens whose k-th and (k+1)-th bf16 router logits are within 2 ulps: rounding may pick either."""
    logits = torch.nn.functional.linear(t, gate_weight, gate_bias).float()
    top = logits.topk(k + 1, dim=-1).values
    return (top[:, k - 1] - top[:, k]) <= 2 * torch.finfo(torch.bfloat16).eps * top[:, k - 1].abs()


def compare_moe_with_reference(t, w, experts_per_token, residual=None, name="moe"):
    out = moe(t, **repacked(w), experts_per_token=experts_per_token, residual=residual)
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


@pytest.mark.parametrize("T, E", [(1, 32), (5, 8), (64, 16)])
def test_moe_block_is_norm_then_moe_plus_residual(T, E, device):
    gen = torch.Generator().manual_seed(T * 7 + E)
    H, I = 128, 64
    w = random_moe_weights(E, H, I, gen=gen, device=device)
    x = (torch.randn(T, H, generator=gen) * 3).to(torch.bfloat16).to(device)
    scale = (1 + 0.1 * torch.randn(H, generator=gen)).to(device)
    out = moe_block(x, scale, 1e-5, **repacked(w), experts_per_token=4)
    t = rmsnorm_ref(x, scale)
    expected = x.float() + moe_ref(t, **w, experts_per_token=4).float()
    ties = near_tie_tokens(t, w["gate_weight"], w["gate_bias"], 4)
    assert ties.sum() <= max(1, len(ties) // 10), f"{int(ties.sum())} near-tie tokens of {len(ties)}: reseed"
    assert_close(out[~ties], expected[~ties], torch.bfloat16, scale=3.0, name="moe_block")


@pytest.mark.parametrize("T", [1, 64])
def test_moe_block_is_three_launches_at_decode(T):
    """norm + router + top-k, mlp1 (+ bias + swiglu), mlp2 (+ bias + combine + residual): nothing else launches."""
    E, H, I = 128, 2880, 2880
    meta = torch.device("meta")
    shapes = {"gate_weight": (E, H), "gate_bias": (E,), "mlp1_blocks": (E, 2 * I, H // 32, 16),
              "mlp1_scales": (E, 2 * I, H // 32), "mlp1_bias": (E, 2 * I), "mlp2_blocks": (E, H, I // 32, 16),
              "mlp2_scales": (E, H, I // 32), "mlp2_bias": (E, H)}
    w = {k: torch.empty(shape, dtype=torch.uint8 if "blocks" in k or "scales" in k else torch.bfloat16, device=meta)
         for k, shape in shapes.items()}
    x = torch.empty(T, H, dtype=torch.bfloat16, device=meta)
    with launch_plan.record() as launches:
        moe_block(x, torch.empty(H, device=meta), 1e-5, **w, experts_per_token=4)
    assert [getattr(l, "name", l) for l in launches] == ["_routing_decode_kernel", "_moe_gemm_kernel", "_moe_gemm_kernel"]
