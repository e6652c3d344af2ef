"""A stand-in for GptOss whose output is scripted to the token: a test double for the network only, so the
engine, the sampler and the server around it run for real.

    model = ScriptedModel.from_text(tokenizer, lambda context: "<|channel|>final<|message|>Hi<|return|>")

It has what the engine uses: `config` (vocab_size, max_context), `embedding.weight` (its device),
`new_cache(batch, max_len)` with `reset(slot)`, and `forward_packed(tokens, n_new, cache)`, whose logits make
every sampling setting pick the scripted token (0 for it, -1e4 for every other id: greedy, any temperature,
top-k or top-p). `reply(context)` gives the ids the model writes after `context` (a row's ids so far); it is
asked again whenever the ids fed in leave its script (a constraint, a forced header or a chunked prompt
chose otherwise) or the script runs out. `Forced` is a token constraint (engine.TokenConstraint) that
forces given ids, for testing the engine's constraint hook.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch

OFF = -1e4  # finite: a constraint that rules out the scripted token still leaves a choice among the rest


class ScriptedModel:
    def __init__(self, vocab_size: int, reply: Callable[[list[int]], Sequence[int]], *, max_context: int = 8192,
                 idle_token: int = 0):
        self.config = SimpleNamespace(vocab_size=vocab_size, max_context=max_context)
        self.embedding = SimpleNamespace(weight=torch.zeros(1))
        self.reply, self.idle_token = reply, idle_token
        self.contexts: list[list[int]] = []  # every context `reply` was asked about, in order

    @classmethod
    def from_text(cls, tokenizer, reply: Callable[[str], str], **kw) -> ScriptedModel:
        """reply(context text, special tokens written out) -> the text the model writes next."""
        return cls(tokenizer.vocab_size, lambda ids: tokenizer.encode(reply(tokenizer.decode(ids))), **kw)

    def new_cache(self, batch: int, max_len: int) -> _Rows:
        return _Rows(batch)

    def forward_packed(self, tokens: torch.Tensor, n_new: list[int], cache: _Rows) -> torch.Tensor:
        logits = torch.full((len(n_new), self.config.vocab_size), OFF)
        fed = iter(tokens.tolist())
        for b, n in enumerate(n_new):
            if not n:
                continue
            for token in [next(fed) for _ in range(n)]:
                cache.seq[b].append(token)
                plan = cache.plan[b]
                cache.plan[b] = plan[1:] if plan and plan[0] == token else None  # off script: ask again
            if not cache.plan[b]:
                self.contexts.append(list(cache.seq[b]))
                cache.plan[b] = list(self.reply(list(cache.seq[b])))
            logits[b, cache.plan[b][0] if cache.plan[b] else self.idle_token] = 0.0
        return logits


class _Rows:
    """Per slot: the ids fed so far and what the script still has to write."""

    def __init__(self, batch: int):
        self.seq: list[list[int]] = [[] for _ in range(batch)]
        self.plan: list[list[int] | None] = [None] * batch

    def reset(self, slot: int) -> None:
        self.seq[slot], self.plan[slot] = [], None


class Forced:
    """A TokenConstraint allowing only ids[k] as the k-th token, then any token; `seen` records advance()."""

    def __init__(self, ids: Sequence[int], vocab_size: int):
        self.ids, self.vocab_size, self.seen = list(ids), vocab_size, []

    def allowed_tokens(self) -> torch.Tensor | None:
        if len(self.seen) >= len(self.ids):
            return None
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[self.ids[len(self.seen)]] = True
        return mask

    def advance(self, token: int) -> None:
        self.seen.append(token)
