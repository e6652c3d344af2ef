"""RoPE in place on the q and k of a fused qkv buffer (Hq 64, Hkv 8, D 64), decode to a 32K prefill chunk.

GB/s on q and k read and written plus the table rows, as a fraction of the measured copy bandwidth; beside
it, the torch reference (rope_ref, out of place). Decode mode also writes k and v into the cache.
"""
import pytest
import torch

from gpt_oss_triton.kernels.reference import rope_cos_sin, rope_ref, yarn_inv_freq
from gpt_oss_triton.kernels.rope import rope

HQ, HKV, D = 64, 8, 64
TOKENS = [1, 64, 8192, 32768]


def _inputs(N):
    inv_freq, concentration = yarn_inv_freq(D, 150000.0, 32.0, 1.0, 32.0, 4096)
    cos, sin = rope_cos_sin(torch.arange(131072, device="cuda"), inv_freq, concentration)
    qkv = torch.randn(N, (HQ + 2 * HKV) * D, device="cuda", dtype=torch.bfloat16)
    q = qkv[:, :HQ * D].view(N, HQ, D)
    k = qkv[:, HQ * D:(HQ + HKV) * D].view(N, HKV, D)
    v = qkv[:, (HQ + HKV) * D:].view(N, HKV, D)
    positions = torch.randint(0, 131072, (N,), dtype=torch.int32, device="cuda")
    return q, k, v, cos, sin, positions


def _bytes(N):
    return N * ((HQ + HKV) * D * 2 * 2 + D * 4)


@pytest.mark.benchmark(group="rope")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("N", TOKENS)
def test_rope(benchmark, run, N, impl):
    q, k, v, cos, sin, positions = _inputs(N)
    if impl == "triton":
        fn = lambda: rope(q, k, cos, sin, positions)  # rotates again on every call: timing only
    else:
        c, s = cos[positions.long()], sin[positions.long()]
        fn = lambda: (rope_ref(q, c, s), rope_ref(k, c, s))
    run(benchmark, fn, bytes_moved=_bytes(N), op="rope", impl=impl, tokens=N)


@pytest.mark.benchmark(group="rope")
@pytest.mark.parametrize("B", [1, 64])
def test_rope_decode_cache_write(benchmark, run, B):
    q, k, v, cos, sin, positions = _inputs(B)
    k_cache = torch.zeros(B, 131072, HKV, D, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    run(benchmark, lambda: rope(q, k, cos, sin, positions, v, k_cache, v_cache),
        bytes_moved=_bytes(B) + B * HKV * D * 2 * 2, op="rope", impl="triton_decode_cache_write", tokens=B)
