"""Rank 0 runs the engine; the other ranks follow its steps.

Rank 0 owns the engine, the server and the tokenizer. It hands the engine `Leader(model)` in place of its
model: every call that runs a step first tells the followers, which run `follow(model)`, to run the same
step on their shares, so the collectives inside the step meet. What travels:
- a header per step on a gloo group (`Control`): host to host, so a follower reads it without touching its
  GPU, and waits for it without a timeout however long rank 0 is idle (a server between requests). It names
  the op, the cache, and the slots rank 0's engine reset since the last step (the row layout);
- a prefill step's tokens, broadcast on the model's group beside the header's per-row counts;
- a decode step's rows: their slots in the header (every rank writes its bucket's buffers from them), their
  tokens broadcast from rank 0's token buffer at the start of the step itself (`ParallelDecodeGraph`), so on a
  GPU the broadcast is inside each rank's CUDA graph and rank 0's sampled tokens reach the followers without
  leaving the device. The followers' graphs end at the logits (rank 0 alone draws).
A step that fails on rank 0 or a follower leaves the ranks out of step: the rank prints what failed and exits
(`fatal`), and the others stop when their next collective fails or the watchdog sees it gone.
"""
import contextlib
import itertools
import os
import sys
import threading
import weakref
from datetime import timedelta

import torch
import torch.distributed as dist

from ..budget import check_layout, free_bytes
from ..runtime.decode_graph import DecodeGraph

NEW_CACHE, PACKED, DECODE, STOP = 1, 2, 3, 4
_HEADER = 7  # op, cache id, two arguments, and how many resets, frees and extra ints follow
_IDLE_TIMEOUT = timedelta(days=3650)  # followers wait for rank 0's next step as long as it stays alive


def fatal(parallel, message: str) -> None:
    """Print `message` for this rank and end the process at once: its peers are out of step with it, and the
    collectives it is part of cannot be unwound."""
    sys.stderr.write(f"gpt-oss-triton: rank {parallel.rank} of {parallel.world_size}: {message}\n")
    sys.stderr.flush()
    os._exit(1)


class Control:
    """Rank 0's step headers to the other ranks, on their own gloo group (every rank creates it together)."""

    def __init__(self):
        self.group = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)

    def send(self, op: int, cache: int = 0, a: int = 0, b: int = 0, resets=(), frees=(), extra=()) -> None:
        header = torch.tensor([op, cache, a, b, len(resets), len(frees), len(extra)])
        dist.broadcast(header, 0, group=self.group)
        payload = list(resets) + list(frees) + list(extra)
        if payload:
            dist.broadcast(torch.tensor(payload, dtype=torch.int64), 0, group=self.group)

    def recv(self) -> tuple:
        """(op, cache, a, b, resets, frees, extra)."""
        header = torch.zeros(_HEADER, dtype=torch.int64)
        dist.broadcast(header, 0, group=self.group)
        op, cache, a, b, n_resets, n_frees, n_extra = header.tolist()
        payload = torch.zeros(n_resets + n_frees + n_extra, dtype=torch.int64)
        if payload.numel():
            dist.broadcast(payload, 0, group=self.group)
        p = payload.tolist()
        return op, cache, a, b, p[:n_resets], p[n_resets:n_resets + n_frees], p[n_resets + n_frees:]

    def stop(self, status: int = 0) -> None:
        """Tell the followers to return from `follow` with `status` (rank 0's exit status)."""
        self.send(STOP, a=status)

    def gather(self, value: int) -> list[int]:
        """Every rank's `value`, in rank order, on every rank."""
        out = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
        dist.all_gather(out, torch.tensor([value], dtype=torch.int64), group=self.group)
        return [int(t) for t in out]


def _check_memory(control: Control, model, batch: int, max_len: int) -> bool:
    """Every rank checks the cache of `batch` x `max_len` against its own free memory (weights are loaded);
    on rank 0 a shortfall anywhere raises the ValueError naming the ranks, elsewhere it returns False."""
    free = free_bytes(model.embedding.weight.device)
    frees = control.gather(-1 if free is None else free)
    try:
        check_layout(model.config, batch, max_len, [None if f < 0 else f for f in frees], weights_loaded=True,
                     act_bytes=model.dtype.itemsize)
    except ValueError:
        if model.parallel.rank == 0:
            raise
        return False
    return True


class ParallelDecodeGraph(DecodeGraph):
    """A DecodeGraph whose step starts by broadcasting rank 0's input tokens into every rank's token buffer (in
    the captured graph on a GPU). On rank 0 `leader` announces each call, with its rows and the graph it
    replays, to the followers; a follower keys its graphs by rank 0's, so that every rank records (warm-up
    steps with their collectives, then capture) at the same steps."""

    def __init__(self, model, cache, sampler=None, capture: bool | None = None, leader: "Leader | None" = None,
                 cache_id: int = 0):
        super().__init__(model, cache, sampler, capture)
        self._leader, self._cache_id = leader, cache_id
        self._variant = 0

    def __call__(self, slots: list[int], draw: bool = True, variant: int = 0):
        """On rank 0: the step, announced. On a follower: rank 0's step `variant`, without the draw."""
        if self._leader is None:
            self._variant = variant
            return super().__call__(slots, draw=False)
        plan = self.sampler.plan(slots) if draw else None
        with self._leader.step(DECODE, self._cache_id, a=int(self.capture), b=_variant(plan), extra=slots):
            return super().__call__(slots, draw)

    def _key(self, size: int, plan) -> tuple:
        return size, self._variant if self._leader is None else _variant(plan)

    def _step(self, bucket, plan):
        self.model.parallel.broadcast_(self.tokens)
        return super()._step(bucket, plan)


def _variant(plan) -> int:
    """A decode step's draw plan as an int for the header: 0 none (the logits), 1 + sampled + 2 filtered."""
    return 0 if plan is None else 1 + plan.sampled + 2 * plan.filtered


class LeaderCache:
    """Rank 0's cache as the engine sees it: the real one (`inner`), with `reset` recorded for the followers."""

    def __init__(self, leader: "Leader", cache_id: int, inner):
        self.leader, self.id, self.inner = leader, cache_id, inner
        weakref.finalize(self, leader.freed.append, cache_id)

    def reset(self, slot: int | None = None) -> None:
        self.inner.reset(slot)
        self.leader.resets.setdefault(self.id, []).append(-1 if slot is None else slot)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Leader:
    """`model` on rank 0 as the engine sees it (its attributes pass through): `new_cache`, `forward_packed` and
    the decode graph (`decode_graph`) run their step on every rank."""

    def __init__(self, model, control: Control):
        self.model, self.control = model, control
        self.resets: dict[int, list] = {}
        self.freed: list[int] = []
        self._ids = itertools.count()
        self._lock = threading.RLock()

    def __getattr__(self, name):
        return getattr(self.model, name)

    @contextlib.contextmanager
    def step(self, op: int, cache_id: int, a: int = 0, b: int = 0, extra=()):
        """Announce a step, then run it (the body) on rank 0; one at a time, whatever thread calls."""
        with self._lock:
            resets, frees = self.resets.pop(cache_id, []), self.freed[:]
            del self.freed[:len(frees)]
            try:
                self.control.send(op, cache_id, a, b, resets, frees, extra)
                yield
            except BaseException as e:
                if op == NEW_CACHE and isinstance(e, ValueError):  # every rank's memory check refused it
                    raise
                fatal(self.model.parallel, f"a step failed on this rank ({_describe(e)}), so the ranks are out of "
                                           "step (if another rank stopped first, its message says why); stopping")

    def new_cache(self, batch_size: int, max_len: int | None = None) -> LeaderCache:
        max_len = max_len or self.model.config.max_context
        cache_id = next(self._ids)
        with self.step(NEW_CACHE, cache_id, batch_size, max_len):
            _check_memory(self.control, self.model, batch_size, max_len)
            inner = self.model.new_cache(batch_size, max_len)
        return LeaderCache(self, cache_id, inner)

    def forward_packed(self, tokens: torch.Tensor, n_new: list[int], cache: LeaderCache) -> torch.Tensor:
        with self.step(PACKED, cache.id, tokens.numel(), extra=n_new):
            self.model.parallel.broadcast_(tokens)
            return self.model.forward_packed(tokens, n_new, cache.inner)

    def decode_graph(self, cache: LeaderCache, sampler, capture: bool | None = None) -> ParallelDecodeGraph:
        return ParallelDecodeGraph(self.model, cache.inner, sampler, capture, leader=self, cache_id=cache.id)


def follow(model, control: Control) -> int:
    """Run rank 0's steps on this rank's share of the model until rank 0 stops; returns rank 0's status."""
    caches, decoders = {}, {}
    device = model.embedding.weight.device
    while True:
        try:
            op, cache_id, a, b, resets, frees, extra = control.recv()
        except Exception as e:
            fatal(model.parallel, f"lost rank 0 while waiting for its next step ({_describe(e)}): it has stopped "
                                  "(see its message); stopping")
        try:
            for f in frees:
                caches.pop(f, None)
                decoders.pop(f, None)
            if op == STOP:
                return a
            if op == NEW_CACHE:
                if _check_memory(control, model, a, b):
                    caches[cache_id] = model.new_cache(a, b)
                continue
            cache = caches[cache_id]
            for slot in resets:
                cache.reset(None if slot < 0 else slot)
            if op == PACKED:
                tokens = model.parallel.broadcast_(torch.empty(a, dtype=torch.long, device=device))
                with torch.inference_mode():
                    model.forward_packed(tokens, extra, cache)
            elif op == DECODE:
                if cache_id not in decoders:
                    decoders[cache_id] = ParallelDecodeGraph(model, cache, capture=bool(a))
                with torch.inference_mode():
                    decoders[cache_id](extra, variant=b)
            else:
                raise ValueError(f"unknown step {op} from rank 0")
        except Exception as e:
            fatal(model.parallel, f"a step from rank 0 failed on this rank ({_describe(e)}), so the ranks are out of "
                                  "step (if another rank stopped first, its message says why); stopping")


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
