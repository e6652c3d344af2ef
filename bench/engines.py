"""A prefill or a decode step at a given batch and context, the same way for every implementation.

`engine.prefill(batch, context)` and `engine.decode(batch, context)` allocate what the step needs and return
a `Step`: `step.run(*step.setup())` runs it once; `setup` (untimed) puts the cache back where the step
starts, so every round of a benchmark does the same work. Decode runs at `context` cached positions without
prefilling them first: a step reads the same bytes whatever the cached values are, and a prefill of 32K
tokens would cost more than the measurement.
"""
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Step:
    setup: Callable[[], tuple]
    run: Callable[..., torch.Tensor]


def random_tokens(vocab_size: int, batch: int, length: int, device, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=g).to(device)


def _move_cache_to(cache, position: int) -> None:
    """Set how many positions every row of the cache holds: the Triton backend counts them on the device
    (`lengths`, a tensor), the torch one on the host (`length`)."""
    if isinstance(getattr(cache, "lengths", None), torch.Tensor):
        cache.lengths.fill_(position)
    else:
        cache.length = position


class OursEngine:
    """Our GptOss: `model(tokens, cache)` prefills; decode runs what the generation engine runs, the
    CUDA-graph `DecodeGraph` for the Triton backend (the public `model(tokens, cache)` for the reference)."""

    def __init__(self, model):
        self.model, self.config = model, model.config
        self.device = model.embedding.weight.device

    def prefill(self, batch: int, context: int) -> Step:
        tokens = random_tokens(self.config.vocab_size, batch, context, self.device)
        cache = self.model.new_cache(batch, context)

        def setup():
            _move_cache_to(cache, 0)
            return ()

        return Step(setup, lambda: self.model(tokens, cache))

    def decode(self, batch: int, context: int) -> Step:
        from gpt_oss_triton.model.runtime.decode_graph import DecodeGraph

        tokens = random_tokens(self.config.vocab_size, batch, 1, self.device)
        cache = self.model.new_cache(batch, context + 1)

        def setup():
            _move_cache_to(cache, context)
            return ()

        if not hasattr(self.model, "decode_step"):
            return Step(setup, lambda: self.model(tokens, cache))
        graph = DecodeGraph(self.model, cache)  # captured in the warm-up round; the step ends at the logits
        graph.tokens[:batch].copy_(tokens[:, 0])
        rows = list(range(batch))
        return Step(setup, lambda: graph(rows, draw=False))


class HFEngine:
    """transformers' GptOssForCausalLM (see peers.hf_model) with its DynamicCache."""

    def __init__(self, hf, vocab_size: int):
        import transformers

        self.hf, self.config, self.vocab_size = hf, hf.config, vocab_size
        self.device = hf.lm_head.weight.device
        self._dynamic_cache = transformers.DynamicCache
        # The cache argument was renamed from past_key_values to cache in transformers 5.
        params = inspect.signature(hf.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def _cache(self, batch: int, context: int):
        """A DynamicCache holding `context` positions of zeros in every layer."""
        try:
            cache = self._dynamic_cache(config=self.config)  # sliding layers then keep only their window
        except TypeError:
            cache = self._dynamic_cache()
        c = self.config
        dtype = self.hf.lm_head.weight.dtype
        for layer in range(c.num_hidden_layers):
            kv = torch.zeros(batch, c.num_key_value_heads, context, c.head_dim, dtype=dtype, device=self.device)
            cache.update(kv, kv.clone(), layer)
        return cache

    def prefill(self, batch: int, context: int) -> Step:
        tokens = random_tokens(self.vocab_size, batch, context, self.device)
        return Step(lambda: (), lambda: self.hf(input_ids=tokens, use_cache=True).logits)

    def decode(self, batch: int, context: int) -> Step:
        tokens = random_tokens(self.vocab_size, batch, 1, self.device)
        return Step(lambda: (self._cache(batch, context),),
                    lambda cache: self.hf(input_ids=tokens, use_cache=True, **{self._cache_arg: cache}).logits)
