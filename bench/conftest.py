"""Shared benchmark harness: the device's measured roofs, and a way to record a result against them.

Every benchmark times with `triton.testing.do_bench` (warm-up, L2 flushed between runs) through
`run(benchmark, fn, bytes_moved=..., flops=...)`, which stores time, GB/s, TFLOP/s and the fraction
of the measured copy bandwidth and of the dense bf16 peak in pytest-benchmark's `extra_info`.
On a machine without a GPU every benchmark skips with the reason.
"""
import os

import pytest
import torch

# Dense bf16 tensor-core peak (no sparsity) by device name, in FLOP/s; looked up, not measured.
BF16_PEAK_FLOPS = {
    "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12,
    "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "RTX 4090": 165e12, "B200": 2250e12,
}


def bf16_peak_flops(name: str) -> float:
    for key in sorted(BF16_PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return BF16_PEAK_FLOPS[key]
    return float("nan")


def measure_copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read + written."""
    import triton.testing
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=200)
    return 2 * nbytes / (ms * 1e-3)


@pytest.fixture(scope="session")
def roofs() -> dict:
    if not torch.cuda.is_available():
        pytest.skip("benchmarks need a CUDA GPU; this machine has none")
    name = torch.cuda.get_device_name()
    return {"device": name, "copy_bytes_per_s": measure_copy_bandwidth(), "bf16_flops": bf16_peak_flops(name)}


@pytest.fixture
def run(roofs):
    """run(benchmark, fn, bytes_moved=..., flops=..., **info) -> milliseconds (median of do_bench)."""
    import triton.testing

    def _run(benchmark, fn, *, bytes_moved: float = 0.0, flops: float = 0.0, **info):
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        benchmark.pedantic(fn, rounds=int(os.environ.get("BENCH_ROUNDS", "5")), iterations=1, warmup_rounds=1)
        s = ms * 1e-3
        benchmark.extra_info.update(info)
        benchmark.extra_info.update({
            "device": roofs["device"], "ms": ms,
            "GB/s": bytes_moved / s / 1e9, "TFLOP/s": flops / s / 1e12,
            "frac_copy_bw": bytes_moved / s / roofs["copy_bytes_per_s"],
            "frac_bf16_peak": flops / s / roofs["bf16_flops"],
            "torch": torch.__version__, "triton": __import__("triton").__version__,
        })
        return ms

    return _run
