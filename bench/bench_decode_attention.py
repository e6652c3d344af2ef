"""Decode attention at the real shapes (Hq 64, Hkv 8, D 64): batch 1, 8, 64 over contexts of 1K..128K.

GB/s on the KV bytes read (B x visible positions x Hkv x D x 2 tensors x 2 bytes) as a fraction of the
measured copy bandwidth; sliding layers (window 128) read a 128-slot ring. Beside each, torch's
scaled_dot_product_attention on a [B, Hkv, ctx, D] copy of the cache (no sinks: a speed reference only).
"""
import pytest
import torch

from gpt_oss_triton.kernels.decode_attention import decode_attention

HQ, HKV, D, WINDOW = 64, 8, 64, 128
CONTEXTS = [1024, 8192, 32768, 131072]


def _inputs(B, ctx, window):
    slots = window or ctx
    q = torch.randn(B, HQ, D, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.randn(B, slots, HKV, D, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    positions = torch.full((B,), ctx - 1, dtype=torch.int32, device="cuda")
    return q, k_cache, v_cache, torch.randn(HQ, device="cuda"), positions


def _kv_bytes(B, ctx, window):
    return B * min(ctx, window or ctx) * HKV * D * 2 * 2


@pytest.mark.benchmark(group="decode_attention")
@pytest.mark.parametrize("window", [0, WINDOW], ids=["full", "sliding128"])
@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("B", [1, 8, 64])
def test_decode_attention(benchmark, run, B, ctx, window):
    if window and ctx != CONTEXTS[0] and ctx != CONTEXTS[-1]:
        pytest.skip("a sliding layer reads the same 128 slots at every context")
    q, k_cache, v_cache, sinks, positions = _inputs(B, ctx, window)
    run(benchmark, lambda: decode_attention(q, k_cache, v_cache, sinks, positions, 0.125, window),
        bytes_moved=_kv_bytes(B, ctx, window), op="decode_attention", impl="triton", batch=B, context=ctx,
        sliding_window=window)


@pytest.mark.benchmark(group="decode_attention")
@pytest.mark.parametrize("ctx", CONTEXTS)
@pytest.mark.parametrize("B", [1, 8, 64])
def test_decode_attention_torch_sdpa(benchmark, run, B, ctx):
    q, k_cache, v_cache, _, _ = _inputs(B, ctx, 0)
    q = q.unsqueeze(2)  # [B, Hq, 1, D]
    k, v = k_cache.transpose(1, 2).contiguous(), v_cache.transpose(1, 2).contiguous()
    del k_cache, v_cache
    run(benchmark, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        bytes_moved=_kv_bytes(B, ctx, 0), op="decode_attention", impl="torch_sdpa", batch=B, context=ctx,
        sliding_window=0)
