"""End to end: prefill and decode tokens/s, time to first token and peak memory, per preset, batch and context;
and whole generations through the engine (`test_generation`, what `gpt-oss-triton bench` prints).

Ours is whatever `GptOss.from_pretrained(preset, backend=None)` picks on the GPU; beside it the torch reference
(when ours is not already it) and transformers on the same weights. Each step is timed wall-clock with a
device sync, so launch overhead counts, as it does for a user. A decode step is set against its roof: the bytes
it must read (roofline.decode_bytes) over the measured copy bandwidth. torch.compile is not a peer here: the
reference MoE asks the host which experts were chosen, so its graph breaks in every layer.

Full-size presets are marked `large` (`-m "not large"` leaves them out); a case that runs out of GPU memory
skips with the reason.
"""
import gc
import os
import statistics
import time

import pytest
import torch
from gpt_oss_triton.model import GptOssConfig
from gpt_oss_triton.model.runtime.benchmark import bench_generation
from gpt_oss_triton.model.roofline import decode_bytes, forward_flops

import engines
import peers

PRESETS = [pytest.param("tiny"), pytest.param("gpt-oss-20b", marks=pytest.mark.large),
           pytest.param("gpt-oss-120b", marks=pytest.mark.large)]
IMPLS = (peers.OURS, "torch", "transformers")
BATCHES = (1, 8, 64)
CONTEXTS = (1024, 8192, 32768)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def _free_memory():
    """Give cached GPU memory back between cases, so one case's leftovers don't push the next out of memory."""
    gc.collect()
    torch.cuda.empty_cache()


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param


@pytest.fixture(scope="module", params=IMPLS)
def impl(request, preset, roofs):  # roofs first: it skips on a machine without a GPU
    """The implementation under test, as an engine (see engines.py)."""
    from gpt_oss_triton.model import GptOss
    from gpt_oss_triton.model.gpt_oss import resolve_backend

    if request.param == "torch" and resolve_backend(None, "cuda")[0] == "torch":
        peers.skip_peer("torch", "backend=None picks the torch reference here, so the 'ours' rows are it")
    backend = "torch" if request.param == "torch" else None
    model = _or_skip_on_oom(f"loading {preset}", GptOss.from_pretrained, preset, backend=backend, device="cuda")
    if request.param == "transformers":
        try:
            hf = _or_skip_on_oom(f"building transformers' {preset}", peers.hf_model, model)
        finally:
            del model  # theirs holds its own copy, dequantized
            _free_memory()
        yield engines.HFEngine(hf, vocab_size=hf.config.vocab_size)
    else:
        yield engines.OursEngine(model)
    _free_memory()


def _or_skip_on_oom(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError as e:
        reason = str(e).splitlines()[0]
    _free_memory()  # outside the except, whose traceback held the failed call's tensors
    pytest.skip(f"out of GPU memory {what}: {reason}")


def _measure(benchmark, impl, kind: str, batch: int, context: int) -> tuple[float, float]:
    """(median ms, peak GB allocated) of `kind` ('prefill' or 'decode') over ROUNDS rounds after one warm-up.

    Timed here, wall-clock around the step and a device sync, so that the figure is the same with
    pytest-benchmark's timing turned off (--benchmark-disable)."""
    step, seconds = getattr(impl, kind)(batch, context), []

    def setup():
        args = step.setup()
        torch.cuda.synchronize()  # the setup's device work is not the step's
        return args, {}

    def target(*args):
        t0 = time.perf_counter()
        step.run(*args)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)

    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        benchmark.pedantic(target, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    return statistics.median(seconds[-ROUNDS:]) * 1e3, torch.cuda.max_memory_allocated() / 1e9


@pytest.mark.benchmark(group="e2e_decode")
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_decode(benchmark, record, impl, preset, batch, context):
    ms, peak_gb = _or_skip_on_oom(f"at batch {batch}, context {context}", _measure, benchmark, impl, "decode",
                                  batch, context)
    config = GptOssConfig.preset(preset)
    record(benchmark, ms, bytes_moved=decode_bytes(config, batch, context).total,
           flops=forward_flops(config, batch, 1, context),
           **{"tokens/s": batch / (ms * 1e-3), "peak_mem_GB": peak_gb})


@pytest.mark.benchmark(group="e2e_prefill")
@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch", BATCHES)
def test_prefill(benchmark, record, impl, preset, batch, context):
    ms, peak_gb = _or_skip_on_oom(f"at batch {batch}, context {context}", _measure, benchmark, impl, "prefill",
                                  batch, context)
    config = GptOssConfig.preset(preset)
    # The least a prefill must read: every weight its tokens route to, once.
    record(benchmark, ms, bytes_moved=decode_bytes(config, batch * context).weights,
           flops=forward_flops(config, batch, context),
           **{"tokens/s": batch * context / (ms * 1e-3), "ttft_ms": ms, "peak_mem_GB": peak_gb})


@pytest.mark.benchmark(group="e2e_generation")
@pytest.mark.parametrize("batch", BATCHES)
def test_generation(benchmark, record, roofs, impl, preset, batch):
    """batch prompts of 1024 tokens, 64 new tokens each, through the engine: chunked prefill, CUDA-graph decode,
    sampling and a host sync per step; the figure is the decode step, set against its bytes."""
    if not isinstance(impl, engines.OursEngine) or impl.model.backend != "triton":
        pytest.skip("the generation benchmark runs our triton backend (peers: test_decode, test_prefill)")
    result = {}

    def run():
        result["r"] = bench_generation(impl.model, batch, 1024, 64, roofs["copy_bytes_per_s"])

    _or_skip_on_oom(f"at batch {batch}", benchmark.pedantic, run, rounds=1, iterations=1)
    r = result["r"]
    config = GptOssConfig.preset(preset)
    record(benchmark, r.decode_ms_per_step, bytes_moved=decode_bytes(config, batch, 1024 + 32).total,
           flops=forward_flops(config, batch, 1, 1024 + 32),
           **{"tokens/s": r.decode_tokens_per_s, "prefill_tokens/s": r.prefill_tokens_per_s,
              "ttft_ms": 1e3 * r.prefill_s, "roof_fraction_engine": r.roof_fraction,
              "peak_mem_GB": (r.peak_memory_bytes or 0) / 1e9})
