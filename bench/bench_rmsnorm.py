"""RMSNorm and the fused residual add + RMSNorm at hidden 2880, from decode (1 token) to a 32K prefill chunk.

GB/s on the bytes read and written, as a fraction of the measured copy bandwidth; beside each,
torch.nn.functional.rms_norm (and the unfused add + rms_norm).
"""
import pytest
import torch

from gpt_oss_triton.kernels.rmsnorm import add_rmsnorm, rmsnorm

H = 2880
TOKENS = [1, 64, 8192, 32768]


@pytest.mark.benchmark(group="rmsnorm")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("N", TOKENS)
def test_rmsnorm(benchmark, run, N, impl):
    x = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)
    scale = torch.rand(H, device="cuda")
    fn = (lambda: rmsnorm(x, scale)) if impl == "triton" else \
        (lambda: torch.nn.functional.rms_norm(x.float(), (H,), scale, 1e-5).to(x.dtype))
    run(benchmark, fn, bytes_moved=2 * N * H * 2, op="rmsnorm", impl=impl, tokens=N)


@pytest.mark.benchmark(group="add_rmsnorm")
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("N", TOKENS)
def test_add_rmsnorm(benchmark, run, N, impl):
    x = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)
    delta = torch.randn_like(x)
    scale = torch.rand(H, device="cuda")

    def unfused():
        h = x + delta
        return h, torch.nn.functional.rms_norm(h.float(), (H,), scale, 1e-5).to(x.dtype)

    fn = (lambda: add_rmsnorm(x, delta, scale)) if impl == "triton" else unfused
    run(benchmark, fn, bytes_moved=4 * N * H * 2, op="add_rmsnorm", impl=impl, tokens=N)
