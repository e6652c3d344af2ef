"""RoPE (YaRN table) in place on q/k views of a fused qkv buffer, and its fused decode-mode cache write."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.kernels.reference import rope_cos_sin, rope_ref, yarn_inv_freq
from gpt_oss_triton.kernels.rope import rope

D, HQ, HKV = 64, 8, 2


def _table(n_positions, device):
    inv_freq, concentration = yarn_inv_freq(D, 150000.0, 32.0, 1.0, 32.0, 4096)
    cos, sin = rope_cos_sin(torch.arange(n_positions), inv_freq, concentration)
    return cos.to(device), sin.to(device)


def _qkv(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(n, (HQ + 2 * HKV) * D, generator=g).to(torch.bfloat16).to(device)
    q = qkv[:, :HQ * D].view(n, HQ, D)
    k = qkv[:, HQ * D:(HQ + HKV) * D].view(n, HKV, D)
    v = qkv[:, (HQ + HKV) * D:].view(n, HKV, D)
    return qkv, q, k, v


def test_rope_in_place_on_qkv_views(device):
    n = 37
    cos, sin = _table(131072, device)
    positions = torch.tensor([0, 1, 4095, 4096, 131071] + list(range(100, 132)), dtype=torch.int32, device=device)
    qkv, q, k, v = _qkv(n, device)
    before = qkv.clone()
    c, s = cos[positions.long()].cpu(), sin[positions.long()].cpu()
    expected_q = rope_ref(q.cpu()[None], c, s)[0]
    expected_k = rope_ref(k.cpu()[None], c, s)[0]
    rope(q, k, cos, sin, positions)
    assert_close(q, expected_q, name="q")
    assert_close(k, expected_k, name="k")
    assert torch.equal(v, before[:, (HQ + HKV) * D:].view(n, HKV, D)), "v must be left alone"


@pytest.mark.parametrize("cache_len", [8, 64])
def test_rope_decode_writes_cache(cache_len, device):
    """Token i is sequence i's new token: its rotated k and its v land at slot positions[i] % L of row i only."""
    n = 3
    cos, sin = _table(64, device)
    positions = torch.tensor([0, 9, 63], dtype=torch.int32, device=device)
    qkv, q, k, v = _qkv(n, device, seed=1)
    kc = torch.full((4, cache_len, HKV, D), -7.0, dtype=torch.bfloat16, device=device)
    vc = kc.clone()
    rope(q, k, cos, sin, positions, v, kc, vc)
    expected_k, expected_v = kc.clone().fill_(-7.0), vc.clone().fill_(-7.0)
    for i, p in enumerate(positions.tolist()):
        expected_k[i, p % cache_len], expected_v[i, p % cache_len] = k[i], v[i]
    assert torch.equal(kc, expected_k), "k cache: rotated k at slot p % L, nothing else touched"
    assert torch.equal(vc, expected_v), "v cache: v at slot p % L, nothing else touched"


def test_rope_rejects_bad_inputs(device):
    cos, sin = _table(16, device)
    qkv, q, k, v = _qkv(4, device)
    pos = torch.zeros(4, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"cos must be a contiguous fp32 \[P, 32\] table"):
        rope(q, k, cos.to(torch.bfloat16), sin, pos)
    with pytest.raises(ValueError, match=r"positions must be int32 \[N\] = \[4\]"):
        rope(q, k, cos, sin, pos.long())
    with pytest.raises(ValueError, match="pass v, k_cache and v_cache together"):
        rope(q, k, cos, sin, pos, v)
