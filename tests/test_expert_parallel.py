"""Expert parallelism at the op level, in one process: N ranks' shares of the MoE block (each with its slice of
the experts, the residual on rank 0 only) sum to the whole block, for the reference and for the Triton kernels."""
import pytest
import torch

from gpt_oss_triton.kernels.moe import local_experts, moe
from gpt_oss_triton.kernels.reference import moe_ref
from gpt_oss_triton.kernels.routing import routing
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


def test_local_routing_keeps_grouped_rows_and_zeroes_other_slots(device):
    gen = torch.Generator().manual_seed(1)
    w = random_moe_weights(E, H, I, gen=gen, device=device)
    t = torch.randn(5, H, generator=gen).to(torch.bfloat16).to(device)
    r = routing(t, w["gate_weight"], w["gate_bias"], K)
    mine = local_experts(r, 2, 4)
    assert mine.n_experts == 4 and mine.counts.tolist() == r.counts[2:6].tolist()
    assert mine.offsets.tolist() == r.offsets[2:6].tolist()
    inside = (r.indices >= 2) & (r.indices < 6)
    assert torch.equal(mine.weights[~inside], torch.zeros_like(mine.weights[~inside]))
    assert torch.equal(mine.weights[inside], r.weights[inside])
    with pytest.raises(ValueError, match=r"experts \[6, 10\) are not within the router's 8"):
        local_experts(r, 6, 4)


@pytest.mark.parametrize("tokens,ranks,forced", [(1, 2, ()), (6, 4, ()), (3, 2, (0, 1, 2, 3))])
def test_triton_shares_sum_to_the_block(tokens, ranks, forced, device):
    """Decode-sized batches; the forced case routes every token to rank 0's experts, so rank 1 runs no pair and
    returns exact zeros."""
    gen = torch.Generator().manual_seed(tokens + ranks)
    w = random_moe_weights(E, H, I, gen=gen, device=device, forced_experts=forced)
    t = torch.randn(tokens, H, generator=gen).to(torch.bfloat16).to(device)
    x = torch.randn(tokens, H, generator=gen).to(torch.bfloat16).to(device)
    whole = moe(t, **w, experts_per_token=K, residual=x)
    parts = [moe(t, **s, experts_per_token=K, residual=x if s["first_expert"] == 0 else None)
             for s in shares(w, ranks)]
    if forced:
        assert torch.equal(parts[1], torch.zeros_like(parts[1]))
    # Each share rounds its own partial sum to bf16 before the sum over ranks: a few bf16 ulps apart.
    assert_close(sum(p.float() for p in parts), whole.float(), torch.bfloat16, name=f"{ranks} shares")
