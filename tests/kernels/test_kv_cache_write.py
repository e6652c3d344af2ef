"""Appending packed prefill chunks to full caches and ring buffers."""
import pytest
import torch

from gpt_oss_triton.kernels.kv_cache_write import kv_cache_write

HKV, D = 2, 64


@pytest.mark.parametrize("cache_len", [8, 64])
def test_kv_cache_write(cache_len, device):
    """Chunks shorter and longer than a ring of 8: only each sequence's last L tokens are stored, at p % L."""
    lens, starts = [5, 20, 0, 9], [0, 3, 4, 30]
    n = sum(lens)
    kv = torch.randn(n, 2, HKV, D).to(torch.bfloat16).to(device)  # k and v interleaved: strided views
    k, v = kv[:, 0], kv[:, 1]
    kc = torch.full((4, cache_len, HKV, D), -7.0, dtype=torch.bfloat16, device=device)
    vc = kc.clone()
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    kv_cache_write(k, v, kc, vc, cu, torch.tensor(starts, dtype=torch.int32, device=device), max(lens))
    expected_k, expected_v = kc.clone().fill_(-7.0), vc.clone().fill_(-7.0)
    for b, (t, s) in enumerate(zip(lens, starts)):
        for j in range(max(0, t - cache_len), t):
            row = int(cu[b]) + j
            expected_k[b, (s + j) % cache_len], expected_v[b, (s + j) % cache_len] = k[row], v[row]
    assert torch.equal(kc, expected_k)
    assert torch.equal(vc, expected_v)


def test_kv_cache_write_rejects_bad_inputs(device):
    k = torch.zeros(4, HKV, D, dtype=torch.bfloat16, device=device)
    kc = torch.zeros(1, 8, HKV, D, dtype=torch.bfloat16, device=device)
    cu = torch.tensor([0, 4], dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match=r"cache_seqlens must be int32 \[B\] = \[1\]"):
        kv_cache_write(k, k, kc, kc, cu, torch.zeros(2, dtype=torch.int32, device=device), 4)
    with pytest.raises(ValueError, match=r"k_cache must be \[>=1, L>0, 2, 64\]"):
        kv_cache_write(k, k, kc[:, :, :1], kc, cu, torch.zeros(1, dtype=torch.int32, device=device), 4)
