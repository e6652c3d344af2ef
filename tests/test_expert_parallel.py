"""Expert parallelism at the op level, in one process: N ranks' shares of the MoE block (each with its slice of
the experts, the residual on rank 0 only) sum to the whole block, for the reference and for the Triton kernels."""
import pytest
import torch

from gpt_oss_triton.kernels.moe import moe, moe_block
from gpt_oss_triton.kernels.mxfp4 import mxfp4_repack
from gpt_oss_triton.kernels.reference import moe_ref
from helpers import assert_close
from moe_testdata import random_moe_weights

E, H, I, K = 8, 64, 64, 4
EXPERT_TENSORS = ("mlp1_blocks", "mlp1_scales", "mlp1_bias", "mlp2_blocks", "mlp2_scales", "mlp2_bias")


def shares(w: dict, ranks: int) -> list[dict]:
    per = E // ranks
    return [{k: (v[r * per:(r + 1) * per] if k in EXPERT_TENSORS else v) for k, v in w.items()} | {"first_expert": r * per}
            for r in range(ranks)]


@pytest.mark.parametrize("ranks", [2, 4, 8])
def test_reference_shares_sum_to_the_block(ranks):
    gen = torch.Generator().manual_seed(ranks)
    w = random_moe_weights(E, H, I, gen=gen)
    t = torch.randn(7, H, generator=gen)
    w32 = {k: (v.float() if v.is_floating_point() else v) for k, v in w.items()}
    whole = moe_ref(t, **w32, experts_per_token=K)
    parts = [moe_ref(t, **s, experts_per_token=K) for s in shares(w32, ranks)]
    assert all((p != 0).any() for p in parts) or ranks == 8  # every share took part (8 ranks: 1 expert each)
    assert_close(sum(parts), whole, name=f"{ranks} shares")


def test_a_share_outside_the_router_fails(device):
    gen = torch.Generator().manual_seed(1)
    w = random_moe_weights(E, H, I, gen=gen, device=device)
    t = torch.randn(5, H, generator=gen).to(torch.bfloat16).to(device)
    with pytest.raises(ValueError, match=r"experts \[6, 10\) are not within the router's 8"):
        moe(t, **shares(w, 2)[1] | {"first_expert": 6}, experts_per_token=K)


@pytest.mark.parametrize("tokens,ranks,forced", [(1, 2, ()), (6, 4, ()), (3, 2, (0, 1, 2, 3))])
def test_triton_shares_sum_to_the_block(tokens, ranks, forced, device):
    """Decode-sized batches; the forced case routes every token to rank 0's experts, so rank 1 runs no pair and
    returns exact zeros."""
    gen = torch.Generator().manual_seed(tokens + ranks)
    w = random_moe_weights(E, H, I, gen=gen, device=device, forced_experts=forced)
    for mlp in ("mlp1", "mlp2"):  # the kernels' layout (repacked per expert: a share is a slice of it)
        w[mlp + "_blocks"], w[mlp + "_scales"] = mxfp4_repack(w[mlp + "_blocks"], w[mlp + "_scales"])
    t = torch.randn(tokens, H, generator=gen).to(torch.bfloat16).to(device)
    x = torch.randn(tokens, H, generator=gen).to(torch.bfloat16).to(device)
    whole = moe(t, **w, experts_per_token=K, residual=x)
    parts = [moe(t, **s, experts_per_token=K, residual=x if s["first_expert"] == 0 else None)
             for s in shares(w, ranks)]
    if forced:
        assert torch.equal(parts[1], torch.zeros_like(parts[1]))
    # Each share rounds its own partial sum to bf16 before the sum over ranks: a few bf16 ulps apart.
    assert_close(sum(p.float() for p in parts), whole.float(), torch.bfloat16, name=f"{ranks} shares")


@pytest.mark.parametrize("tokens,ranks", [(1, 2), (5, 4)])
def test_triton_decode_block_shares_sum_to_the_block(tokens, ranks, device):
    """The decode path the model runs (moe_block: routing_decode with the norm, mlp1, mlp2 with the combine):
    each rank's share, the residual on rank 0 alone, sums to the whole block."""
    gen = torch.Generator().manual_seed(10 * tokens + ranks)
    w = random_moe_weights(E, H, I, gen=gen, device=device)
    for mlp in ("mlp1", "mlp2"):
        w[mlp + "_blocks"], w[mlp + "_scales"] = mxfp4_repack(w[mlp + "_blocks"], w[mlp + "_scales"])
    x = (torch.randn(tokens, H, generator=gen) * 3).to(torch.bfloat16).to(device)
    scale = (1 + 0.1 * torch.randn(H, generator=gen)).to(device)
    whole = moe_block(x, scale, 1e-5, **w, experts_per_token=K)
    parts = [moe_block(x, scale, 1e-5, **s, experts_per_token=K, residual=s["first_expert"] == 0)
             for s in shares(w, ranks)]
    assert_close(sum(p.float() for p in parts), whole.float(), torch.bfloat16, name=f"{ranks} shares")
