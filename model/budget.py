"""GPU memory budget of a config at a batch and context: weights, KV cache, activations, workspace.

Weights are counted as stored (bf16 + packed MXFP4 with its scales, never dequantized). The KV cache
holds `context` positions per sequence on full-attention layers and a ring of `sliding_window`
positions on sliding ones. Activations are those of one engine step (at most `prefill_chunk` prompt tokens
over all sequences plus a decode token per sequence, so a 128K prompt never needs 128K-sized activations), with fp32 logits for the chunk's last tokens only.
"""
import math
from dataclasses import dataclass

import torch

from .config import GptOssConfig

GB = 1e9


@dataclass(frozen=True)
class MemoryBudget:
    weights: int
    kv_cache: int
    kv_per_token: int  # bytes per token of context per sequence (full layers)
    activations: int
    workspace: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.workspace

    def __str__(self) -> str:
        return (f"weights {self.weights / GB:.2f} GB + KV cache {self.kv_cache / GB:.2f} GB "
                f"({self.kv_per_token / 1e3:.1f} KB/token) + activations {self.activations / GB:.2f} GB + "
                f"workspace {self.workspace / GB:.2f} GB = {self.total / GB:.2f} GB")


def weight_bytes(config: GptOssConfig, act_bytes: int = 2) -> int:
    from ..loader.names import expected_tensors, is_mxfp4

    return sum(math.prod(shape) * (dtype.itemsize if is_mxfp4(name) else act_bytes)
               for name, (shape, dtype) in expected_tensors(config).items())


def memory_budget(config: GptOssConfig, batch: int, context: int, *, prefill_chunk: int = 2048,
                  act_bytes: int = 2) -> MemoryBudget:
    if batch < 1 or context < 1:
        raise ValueError(f"batch ({batch}) and context ({context}) must be >= 1")
    if context > config.max_context:
        raise ValueError(f"context {context} exceeds the model's {config.max_context}")
    kv_row = 2 * config.num_key_value_heads * config.head_dim * act_bytes  # k and v of one position, one layer
    n_sliding = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    n_full = config.num_hidden_layers - n_sliding
    window = min(config.sliding_window, context)
    kv_cache = batch * kv_row * (n_full * context + n_sliding * window)
    tokens = min(prefill_chunk + batch, batch * context)  # a step: prompt chunks + a decode token per row
    H, I, k = config.hidden_size, config.intermediate_size, config.experts_per_token
    per_token = act_bytes * (3 * H + config.qkv_dim + config.num_attention_heads * config.head_dim
                             + k * (2 * I + I + H)) + 4 * (config.num_experts + 2 * k)  # router logits, weights
    activations = tokens * per_token + 4 * batch * config.vocab_size  # fp32 logits of the last token per row
    workspace = 64 << 20  # routing metadata, split-K partials, sampling: bounded, independent of context
    return MemoryBudget(weight_bytes(config, act_bytes), kv_cache, kv_row * n_full, activations, workspace)


def max_batch(config: GptOssConfig, context: int, memory_bytes: int, **kw) -> int:
    """The largest batch whose budget at `context` fits in `memory_bytes` (0 if not even one sequence)."""
    lo, hi = 0, 1
    while memory_budget(config, hi, context, **kw).total <= memory_bytes and hi < 1 << 16:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if memory_budget(config, mid, context, **kw).total <= memory_bytes else (lo, mid)
    return lo


def max_context(config: GptOssConfig, batch: int, memory_bytes: float, **kw) -> int:
    """The longest context (positions per sequence) whose budget at `batch` fits in `memory_bytes` (0 if none)."""
    lo, hi = 0, config.max_context + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if memory_budget(config, batch, mid, **kw).total <= memory_bytes else (lo, mid)
    return lo


# Consumer cards: "16 GB" and "24 GB" are GiB (RTX 4060 Ti / 4080 / 5070 Ti: 16 GiB; RTX 3090 / 4090: 24 GiB).
# CARD_RESERVE: what the process cannot use for tensors (CUDA context with Triton's and cuBLAS's modules, the
# allocator's rounding), assumed 1 GiB; a display attached to the card takes more.
CARD_RESERVE = 1 << 30
CARDS = {"16 GB": 16 << 30, "24 GB": 24 << 30}


def card_contexts(config: GptOssConfig, batches=(1, 4)) -> dict:
    """{(card, batch): the longest context that fits} for the consumer cards in CARDS."""
    return {(card, b): max_context(config, b, size - CARD_RESERVE) for card, size in CARDS.items() for b in batches}


def free_bytes(device) -> int | None:
    """Memory a new allocation on `device` can still get: the GPU's free memory plus what torch's caching
    allocator holds unused. None off CUDA (no limit is checked there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def check_fits(config: GptOssConfig, batch: int, context: int, free: int | None, **kw) -> MemoryBudget:
    """Raise a ValueError, before anything is allocated, when the KV cache, activations and workspace of `batch`
    sequences of `context` tokens need more than `free` bytes beside the weights already loaded."""
    budget = memory_budget(config, batch, context, **kw)
    need = budget.total - budget.weights
    if free is not None and need > free:
        fits = max_batch(config, context, free + budget.weights, **kw)
        raise ValueError(
            f"batch {batch} at {context} tokens needs {need / GB:.2f} GB beside the weights (KV cache "
            f"{budget.kv_cache / GB:.2f} GB, activations {budget.activations / GB:.2f} GB, workspace "
            f"{budget.workspace / GB:.2f} GB) but only {free / GB:.2f} GB are free: at most batch {fits} fits "
            f"at this context")
    return budget
