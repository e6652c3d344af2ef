"""The generation engine: continuous batching over a fixed set of KV-cache slots.

Requests wait in a queue; each `step()` admits waiting ones into free slots, then runs one packed
forward in which new requests prefill (in chunks of at most `prefill_chunk` tokens) and running ones
decode a token, samples each request's next token with its own parameters and generator, and frees
the slots of finished ones. So requests that arrive together decode together, a new one joins at the
next step and a finished or cancelled one leaves. The model provides `new_cache(batch, max_len)`
(with `reset(slot)`) and `forward_packed(tokens, n_new, cache)`; the engine knows nothing else of it.
"""
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .sampling import SamplingParams, sample


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0  # wall time of the steps until the first new token
    decode_s: float = 0.0  # wall time of the steps after it
    stopped_by: str = ""  # "stop" (a stop token), "length" or "cancelled"

    @property
    def decode_tokens_per_s(self) -> float:
        # The first new token comes with the prefill; the rest from decode steps.
        return max(self.new_tokens - 1, 0) / self.decode_s if self.decode_s > 0 else float("nan")


@dataclass(eq=False)
class Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    stop_tokens: frozenset
    on_token: Callable | None = None  # on_token(request, token) per new token, then on_token(request, None)
    tokens: list[int] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    slot: int | None = None
    prefilled: int = 0
    cancelled: bool = False
    generator: torch.Generator | None = None

    @property
    def finished(self) -> bool:
        return bool(self.stats.stopped_by)

    def cancel(self) -> None:
        """Ask the engine to drop this request at its next step (e.g. its client went away)."""
        self.cancelled = True


def check_request(config, max_len: int, prompt: list[int], params: SamplingParams) -> None:
    """Every limit a request must meet, raised as ValueError before any work."""
    if not prompt:
        raise ValueError("prompt is empty: generation needs at least one token")
    bad = [t for t in prompt if not 0 <= t < config.vocab_size]
    if bad:
        raise ValueError(f"prompt holds token ids outside the vocabulary [0, {config.vocab_size}): {bad[:5]}")
    if len(prompt) + params.max_new_tokens > max_len:
        what = "the model's context" if max_len == config.max_context else "the engine's max length"
        raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {params.max_new_tokens} exceeds "
                         f"{what} of {max_len} tokens")


class Engine:
    def __init__(self, model, max_batch: int = 8, max_len: int = 4096, prefill_chunk: int = 2048):
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch ({max_batch}) and prefill_chunk ({prefill_chunk}) must be >= 1")
        if max_len > model.config.max_context:
            raise ValueError(f"max_len {max_len} exceeds the model's context of {model.config.max_context} tokens")
        self.model, self.max_len, self.prefill_chunk = model, max_len, prefill_chunk
        self.device = model.embedding.weight.device
        self.cache = model.new_cache(max_batch, max_len)
        self.slots: list[Request | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.steps = 0  # forward passes run: fewer than the tokens made when requests share steps
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        check_request(self.model.config, self.max_len, prompt, params)

    def submit(self, prompt: Iterable[int], params: SamplingParams = SamplingParams(),
               stop_tokens: Iterable[int] = (), on_token: Callable | None = None) -> Request:
        prompt = [int(t) for t in prompt]
        self.check(prompt, params)
        req = Request(next(self._ids), prompt, params, frozenset(int(t) for t in stop_tokens), on_token)
        req.stats.prompt_tokens = len(prompt)
        req.generator = torch.Generator(device=self.device)
        req.generator.manual_seed(params.seed if params.seed is not None else torch.seed())
        with self._lock:
            self.waiting.append(req)
        return req

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(self.slots)

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """One packed forward; returns the (request, token) pairs it produced."""
        self._admit()
        self._drop_cancelled()
        n_new, chunks = [0] * len(self.slots), []
        for b, req in enumerate(self.slots):
            if req is None:
                continue
            if req.prefilled < len(req.prompt):
                chunk = req.prompt[req.prefilled:req.prefilled + self.prefill_chunk]
                req.prefilled += len(chunk)
            else:
                chunk = req.tokens[-1:]
            n_new[b] = len(chunk)
            chunks.extend(chunk)
        if not chunks:
            return []
        t0 = time.perf_counter()
        logits = self.model.forward_packed(torch.tensor(chunks, device=self.device), n_new, self.cache)
        self.steps += 1
        ready = [(b, req) for b, req in enumerate(self.slots) if req is not None and req.prefilled == len(req.prompt)]
        nxt = [sample(logits[b:b + 1], req.params, req.generator) for b, req in ready]
        produced = [(req, int(t)) for (_, req), t in zip(ready, torch.cat(nxt).tolist() if nxt else [])]
        elapsed = time.perf_counter() - t0
        for b, req in enumerate(self.slots):
            if req is not None:
                if req.tokens:
                    req.stats.decode_s += elapsed
                else:
                    req.stats.prefill_s += elapsed
        for req, token in produced:
            req.tokens.append(token)
            req.stats.new_tokens += 1
            if token in req.stop_tokens:
                self._finish(req, "stop")
            elif len(req.tokens) >= req.params.max_new_tokens:
                self._finish(req, "length")
            if req.on_token:
                req.on_token(req, token)
                if req.finished:
                    req.on_token(req, None)
        return produced

    def run(self, requests: Iterable[Request] | None = None) -> None:
        """Step until the given requests (default: all) have finished."""
        pending = list(requests) if requests is not None else None
        while (self.busy if pending is None else not all(r.finished for r in pending)):
            self.step()

    def _admit(self) -> None:
        with self._lock:
            for b, req in enumerate(self.slots):
                if req is None and self.waiting:
                    req = self.waiting.popleft()
                    if req.cancelled:
                        self._finish(req, "cancelled")
                        continue
                    self.cache.reset(b)
                    req.slot, self.slots[b] = b, req

    def _drop_cancelled(self) -> None:
        for req in self.slots:
            if req is not None and req.cancelled:
                self._finish(req, "cancelled")
                if req.on_token:
                    req.on_token(req, None)

    def _finish(self, req: Request, reason: str) -> None:
        req.stats.stopped_by = reason
        if req.slot is not None:
            self.slots[req.slot] = None
            req.slot = None
