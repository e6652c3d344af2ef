"""Fused routing against routing_ref (exact) and the bookkeeping against its definition (exact)."""
import pytest
import torch

from gpt_oss_triton.kernels.reference import routing_ref
from gpt_oss_triton.kernels import routing as routing_module
from gpt_oss_triton.kernels.routing import BLOCK_T, RoutingData, routing
from helpers import assert_close


def check_routing(r: RoutingData, t, gate_weight, gate_bias, experts_per_token):
    """Logits close to the fp32 router, indices and weights as routing_ref on those logits, grouping exact."""
    T, E, K = t.shape[0], gate_weight.shape[0], experts_per_token
    assert_close(r.logits, t.float() @ gate_weight.float().T + gate_bias.float(), name="logits")
    weights, indices = routing_ref(r.logits, K)
    assert torch.equal(r.indices, indices), f"indices differ at tokens {(r.indices != indices).any(1).nonzero().flatten()[:8].tolist()}"
    torch.testing.assert_close(r.weights, weights, atol=1e-6, rtol=1e-6)
    flat = indices.flatten().long()
    counts = torch.bincount(flat, minlength=E)
    assert r.counts.tolist() == counts.tolist()
    assert r.offsets.tolist() == (torch.cumsum(counts, 0) - counts).tolist()
    # Grouped by expert, ascending pair index within an expert: a stable sort of the pairs by expert.
    assert r.gather_indx.tolist() == torch.sort(flat, stable=True).indices.tolist()
    assert r.scatter_indx[r.gather_indx.long()].tolist() == list(range(T * K))


def random_router(T, E, H, gen, device):
    t = torch.randn(T, H, generator=gen).to(torch.bfloat16).to(device)
    w = (torch.randn(E, H, generator=gen) * H ** -0.5).to(torch.bfloat16).to(device)
    b = (torch.randn(E, generator=gen) * 0.5).to(torch.bfloat16).to(device)
    return t, w, b


@pytest.mark.parametrize("T, E, H, K", [
    (1, 8, 64, 4),                    # one token
    (1, 32, 2880, 4),                 # the real hidden size, 20B's experts
    (5, 128, 96, 4),                  # 120B's experts, a hidden size not a multiple of the H step
    (BLOCK_T + 1, 128, 64, 4),        # two routing blocks, the second nearly empty
    (40, 24, 64, 1),                  # one expert per token, E not a power of two
])
def test_routing_matches_reference(T, E, H, K, device):
    gen = torch.Generator().manual_seed(T * 1000 + E)
    t, w, b = random_router(T, E, H, gen, device)
    check_routing(routing(t, w, b, K), t, w, b, K)


def test_routing_prefix_sum_over_several_steps(monkeypatch, device):
    # Fewer block histograms per prefix-sum step, so that a few blocks already take several steps.
    monkeypatch.setattr(routing_module, "BLOCK_B", 2)
    gen = torch.Generator().manual_seed(5)
    t, w, b = random_router(5 * BLOCK_T + 3, 8, 32, gen, device)
    check_routing(routing(t, w, b, 4), t, w, b, 4)


@pytest.mark.parametrize("T", [3, 2 * BLOCK_T + 5])
def test_routing_ties_go_to_the_lower_expert(T, device):
    # Zero router weights: every token's logits are the bias, with three-way ties at the top and a tie
    # across the k-th / (k+1)-th boundary (experts 3 and 5 at 2.0: 3 is in, 5 is out).
    E, H, K = 16, 64, 4
    bias = torch.zeros(E)
    bias[[1, 2, 4]] = 3.0
    bias[[3, 5]] = 2.0
    t = torch.randn(T, H).to(torch.bfloat16).to(device)
    w = torch.zeros(E, H, dtype=torch.bfloat16, device=device)
    r = routing(t, w, bias.to(torch.bfloat16).to(device), K)
    assert r.indices.tolist() == [[1, 2, 4, 3]] * T
    expected = torch.softmax(torch.tensor([3.0, 3.0, 3.0, 2.0]), 0)
    torch.testing.assert_close(r.weights.cpu(), expected.expand(T, K), atol=1e-6, rtol=1e-6)
    check_routing(r, t, w, bias.to(torch.bfloat16).to(device), K)


def test_routing_ties_between_identical_experts(device):
    # Experts 2 and 6 have the same router row and bias: whenever they are chosen, 2 comes first,
    # and when only one of them makes the cut it is 2.
    gen = torch.Generator().manual_seed(7)
    t, w, b = random_router(50, 8, 64, gen, device)
    w[6], b[6] = w[2], b[2]
    r = routing(t, w, b, 3)
    check_routing(r, t, w, b, 3)
    idx = r.indices.cpu()
    both = (idx == 2).any(1) & (idx == 6).any(1)
    pos2, pos6 = (idx == 2).int().argmax(1), (idx == 6).int().argmax(1)
    assert both.any() and (pos2[both] + 1 == pos6[both]).all()
    assert not ((idx == 6).any(1) & ~(idx == 2).any(1)).any()


@pytest.mark.parametrize("T, K", [(BLOCK_T * 3, 4), (7, 1)])
def test_routing_forced_experts(T, K, device):
    # Every token picks the same K experts; the rest get nothing.
    E, H = 16, 32
    gen = torch.Generator().manual_seed(3)
    t, w, b = random_router(T, E, H, gen, device)
    forced = [9, 0, 13, 4][:K]
    b[forced] = torch.tensor([40.0, 30.0, 20.0, 10.0][:K], dtype=b.dtype, device=device)
    r = routing(t, w, b, K)
    check_routing(r, t, w, b, K)
    assert r.indices.tolist() == [forced] * T
    assert sorted(r.counts.nonzero().flatten().tolist()) == sorted(forced)


def test_routing_input_errors(device):
    t = torch.zeros(4, 64, dtype=torch.bfloat16, device=device)
    w = torch.zeros(8, 64, dtype=torch.bfloat16, device=device)
    b = torch.zeros(8, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match=r"t must be \[tokens, hidden\] bf16, got \[4, 64\] torch.float32"):
        routing(t.float(), w, b, 4)
    with pytest.raises(ValueError, match=r"gate_weight must be \[experts, 64\] torch.bfloat16, got \[8, 32\]"):
        routing(t, w[:, :32], b, 4)
    with pytest.raises(ValueError, match=r"experts_per_token \(9\) <= experts \(8\)"):
        routing(t, w, b, 9)
    with pytest.raises(ValueError, match=r"t must be contiguous"):
        routing(torch.zeros(64, 4, dtype=torch.bfloat16, device=device).T, w, b, 4)


def test_routing_no_tokens(device):
    w = torch.zeros(8, 64, dtype=torch.bfloat16, device=device)
    r = routing(torch.zeros(0, 64, dtype=torch.bfloat16, device=device), w, w[:, 0].contiguous(), 4)
    assert r.gather_indx.numel() == 0 and r.counts.tolist() == [0] * 8


@pytest.mark.gpu
def test_routing_many_tokens_gpu():
    gen = torch.Generator().manual_seed(11)
    t, w, b = random_router(50_000, 128, 2880, gen, "cuda")
    check_routing(routing(t, w, b, 4), t, w, b, 4)


@pytest.mark.parametrize("T, E, H, K", [
    (1, 32, 2880, 4),      # 20B at batch 1: 2 programs split the router
    (1, 8, 96, 4),         # a hidden size with a half K chunk (t's permuted padding)
    (5, 32, 2880, 4),      # a few tokens: their sums of squares in 8 of the block's 16 rows, 3 tiles a row
    (17, 128, 64, 4),      # 120B's experts over 2 token blocks: 16 programs
    (64, 24, 128, 1),      # the largest decode batch, E not a power of two
])
def test_routing_decode_is_norm_then_routing(T, E, H, K, device):
    """routing_decode(x) == routing(rmsnorm(x)), t in the GEMMs' K order; in one launch."""
    from gpt_oss_triton.kernels import arrival, launch_plan
    from gpt_oss_triton.kernels.mxfp4 import permute_k
    from gpt_oss_triton.kernels.reference import rmsnorm_ref
    from gpt_oss_triton.kernels.routing import routing_decode
    gen = torch.Generator().manual_seed(T + E)
    x, w, b = random_router(T, E, H, gen, device)
    x = x * 4
    scale = (1 + 0.1 * torch.randn(H, generator=gen)).to(device)
    t, r = routing_decode(x, scale, 1e-5, w, b, K)
    t_ref = rmsnorm_ref(x, scale)
    assert_close(t, permute_k(t_ref), name="t")
    check_routing(r, t_ref, w, b, K)
    assert (arrival.counters(x.device, 1) == 0).all()
    args = [a.to("meta") for a in (x, scale)] + [1e-5] + [a.to("meta") for a in (w, b)] + [K]
    with launch_plan.record() as launches:
        routing_decode(*args)
    assert [l.name for l in launches] == ["_routing_decode_kernel"]
