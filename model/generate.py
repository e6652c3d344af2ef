"""Generation: sampling and the token iterator shared by the CLI (and later the chat and the server)."""
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch


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
        if problems:
            raise ValueError("invalid sampling parameters: " + "; ".join(problems))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next tokens [B] (int64), on the logits' device with no host sync."""
    logits = logits.float()
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens before it already cover top_p; the most likely one always stays.
        drop = probs.cumsum(dim=-1) - probs >= params.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    stopped_by: str = ""  # "stop" (a stop token) or "length"

    @property
    def decode_tokens_per_s(self) -> float:
        # The first new token comes from the prefill; the rest from decode steps.
        return max(self.new_tokens - 1, 0) / self.decode_s if self.decode_s > 0 else float("nan")


@dataclass
class Generation:
    """An iterator over new token ids; `stats` fills in as it runs."""

    tokens: Iterator[int]
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self):
        return self.tokens


def generate(model, prompt: list[int], params: SamplingParams = SamplingParams(),
             stop_tokens: Iterable[int] = ()) -> Generation:
    """Prefill `prompt`, then decode one token at a time with the model's KV cache, yielding each new id.

    Stops after a stop token (which is yielded) or after `params.max_new_tokens`. Every limit is checked
    before any work starts.
    """
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt is empty: generation needs at least one token")
    vocab, context = model.config.vocab_size, model.config.max_context
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise ValueError(f"prompt holds token ids outside the vocabulary [0, {vocab}): {bad[:5]}")
    if len(prompt) + params.max_new_tokens > context:
        raise ValueError(f"prompt of {len(prompt)} tokens + max_new_tokens {params.max_new_tokens} exceeds the "
                         f"model's context of {context} tokens")
    stats = GenerationStats(prompt_tokens=len(prompt))
    return Generation(_tokens(model, prompt, params, set(stop_tokens), stats), stats)


@torch.inference_mode()
def _tokens(model, prompt, params, stop, stats) -> Iterator[int]:
    device = model.embedding.weight.device
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed if params.seed is not None else torch.seed())
    cache = model.new_cache(1, len(prompt) + params.max_new_tokens)
    t0 = time.perf_counter()
    nxt = sample(model(torch.tensor([prompt], device=device), cache)[:, -1], params, generator)
    token = int(nxt.item())  # the one host sync per step: the caller streams the text
    stats.prefill_s = time.perf_counter() - t0
    for i in range(params.max_new_tokens):
        if i:
            t0 = time.perf_counter()
            nxt = sample(model(nxt.view(1, 1), cache)[:, -1], params, generator)
            token = int(nxt.item())
            stats.decode_s += time.perf_counter() - t0
        stats.new_tokens += 1
        yield token
        if token in stop:
            stats.stopped_by = "stop"
            return
    stats.stopped_by = "length"
