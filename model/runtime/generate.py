"""`generate()`: one prompt's token iterator, on the engine; the CLI and chat use it, the server the engine."""
from dataclasses import dataclass
from typing import Iterable, Iterator

from .engine import Engine, GenerationStats, check_request
from .sampling import SamplingParams, sample  # noqa: F401  (re-exported: the public generation API)


@dataclass
class Generation:
    """An iterator over new token ids; `stats` fills in as it runs."""

    tokens: Iterator[int]
    stats: GenerationStats

    def __iter__(self):
        return self.tokens


def generate(model, prompt: Iterable[int], params: SamplingParams = SamplingParams(),
             stop_tokens: Iterable[int] = (), constraint=None) -> Generation:
    """Prefill `prompt`, then decode one token at a time, yielding each new id.

    Stops after a stop token (which is yielded) or after `params.max_new_tokens`. `constraint` is an
    engine.TokenConstraint on the new ids. Every limit is checked before any work starts.
    """
    prompt = [int(t) for t in prompt]
    check_request(model.config, model.config.max_context, prompt, params)
    engine = Engine(model, max_batch=1, max_len=len(prompt) + params.max_new_tokens)
    req = engine.submit(prompt, params, stop_tokens, constraint=constraint)

    def tokens() -> Iterator[int]:
        while not req.finished:
            for _, token in engine.step():
                yield token

    return Generation(tokens(), req.stats)
