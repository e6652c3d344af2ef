"""Prefill attention at the real shapes (Hq 64, Hkv 8, D 64), one sequence of 1K..128K tokens.

Full layers: causal FLOP/s (4 * T^2/2 * Hq * D) as a fraction of the dense bf16 peak. Sliding layers (window
128): time per token, which a banded kernel keeps flat in T. Beside each, torch's scaled_dot_product_attention
(no sinks: a speed reference only); its sliding variant needs a dense [T, T] mask, so it stops at 32K.
"""
import pytest
import torch

from gpt_oss_triton.kernels.attention import attention

HQ, HKV, D, WINDOW = 64, 8, 64, 128
LENGTHS = [1024, 8192, 32768, 131072]


def _inputs(T):
    q = torch.randn(T, HQ, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(T, HKV, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(T, HKV, D, device="cuda", dtype=torch.bfloat16)
    sinks = torch.randn(HQ, device="cuda")
    return q, k, v, sinks, torch.tensor([0, T], dtype=torch.int32, device="cuda")


def _flops(T, window):
    pairs = T * (T + 1) / 2 if not window else sum(min(p + 1, window) for p in range(T))
    return 4 * pairs * HQ * D


@pytest.mark.benchmark(group="attention")
@pytest.mark.parametrize("window", [0, WINDOW], ids=["full", "sliding128"])
@pytest.mark.parametrize("T", LENGTHS)
def test_attention(benchmark, run, T, window):
    q, k, v, sinks, cu = _inputs(T)
    ms = run(benchmark, lambda: attention(q, k, v, sinks, cu, T, 0.125, window), flops=_flops(T, window),
             op="attention", impl="triton", tokens=T, sliding_window=window)
    benchmark.extra_info["us_per_token"] = ms * 1e3 / T


@pytest.mark.benchmark(group="attention")
@pytest.mark.parametrize("window", [0, WINDOW], ids=["full", "sliding128"])
@pytest.mark.parametrize("T", LENGTHS)
def test_attention_torch_sdpa(benchmark, run, T, window):
    if window and T > 32768:
        pytest.skip("sdpa's sliding window needs a dense [T, T] mask")
    q, k, v, _, _ = _inputs(T)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # [1, heads, T, D]
    if window:
        pos = torch.arange(T, device="cuda")
        mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < window)
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    else:
        fn = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ms = run(benchmark, fn, flops=_flops(T, window), op="attention", impl="torch_sdpa", tokens=T,
             sliding_window=window)
    benchmark.extra_info["us_per_token"] = ms * 1e3 / T
