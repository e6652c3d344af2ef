"""The generation engine: continuous batching over a fixed set of KV-cache slots.

Requests wait in a queue; each `step()` admits waiting ones into free slots, then runs one packed
forward in which running requests decode a token and new ones prefill (at most `prefill_chunk` prompt
tokens per step over all of them, so neither a 128K prompt nor 64 long ones need more activations than
that), samples each request's next token with its own parameters and seed (all rows in a few launches),
and frees the slots of finished ones. So requests that arrive together decode together, a new one joins
at the next step and a finished or cancelled one leaves. The model provides `new_cache(batch, max_len)`
(with `reset(slot)`) and `forward_packed(tokens, n_new, cache)`; the engine knows nothing else of it, except
that a model with `decode_step` (the Triton backend) runs its decode-only steps through a `DecodeGraph`: only the
running rows, compacted into the graph of their bucket of rows, and on a GPU one CUDA-graph replay per step that
also samples the next tokens into the graph's own token buffer, so a steady decode step copies nothing from the
host and syncs once, to stream; with the lookahead the next step is already queued by then, so that sync does
not leave the GPU idle.
"""
import itertools
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import torch

from ..budget import check_fits, free_bytes
from .decode_graph import DecodeGraph
from .sampling import Sampled, SamplingParams, SlotSampler, TokenLogprobs, fill_masks


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


@dataclass
class _Launched:
    """A decode step queued on the device whose tokens the host has not read yet."""

    rows: list  # (slot, request) pairs, in the order of `tokens`
    tokens: Sampled  # on the host (pinned, filled by an async copy) or, off CUDA, the draws themselves
    done: "torch.cuda.Event | None"  # recorded after the copy


def _needs_more(rows) -> bool:
    """Whether a step after the one in flight can be of use and may run before its tokens are read: some
    request is not at its token limit by then (the tokens of the step in flight are not in `req.tokens` yet),
    and none has a constraint (its next mask needs those tokens)."""
    return (any(len(req.tokens) + 1 < req.params.max_new_tokens for _, req in rows)
            and all(req.constraint is None for _, req in rows))


class TokenConstraint(Protocol):
    """A request's rule on which token may come next (a forced tool-call name, a JSON grammar), one per request.

    Before sampling each of the request's tokens the engine calls `allowed_tokens()`: a bool tensor [n] (on any
    device) whose True entries are the ids that may come next (ids >= n may not; at least one must be True), or
    None to leave this token free. The other logits of the request's row become -inf, so greedy and random
    sampling, top-k and top-p all pick among the allowed ids. After sampling, `advance(token)` gets the token
    chosen (a free one too) before the next `allowed_tokens()`. Both run on the engine's thread. A request with
    a constraint is never decoded ahead (no lookahead step), as its next mask needs the token before. A class
    may also offer a static `fill_masks(items, out)` that writes the masks of all its constrained rows at once,
    as bits (sampling.fill_masks): grammars compute theirs in one parallel call.
    """

    def allowed_tokens(self) -> "torch.Tensor | None": ...

    def advance(self, token: int) -> None: ...


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
    seed: int = 0  # with the count of tokens drawn, picks the sampling noise (see sampling.py)
    constraint: TokenConstraint | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)  # one per token, when params.logprobs is set

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
    bad = [t for t, _ in params.logit_bias if t >= config.vocab_size]
    if bad:
        raise ValueError(f"logit_bias names token ids outside the vocabulary [0, {config.vocab_size}): {bad[:5]}")
    if len(prompt) + params.max_new_tokens > max_len:
        what = "the model's context" if max_len == config.max_context else "the engine's max length"
        raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {params.max_new_tokens} exceeds "
                         f"{what} of {max_len} tokens")


class Engine:
    """cuda_graph: capture decode steps in a CUDA graph (None: when the model has `decode_step` and a GPU).
    lookahead: while the host reads back a decode step's tokens and streams them, the next decode step of
    the same requests already runs (None: on a GPU, where it hides the host's time per step; a request that
    finished meanwhile just drops its extra token).
    unpenalized: ids that presence and frequency penalties never count (None: the special tokens of
    `model.tokenizer`, when it has one), so penalties leave the chat format's control tokens alone."""

    def __init__(self, model, max_batch: int = 8, max_len: int = 4096, prefill_chunk: int = 2048,
                 cuda_graph: bool | None = None, lookahead: bool | None = None,
                 unpenalized: Iterable[int] | None = None):
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError(f"max_batch ({max_batch}) and prefill_chunk ({prefill_chunk}) must be >= 1")
        if max_len > model.config.max_context:
            raise ValueError(f"max_len {max_len} exceeds the model's context of {model.config.max_context} tokens")
        self.model, self.max_len, self.prefill_chunk = model, max_len, prefill_chunk
        self.device = model.embedding.weight.device
        free = free_bytes(self.device)
        if free is not None:  # on a GPU: fail now, with the batch that fits, rather than out of memory later
            check_fits(model.config, max_batch, max_len, free, prefill_chunk=prefill_chunk,
                       act_bytes=getattr(model, "dtype", torch.bfloat16).itemsize,
                       tensor_parallel=getattr(model, "tensor_parallel", 1))
        self.cache = model.new_cache(max_batch, max_len)
        if cuda_graph and not hasattr(model, "decode_step"):
            raise ValueError(f"cuda_graph=True needs a model with decode_step (the triton backend), not {model.backend}")
        if unpenalized is None:
            unpenalized = getattr(getattr(model, "tokenizer", None), "special_ids", ())
        self.sampler = SlotSampler(max_batch, self.device, model.config.vocab_size, exempt=unpenalized)
        # A tensor-parallel leader (model/parallel/leader.py) makes a decode graph whose steps every rank runs.
        make_decoder = getattr(model, "decode_graph", None) or (
            lambda cache, sampler, capture: DecodeGraph(model, cache, sampler, capture))
        self.decoder = make_decoder(self.cache, self.sampler, cuda_graph) if hasattr(model, "decode_step") else None
        self.lookahead = (self.device.type == "cuda" if lookahead is None else lookahead) and self.decoder is not None
        self._launched: _Launched | None = None
        self._readback: list | None = None  # pinned host buffers and events the decode steps' tokens come back by
        self._masks = torch.empty(max_batch, (model.config.vocab_size + 31) // 32, dtype=torch.int32,
                                  pin_memory=self.device.type == "cuda")  # constrained rows' allowed ids, as bits
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.slots: list[Request | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.steps = 0  # forward passes run: fewer than the tokens made when requests share steps
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        check_request(self.model.config, self.max_len, prompt, params)

    def submit(self, prompt: Iterable[int], params: SamplingParams = SamplingParams(),
               stop_tokens: Iterable[int] = (), on_token: Callable | None = None,
               constraint: TokenConstraint | None = None) -> Request:
        prompt = [int(t) for t in prompt]
        self.check(prompt, params)
        req = Request(next(self._ids), prompt, params, frozenset(int(t) for t in stop_tokens), on_token,
                      constraint=constraint)
        req.stats.prompt_tokens = len(prompt)
        # A fresh seed from the OS: torch.seed() would reseed the user's global generator as a side effect.
        req.seed = params.seed if params.seed is not None else secrets.randbits(63)
        with self._lock:
            self.waiting.append(req)
        return req

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(self.slots)

    @torch.inference_mode()
    def step(self) -> list[tuple[Request, int]]:
        """One batched forward (two with the lookahead); returns the (request, token) pairs it produced."""
        self._admit()
        self._drop_cancelled()
        t0 = time.perf_counter()
        if self._launched is not None:
            launched, self._launched = self._launched, None
            if self.lookahead and self._decoding() == launched.rows and _needs_more(launched.rows):
                self._launched = self._launch_decode(launched.rows)  # runs while `launched` is read back
            produced = self._collect(launched)
        else:
            produced = self._step()
            if produced is None:
                return []
        self._account(time.perf_counter() - t0, produced)
        return produced

    def _step(self) -> list[tuple[Request, int]] | None:
        """A step with nothing launched ahead: packed prefill + decode, or a decode-only step (None: no work)."""
        # Running rows decode a token each; prompts then prefill in slot order, at most prefill_chunk tokens in
        # all, so a step's activations stay bounded however many long prompts arrive together.
        per_row = [req.tokens[-1:] if req is not None and req.prefilled == len(req.prompt) else []
                   for req in self.slots]
        budget, prefilling = self.prefill_chunk, False
        for b, req in enumerate(self.slots):
            if req is not None and req.prefilled < len(req.prompt) and budget > 0:
                per_row[b] = req.prompt[req.prefilled:req.prefilled + budget]
                req.prefilled += len(per_row[b])
                budget -= len(per_row[b])
                prefilling = True
        chunks = [t for c in per_row for t in c]
        if not chunks:
            return None
        ready = [(b, req) for b, req in enumerate(self.slots) if req is not None and req.prefilled == len(req.prompt)]
        if self.decoder is not None and not prefilling:
            launched = self._launch_decode(ready)
            if self.lookahead and _needs_more(ready):
                self._launched = self._launch_decode(ready)
            return self._collect(launched)
        logits = self.model.forward_packed(torch.tensor(chunks, device=self.device), [len(c) for c in per_row],
                                           self.cache)
        self.steps += 1
        if not ready:
            return []
        rows = self._index(tuple(b for b, _ in ready))
        nxt = self._sample(logits, rows, ready)
        if self.decoder is not None:  # the next decode step's input, written without leaving the device
            self.decoder.tokens.index_copy_(0, rows, nxt.tokens)
        return self._produced(ready, nxt)  # the one sync: to stream

    def _decoding(self) -> list[tuple[int, Request]] | None:
        """(slot, request) of every occupied slot when all of them decode (none prefills), else None."""
        rows = [(b, req) for b, req in enumerate(self.slots) if req is not None]
        return rows if rows and all(req.tokens for _, req in rows) else None

    def _launch_decode(self, rows: list[tuple[int, Request]]) -> "_Launched":
        """Queue a decode step of `rows` with the sampling of their next tokens (one graph replay on a GPU, the draw
        inside it unless a row needs the sampler's call: a constraint, logit bias, penalties or logprobs); nothing
        waits for the device. Their inputs are already in the graph's token buffer (written when they were sampled)."""
        slots = [b for b, _ in rows]
        if self.sampler.plan(slots) is not None and all(req.constraint is None for _, req in rows):
            nxt = Sampled(self.decoder(slots))
        else:
            index = self._index(tuple(slots))
            nxt = self._sample(self.decoder(slots, draw=False), index, rows, compact=True)
            self.decoder.tokens.index_copy_(0, index, nxt.tokens)
        self.steps += 1
        if not nxt.tokens.is_cuda:
            return _Launched(rows, nxt, None)
        if nxt.logprob is not None:
            host, done = nxt.to_host(), torch.cuda.Event()
        else:
            if self._readback is None:  # at most two steps are in flight (one with the lookahead): two buffers
                self._readback = [(torch.empty(len(self.slots), dtype=torch.long, pin_memory=True),
                                   torch.cuda.Event()) for _ in range(2)]
            tokens, done = self._readback[0]
            self._readback.reverse()  # the other buffer for the next step, while this one's tokens may be unread
            host = Sampled(tokens[:len(rows)].copy_(nxt.tokens, non_blocking=True))
        done.record()
        return _Launched(rows, host, done)

    def _sample(self, logits: torch.Tensor, index: torch.Tensor, rows: list[tuple[int, Request]],
                compact: bool = False) -> Sampled:
        """The next tokens of `rows` ((slot, request) pairs; `index` their slots on the device). Constrained
        rows' masks are computed on the host meanwhile: the forward that makes `logits` is already queued."""
        constraints = [req.constraint for _, req in rows]
        allowed = None
        if any(c is not None for c in constraints):
            allowed = self._masks[:len(rows)]
            fill_masks(constraints, allowed)
        return self.sampler(logits, index, [b for b, _ in rows], allowed, compact)

    @staticmethod
    def _produced(rows: list[tuple[int, Request]], sampled: Sampled) -> list[tuple[Request, int]]:
        """(request, token) of the rows still running (not finished or cancelled since the draw), their
        logprobs recorded; waits for the tokens if they are still on the device."""
        out = []
        for i, ((b, req), token) in enumerate(zip(rows, sampled.tokens.tolist())):
            if req.slot == b and not req.finished:
                if req.params.logprobs is not None:
                    req.logprobs.append(sampled.logprobs(i, req.params.logprobs))
                out.append((req, token))
        return out

    def _collect(self, launched: "_Launched") -> list[tuple[Request, int]]:
        """Wait for a launched step's tokens (not for steps queued after it); drop those of requests that
        finished or were cancelled since it was launched."""
        if launched.done is not None:
            launched.done.synchronize()
        return self._produced(launched.rows, launched.tokens)

    def _account(self, elapsed: float, produced: list[tuple[Request, int]]) -> None:
        for req in self.slots:
            if req is not None:
                if req.tokens:
                    req.stats.decode_s += elapsed
                else:
                    req.stats.prefill_s += elapsed
        for req, token in produced:
            req.tokens.append(token)
            req.stats.new_tokens += 1
            if req.constraint is not None:
                req.constraint.advance(token)
            if token in req.stop_tokens:
                self._finish(req, "stop")
            elif len(req.tokens) >= req.params.max_new_tokens:
                self._finish(req, "length")
            if req.on_token:
                req.on_token(req, token)
                if req.finished:
                    req.on_token(req, None)

    def _index(self, rows: tuple) -> torch.Tensor:
        """rows as a device index, copied from the host once per distinct set of rows."""
        index = self._index_cache.get(rows)
        if index is None:
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            index = self._index_cache[rows] = torch.tensor(rows, dtype=torch.long, device=self.device)
        return index

    def run(self, requests: Iterable[Request] | None = None) -> None:
        """Step until the given requests (default: all) have finished."""
        pending = list(requests) if requests is not None else None
        while (self.busy if pending is None else not all(r.finished for r in pending)):
            self.step()

    def _admit(self) -> None:
        with self._lock:
            for b in range(len(self.slots)):
                while self.slots[b] is None and self.waiting:
                    req = self.waiting.popleft()
                    if req.cancelled:  # cancelled while waiting: it never takes a slot
                        self._finish(req, "cancelled")
                        if req.on_token:
                            req.on_token(req, None)
                        continue
                    self.cache.reset(b)
                    self.sampler.assign(b, req.params, req.seed)
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
