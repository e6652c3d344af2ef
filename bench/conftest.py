"""Shared benchmark harness: the device's measured roofs, and a way to record a result against them.

Every benchmark times with `triton.testing.do_bench` (warm-up, L2 flushed between runs) through
`run(benchmark, fn, bytes_moved=..., flops=...)`, which stores time, GB/s, TFLOP/s and the fraction
of the measured copy bandwidth and of the dense bf16 peak in pytest-benchmark's `extra_info`.
`record(benchmark, ms, ...)` fills the same keys for a time measured another way (end-to-end runs).
At the end of a run on a GPU, every result goes to one JSON under bench/results/ (`--bench-results DIR`;
an empty DIR turns it off); `python bench/report.py` turns it into tables and plots.
On a machine without a GPU every benchmark skips with the reason, and nothing is written.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # the helpers beside this file, whatever pytest's import mode
    sys.path.insert(0, str(BENCH_DIR))

import result_file  # noqa: E402 (needs the path above)
from gpt_oss_triton.model.environment import environment  # noqa: E402
from gpt_oss_triton.model.roofline import bf16_peak_flops, measure_copy_bandwidth  # noqa: E402

_ROOFS = pytest.StashKey[dict]()
_WRITTEN = pytest.StashKey[Path]()


def pytest_configure(config):
    config.addinivalue_line("python_files", "bench_*.py")  # benchmark files are named bench_<op>.py
    config.addinivalue_line("markers", "large: a full-size model (tens of GB, minutes); -m 'not large' leaves it out")


def pytest_addoption(parser):
    parser.addoption("--bench-results", default=str(BENCH_DIR / "results"), metavar="DIR",
                     help="directory for this run's results JSON (empty: write none)")


@pytest.fixture(scope="session")
def roofs(request) -> dict:
    if not torch.cuda.is_available():
        pytest.skip("benchmarks need a CUDA GPU; this machine has none")
    name = torch.cuda.get_device_name()
    measured = {"device": name, "copy_bytes_per_s": measure_copy_bandwidth(), "bf16_flops": bf16_peak_flops(name)}
    request.config.stash[_ROOFS] = measured
    return measured


@pytest.fixture
def record(roofs):
    """record(benchmark, ms, bytes_moved=..., flops=..., **info): store a time measured elsewhere in extra_info."""

    def _record(benchmark, ms: float, *, bytes_moved: float = 0.0, flops: float = 0.0, **info):
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

    return _record


@pytest.fixture
def run(record):
    """run(benchmark, fn, bytes_moved=..., flops=..., **info) -> milliseconds (median of do_bench)."""
    import triton.testing

    def _run(benchmark, fn, *, bytes_moved: float = 0.0, flops: float = 0.0, **info):
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        benchmark.pedantic(fn, rounds=int(os.environ.get("BENCH_ROUNDS", "5")), iterations=1, warmup_rounds=1)
        return record(benchmark, ms, bytes_moved=bytes_moved, flops=flops, **info)

    return _run


def pytest_sessionfinish(session, exitstatus):
    """Write this run's results JSON, when some benchmark ran on a GPU."""
    roofs = session.config.stash.get(_ROOFS, None)
    directory = session.config.getoption("--bench-results", default=str(BENCH_DIR / "results"))
    bench_session = getattr(session.config, "_benchmarksession", None)  # pytest-benchmark's, private but stable
    if roofs is None or not directory or bench_session is None:
        return
    rec = result_file.build_record(bench_session.benchmarks, roofs, environment(roofs["device"]))
    if rec["benchmarks"]:
        session.config.stash[_WRITTEN] = result_file.write_record(rec, directory)


def pytest_terminal_summary(terminalreporter, config):
    if _WRITTEN in config.stash:
        terminalreporter.write_sep("-", f"results: {config.stash[_WRITTEN]} (python bench/report.py)")
