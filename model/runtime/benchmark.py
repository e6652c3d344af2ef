"""Generation throughput as a user gets it: prefill and decode tokens/s through the engine, against the roof.

`bench_generation(model, batch, prompt_len, new_tokens, bandwidth)` runs `batch` random prompts of
`prompt_len` tokens together through an `Engine` (chunked prefill, the CUDA-graph decode on a GPU, greedy
sampling, a host sync per step to stream) after a warm-up on the same engine (compilation, autotuning and
graph capture are not timed), and sets the decode steps against their floor: the bytes each must read
(`roofline.decode_bytes`: weights, routed experts, the KV cache at its context) over `bandwidth`.
`gpt-oss-triton bench` prints these; bench/bench_e2e.py records them with the other benchmarks.
"""
import math
import time
from dataclasses import asdict, dataclass

import torch

from .engine import Engine
from ..roofline import decode_bytes
from .sampling import SamplingParams


@dataclass(frozen=True)
class GenerationBench:
    batch: int
    prompt_len: int
    new_tokens: int
    prefill_s: float  # until every sequence had its first new token: the batch's time to first token
    decode_s: float  # the steps after that, each decoding one token per sequence
    decode_steps: int
    roof_decode_s: float  # the decode steps' floor: bytes they must read / bandwidth
    peak_memory_bytes: int | None  # torch.cuda.max_memory_allocated over the run (None off CUDA)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch * self.prompt_len / self.prefill_s

    @property
    def decode_tokens_per_s(self) -> float:
        return self.batch * self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    @property
    def decode_ms_per_step(self) -> float:
        return 1e3 * self.decode_s / self.decode_steps if self.decode_steps else float("nan")

    @property
    def roof_fraction(self) -> float:
        """Share of the bandwidth roof the decode steps reach (1.0: as fast as reading their bytes allows)."""
        return self.roof_decode_s / self.decode_s if self.decode_s > 0 else float("nan")

    def as_dict(self) -> dict:
        """Every field and figure, JSON-safe (NaN becomes None)."""
        d = asdict(self) | {k: getattr(self, k) for k in ("prefill_tokens_per_s", "decode_tokens_per_s",
                                                          "decode_ms_per_step", "roof_fraction")}
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_generation(model, batch: int, prompt_len: int, new_tokens: int, bandwidth: float, *,
                     prefill_chunk: int = 2048, seed: int = 0) -> GenerationBench:
    if batch < 1 or prompt_len < 1 or new_tokens < 2:
        raise ValueError(f"bench_generation: need batch >= 1, prompt_len >= 1 and new_tokens >= 2 (one from the "
                         f"prefill, the rest decoded), got {batch}, {prompt_len}, {new_tokens}")
    config, device = model.config, model.embedding.weight.device
    engine = Engine(model, max_batch=batch, max_len=prompt_len + new_tokens, prefill_chunk=prefill_chunk)
    g = torch.Generator().manual_seed(seed)

    def prompts():
        return torch.randint(0, config.vocab_size, (batch, prompt_len), generator=g).tolist()

    for p in prompts():  # warm-up: the same shapes, so every kernel is compiled and the graph captured
        engine.submit(p, SamplingParams(max_new_tokens=3, temperature=0.0))
    engine.run()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reqs = [engine.submit(p, SamplingParams(max_new_tokens=new_tokens, temperature=0.0)) for p in prompts()]
    _sync(device)
    t0 = time.perf_counter()
    while not all(r.tokens for r in reqs):
        engine.step()  # each step ends in the sync that streams its tokens
    t1 = time.perf_counter()
    engine.run(reqs)
    t2 = time.perf_counter()
    steps = new_tokens - 1
    # Decode step i reads the KV cache at prompt_len + i positions.
    roof = sum(decode_bytes(config, batch, prompt_len + i).total for i in range(steps)) / bandwidth
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return GenerationBench(batch, prompt_len, new_tokens, t1 - t0, t2 - t1, steps, roof, peak)
