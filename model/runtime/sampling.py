"""Sampling on the device: parameters (validated up front), top-k / top-p filtering, and the engine's sampler.

A request's randomness is counter-based: its seed and how many tokens it has drawn pick the noise
(kernels/sample.py), so its tokens do not depend on which requests share its batch, and a step draws every
row's token in a few launches whatever their parameters. Off the GPU (and outside Triton's interpreter) a
torch loop draws the same distribution with a generator per row, seeded from (seed, draw): the same seed then
gives the same tokens on every CPU run, not the tokens a GPU gives.

A row's next token is drawn from its processed logits, in this order (OpenAI's definitions):
    z = logits + logit_bias - frequency_penalty * c - presence_penalty * (c > 0)
(c: how often each id was drawn so far in this request, the tokens the engine exempts not counted), then -inf
outside the ids a constraint allows, then z / temperature (1 for greedy), then -inf outside top-k and top-p.
Sampled rows draw from softmax(z); greedy rows take its first maximum. Reported logprobs are log_softmax(z):
the distribution a sampled token was drawn from (for greedy rows, the one whose argmax was taken).
"""
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ...kernels._interpreter import interpreting
from ...kernels.sample import sample_tokens

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, draw) pairs over the generator's seeds
# Below this temperature a row is greedy: there, logits 0.001 apart already differ e^100-fold in probability, so
# the draw is the argmax anyway, while 1 / temperature would overflow fp32 for the tiniest ones (1e-39).
MIN_TEMPERATURE = 1e-5
MAX_LOGPROBS = 20  # most alternatives a token's logprobs may list (OpenAI's top_logprobs limit)
PENALTY_RANGE = 2.0  # presence and frequency penalties lie in [-2, 2], as OpenAI's
BIAS_RANGE = 100.0  # a logit bias lies in [-100, 100], as OpenAI's


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 (or below MIN_TEMPERATURE) is greedy; top_p 1.0 and top_k 0 turn those filters off; seed
    None draws a fresh one. presence_penalty and frequency_penalty (0: off) and logit_bias ({token id: bias},
    kept as sorted pairs) shift the logits as the module docstring says. logprobs None reports none; k >= 0
    reports each token's logprob and the k most likely alternatives."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None

    def __post_init__(self):
        problems = []
        try:
            pairs = self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias
            object.__setattr__(self, "logit_bias", tuple(sorted((int(t), float(b)) for t, b in pairs)))
        except (TypeError, ValueError):
            problems.append(f"logit_bias must map token ids to numbers, got {self.logit_bias!r}")
            object.__setattr__(self, "logit_bias", ())
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -PENALTY_RANGE <= getattr(self, name) <= PENALTY_RANGE:
                problems.append(f"{name} must be in [-{PENALTY_RANGE:g}, {PENALTY_RANGE:g}], got {getattr(self, name)!r}")
        bad = [(t, b) for t, b in self.logit_bias if t < 0 or not -BIAS_RANGE <= b <= BIAS_RANGE]
        if bad:
            problems.append(f"logit_bias takes token ids >= 0 and biases in [-{BIAS_RANGE:g}, {BIAS_RANGE:g}], "
                            f"got {dict(bad[:3])}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or isinstance(self.logprobs, bool)
                                          or not 0 <= self.logprobs <= MAX_LOGPROBS):
            problems.append(f"logprobs must be None or an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

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
    # The first token always stays: a top_p that rounds to 0 in fp32 (1e-46) is the greedy limit, not no token.
    drop = ((probs.cumsum(dim=-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None] & (rank > 0)[None, :]
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
    temperature = temperature.masked_fill(temperature < MIN_TEMPERATURE, 0.0)
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


class TokenLogprobs(NamedTuple):
    """One drawn token's logprob and the most likely alternatives as (id, logprob), best first."""

    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Sampled:
    """One call's draws for R rows: tokens [R] int64 and, when some row asked for logprobs, the drawn token's
    logprob [R] fp32 and the `k` most likely ids [R, k] int64 with theirs [R, k] fp32 (k: the most any row asked)."""

    tokens: torch.Tensor
    logprob: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None

    def to_host(self) -> "Sampled":
        """Copies in pinned memory, filled without waiting (read them after the stream has reached this point)."""
        def copy(x):
            if x is None:
                return None
            host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            return host.copy_(x, non_blocking=True)
        return Sampled(*(copy(x) for x in (self.tokens, self.logprob, self.top_ids, self.top_logprobs)))

    def logprobs(self, row: int, k: int) -> TokenLogprobs:
        """Row `row`'s logprobs with its k alternatives (host tensors)."""
        top = [] if k == 0 else list(zip(self.top_ids[row, :k].tolist(), self.top_logprobs[row, :k].tolist()))
        return TokenLogprobs(self.logprob[row].item(), top)


def unpack_bits(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Bitmask [R, ceil(vocab / 32)] int32 (bit i of word w: id 32 w + i) -> bool [R, vocab], on bits' device."""
    ids = torch.arange(vocab, device=bits.device)
    return ((bits.index_select(1, ids >> 5) >> (ids & 31).to(torch.int32)) & 1).bool()


def pack_bits(allowed: torch.Tensor | None, words: int) -> torch.Tensor:
    """bool [n] (None: all allowed) -> bits [words] int32 on the host; ids past n are not allowed."""
    if allowed is None:
        return torch.full((words,), -1, dtype=torch.int32)
    flat = torch.zeros(words * 32, dtype=torch.bool)
    n = min(allowed.numel(), flat.numel())
    flat[:n] = allowed[:n].cpu()
    weights = torch.tensor([1 << i for i in range(32)], dtype=torch.int64)
    return ((flat.view(words, 32).long() * weights).sum(dim=1) - (flat.view(words, 32)[:, 31].long() << 32)
            ).to(torch.int32)  # bit 31 is the sign: the int64 sum wrapped to int32's range


def fill_masks(constraints: list, out: torch.Tensor) -> None:
    """Writes each constraint's allowed next ids into bits out[i] ([len(constraints), ceil(V / 32)] int32 on the
    host; bit i of word w: id 32 w + i; None: every id). A constraint is any object with `allowed_tokens()` -> bool [n] (ids
    from n on are not allowed) or None (a free token); a class with a static `fill_masks(items, out)` gets all
    its (constraint, row) items in one call instead (grammars: one parallel call into their library)."""
    batched: dict = {}
    for i, c in enumerate(constraints):
        fill = getattr(type(c), "fill_masks", None)
        if c is None:
            out[i] = -1
        elif fill is not None:
            batched.setdefault(fill, []).append((c, i))
        else:
            out[i] = pack_bits(c.allowed_tokens(), out.shape[1])
    for fill, items in batched.items():
        fill(items, out)


class SlotSampler:
    """Each engine slot's sampling state on the device: temperature, top-k, top-p, seed, draws made so far,
    penalties, and (made at the first request that needs them) its logit bias [slots, V] and the counts of the
    ids it has drawn [slots, V].

    `assign` sets a slot's row when a request takes it; a call draws the ready rows' tokens (under their
    constraints' masks, when given), advances their draw counters and counts on the device, and returns their
    logprobs when some row asked. Ids in `exempt` (the chat format's control tokens) are never counted, so
    penalties never push the model off its format.

    `draw` is the part the decode graph captures: rows whose `plan` is not None (no logit bias, penalty or
    logprobs) are drawn from their slots' state on the device with no host sync, inside the graph; the graph
    of a step keyed by its plan contains only the work its rows need. Other rows are drawn by a call, outside."""

    def __init__(self, n_slots: int, device, vocab_size: int | None = None, exempt: Iterable[int] = ()):
        def zeros(dtype):
            return torch.zeros(n_slots, dtype=dtype, device=device)

        self.device, self.vocab_size = torch.device(device), vocab_size
        self.temperature, self.top_p = zeros(torch.float32), zeros(torch.float32)
        self.top_k, self.seed, self.draws = zeros(torch.int64), zeros(torch.int64), zeros(torch.int64)
        self.presence, self.frequency = zeros(torch.float32), zeros(torch.float32)
        self.params: list[SamplingParams | None] = [None] * n_slots
        self._ones = torch.ones(n_slots, dtype=torch.int64, device=device)  # a draw for each sampled row
        self._exempt = sorted({int(t) for t in exempt})
        self._bias: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        self._counted: torch.Tensor | None = None  # [V] fp32: 1 for each id a draw counts, 0 for the exempt

    def _table(self) -> torch.Tensor:
        if self.vocab_size is None:
            raise ValueError("logit_bias and penalties need the sampler's vocab_size")
        return torch.zeros(len(self.params), self.vocab_size, dtype=torch.float32, device=self.device)

    def assign(self, slot: int, params: SamplingParams, seed: int) -> None:
        self.temperature[slot] = 0.0 if params.greedy else params.temperature
        self.top_k[slot] = params.top_k
        self.top_p[slot] = params.top_p
        self.seed[slot] = seed % (1 << 63)
        self.draws[slot] = 0
        self.presence[slot] = params.presence_penalty
        self.frequency[slot] = params.frequency_penalty
        if params.logit_bias and self._bias is None:
            self._bias = self._table()
        if self._bias is not None:  # a row is added whenever a batch mate has a bias: clear the last request's
            self._bias[slot].zero_()
        if params.logit_bias:
            ids, bias = zip(*params.logit_bias)
            self._bias[slot, torch.tensor(ids, device=self.device)] = torch.tensor(bias, device=self.device)
        if params.penalized:
            if self._counts is None:
                self._counts = self._table()
                self._counted = torch.ones(self.vocab_size, device=self.device)
                self._counted[[t for t in self._exempt if t < self.vocab_size]] = 0.0
            self._counts[slot].zero_()
        self.params[slot] = params

    def plan(self, slots: list[int]) -> DrawPlan | None:
        """The draw the decode graph can make for these slots' rows, or None if one needs the call's (a logit
        bias, penalties or logprobs)."""
        params = [self.params[b] for b in slots]
        if any(p.logit_bias or p.penalized or p.logprobs is not None for p in params):
            return None
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

    def __call__(self, logits: torch.Tensor, rows: torch.Tensor, slots: list[int],
                 allowed: torch.Tensor | None = None, compact: bool = False) -> Sampled:
        """logits [B, V]; rows: the device index of `slots`; allowed: None, or the rows' constraint masks as
        bits [len(slots), ceil(V / 32)] int32 (on any device; all ones for a free row) -> their draws.
        compact: logits [len(slots), V] hold the slots' rows in order (a decode step's), not one row per slot."""
        def pick(x):
            return x if compact else x.index_select(0, rows)

        params = [self.params[b] for b in slots]
        biased = any(p.logit_bias for p in params)
        penalized = any(p.penalized for p in params)
        top = max((p.logprobs for p in params if p.logprobs is not None), default=None)
        filtered = any(p.filtered for p in params)
        out = Sampled(tokens=None)
        if not (biased or penalized or allowed is not None or top is not None):
            if all(p.greedy for p in params):  # argmax first: selects B tokens instead of copying B rows of logits
                out.tokens = pick(logits.argmax(dim=-1))
            else:
                out.tokens = draw_tokens(pick(logits), self.temperature[rows], self.seed[rows],
                                         self.draws[rows], self.top_k[rows] if filtered else None,
                                         self.top_p[rows] if filtered else None)
        else:
            z = pick(logits).float()
            if biased:
                z += self._bias.index_select(0, rows)
            if penalized:
                counts = self._counts.index_select(0, rows)
                z -= self.frequency[rows, None] * counts + self.presence[rows, None] * (counts > 0)
            if allowed is not None:
                z.masked_fill_(~unpack_bits(allowed.to(z.device, non_blocking=True), z.shape[-1]), float("-inf"))
            t = self.temperature[rows]
            z /= torch.where(t > 0, t, 1.0)[:, None]
            if filtered:
                z = filter_logits(z, self.top_k[rows], self.top_p[rows])
            out.tokens = draw_tokens(z, (t > 0).float(), self.seed[rows], self.draws[rows])
            if top is not None:
                logprobs = z.log_softmax(dim=-1)
                out.logprob = logprobs.gather(1, out.tokens[:, None]).squeeze(1)
                if top > 0:
                    out.top_logprobs, out.top_ids = logprobs.topk(top, dim=-1)
        if penalized:
            self._counts.index_put_((rows, out.tokens), self._counted[out.tokens], accumulate=True)
        self.draws.index_add_(0, rows, self._ones[:len(slots)])
        return out
