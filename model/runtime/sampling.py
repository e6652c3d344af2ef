"""Sampling on the device: parameters (validated up front), top-k / top-p filtering, and the engine's sampler.

A request's randomness is counter-based: its seed and how many tokens it has drawn pick the noise
(kernels/sample.py), so its tokens do not depend on which requests share its batch, and a step draws every
row's token in a few launches whatever their parameters. Off the GPU (and outside Triton's interpreter) a
torch loop draws the same distribution with a generator per row, seeded from (seed, draw): the same seed then
gives the same tokens on every CPU run, not the tokens a GPU gives.
"""
from dataclasses import dataclass

import torch

from ...kernels._interpreter import interpreting
from ...kernels.sample import sample_tokens

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, draw) pairs over the generator's seeds


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_p 1.0 and top_k 0 turn those filters off; seed None draws a fresh one."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self):
        problems = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not 0.0 <= self.temperature <= 100.0:
            problems.append(f"temperature must be in [0, 100], got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            problems.append(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            problems.append(f"seed must be an integer or None, got {self.seed!r}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def filtered(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


def filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """logits [R, V] (tempered) with what top-k (top_k [R], 0: off) and then top-p (top_p [R], 1: off) drop set
    to -inf: one sort for all rows. A token survives top-p while the tokens before it hold less than top_p."""
    V = logits.shape[-1]
    sorted_logits, order = logits.float().sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(V, device=logits.device)
    k = torch.where(top_k > 0, top_k, V)
    sorted_logits = sorted_logits.masked_fill(rank[None, :] >= k[:, None], float("-inf"))
    probs = sorted_logits.softmax(dim=-1)
    drop = ((probs.cumsum(dim=-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(sorted_logits, float("-inf")).scatter(-1, order, sorted_logits)


def _sample_tokens_torch(logits, temperature, seeds, draws) -> torch.Tensor:
    """sample_tokens' distribution (Gumbel-max) with torch's generator, one row at a time: for the CPU."""
    tokens = []
    for row, t, seed, draw in zip(logits.float(), temperature.tolist(), seeds.tolist(), draws.tolist()):
        if t > 0:
            g = torch.Generator(device=row.device).manual_seed((seed * _MIX + draw) % (1 << 63))
            u = torch.rand(row.shape, generator=g, device=row.device)
            row = row / t - torch.log(-torch.log(u))
        tokens.append(row.argmax())
    return torch.stack(tokens) if tokens else torch.zeros(0, dtype=torch.int64, device=logits.device)


def draw_tokens(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, draws: torch.Tensor,
                top_k: torch.Tensor | None = None, top_p: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of logits [R, V]: temperature [R] fp32 (0: greedy), seeds and draws [R] int64, top_k
    [R] int64 and top_p [R] fp32 (None: no filter) -> tokens [R] int64, on the logits' device, no host sync."""
    if top_k is not None or top_p is not None:
        R = logits.shape[0]
        top_k = top_k if top_k is not None else torch.zeros(R, dtype=torch.int64, device=logits.device)
        top_p = top_p if top_p is not None else torch.ones(R, dtype=torch.float32, device=logits.device)
        logits = filter_logits(logits.float() / torch.where(temperature > 0, temperature, 1.0)[:, None], top_k, top_p)
        temperature = (temperature > 0).float()  # tempered already: greedy rows stay greedy
    if logits.device.type in ("cuda", "meta") or interpreting():  # meta: the static model records the GPU path
        return sample_tokens(logits.contiguous(), temperature, seeds, draws)
    return _sample_tokens_torch(logits, temperature, seeds, draws)


def sample(logits: torch.Tensor, params: SamplingParams, seed: int = 0, draws: torch.Tensor | None = None):
    """logits [R, V] -> tokens [R], every row with `params` and `seed`; row r is draw draws[r] (default: r)."""
    R, device = logits.shape[0], logits.device

    def full(value, dtype):
        return torch.full((R,), value, dtype=dtype, device=device)

    draws = draws if draws is not None else torch.arange(R, device=device)
    return draw_tokens(logits, full(params.temperature, torch.float32), full(seed, torch.int64), draws,
                       full(params.top_k, torch.int64) if params.filtered else None,
                       full(params.top_p, torch.float32) if params.filtered else None)


@dataclass(frozen=True)
class DrawPlan:
    """What a step's draw must do for its rows, known on the host from their parameters: the decode graphs are
    keyed by it, so rows that need less never pay for more. sampled: some row has temperature > 0 (else argmax);
    filtered: some sampled row has top-k or top-p."""

    sampled: bool = False
    filtered: bool = False


class SlotSampler:
    """Each engine slot's sampling state on the device: temperature, top-k, top-p, seed and draws made so far.

    `assign` sets a slot's row when a request takes it (scalar writes: nothing copied from the host). `draw`
    samples rows of logits from their slots' state and advances their draw counters, all on the device with
    no host sync: the decode graph captures it. A call does the same for the rows a prefill step finished.

    Per-slot state is a device tensor with one row per slot, read through the step's slot index. More state
    for a later sampling feature (a logit-bias or penalty-count row [n_slots, V], an allowed-token bitmask
    [n_slots, V/32] the host writes before a replay of a constrained row) follows the same shape: a field of
    DrawPlan says a step needs it, and `draw` applies it to the logits before drawing, so the graph of a step
    without it does not contain that work."""

    def __init__(self, n_slots: int, device):
        def zeros(dtype):
            return torch.zeros(n_slots, dtype=dtype, device=device)

        self.temperature, self.top_p = zeros(torch.float32), zeros(torch.float32)
        self.top_k, self.seed, self.draws = zeros(torch.int64), zeros(torch.int64), zeros(torch.int64)
        self.params: list[SamplingParams | None] = [None] * n_slots
        self._ones = torch.ones(n_slots, dtype=torch.int64, device=device)  # a draw for each sampled row

    def assign(self, slot: int, params: SamplingParams, seed: int) -> None:
        self.temperature[slot] = params.temperature
        self.top_k[slot] = params.top_k
        self.top_p[slot] = params.top_p
        self.seed[slot] = seed % (1 << 63)
        self.draws[slot] = 0
        self.params[slot] = params

    def plan(self, slots: list[int]) -> DrawPlan:
        params = [self.params[b] for b in slots]
        sampled = [p for p in params if not p.greedy]
        return DrawPlan(sampled=bool(sampled), filtered=any(p.filtered for p in sampled))

    def draw(self, logits: torch.Tensor, slots: torch.Tensor, advance: torch.Tensor, plan: DrawPlan) -> torch.Tensor:
        """logits [n, V] of slots [n] (device index) -> tokens [n] int64; draws[slots] += advance [n] int64."""
        if plan.sampled:
            tokens = draw_tokens(logits, self.temperature[slots], self.seed[slots], self.draws[slots],
                                 self.top_k[slots] if plan.filtered else None,
                                 self.top_p[slots] if plan.filtered else None)
        else:
            tokens = logits.argmax(dim=-1)
        self.draws.index_add_(0, slots, advance)
        return tokens

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """logits [B, V]; rows: the device index of `slots` -> tokens [len(slots)] int64."""
        plan = self.plan(slots)
        if not plan.sampled:  # argmax first: selects B tokens instead of copying B rows of logits
            tokens = logits.argmax(dim=-1).index_select(0, rows)
            self.draws.index_add_(0, rows, self._ones[:len(slots)])
            return tokens
        return self.draw(logits.index_select(0, rows), rows, self._ones[:len(slots)], plan)
