"""GPU memory budget of a config at a batch and context: weights, KV cache, activations, workspace.

Weights are counted as stored (bf16 + packed MXFP4 with its scales, never dequantized). The KV cache
holds `context` positions per sequence on full-attention layers and a ring of `sliding_window`
positions on sliding ones. Activations are those of one engine step (at most `prefill_chunk` prompt tokens
over all sequences plus a decode token per sequence, so a 128K prompt never needs 128K-sized activations), with fp32 logits for the chunk's last tokens only.

With `tensor_parallel=N` the budget is one rank's (every rank holds the same bytes; model/parallel/plan.py):
its slices of the weights (a KV head replicated when N exceeds the KV heads), the KV cache of its KV heads,
its heads' activations, the vocabulary-split logits and their gathered copy, and NCCL's buffers.
`check_layout` checks every rank of a layout against that rank's free memory and names the ranks short.
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


# NCCL's own device buffers per rank (NCCL_BUFFSIZE, 4 MiB by default, per channel and peer, for the ring and
# tree protocols): a few hundred MB on an 8-GPU node; 0.5 GB is a round allowance, not a measurement.
NCCL_BYTES = 512 << 20


def weight_bytes(config: GptOssConfig, act_bytes: int = 2, tensor_parallel: int = 1) -> int:
    """Bytes of the weights as stored (floats at act_bytes each), on one rank of `tensor_parallel`."""
    from ..loader.names import expected_tensors, is_mxfp4
    from .parallel.plan import ShardPlan

    shapes = ShardPlan(config, 0, tensor_parallel).shapes()
    return sum(math.prod(shapes[name]) * (dtype.itemsize if is_mxfp4(name) else act_bytes)
               for name, (_, dtype) in expected_tensors(config).items())


def memory_budget(config: GptOssConfig, batch: int, context: int, *, prefill_chunk: int = 2048,
                  act_bytes: int = 2, tensor_parallel: int = 1) -> MemoryBudget:
    from .parallel.plan import ShardPlan

    if batch < 1 or context < 1:
        raise ValueError(f"batch ({batch}) and context ({context}) must be >= 1")
    if context > config.max_context:
        raise ValueError(f"context {context} exceeds the model's {config.max_context}")
    plan = ShardPlan(config, 0, tensor_parallel)
    q_heads, kv_heads = plan.q_heads[1] - plan.q_heads[0], plan.kv_heads[1] - plan.kv_heads[0]
    kv_row = 2 * kv_heads * config.head_dim * act_bytes  # k and v of one position, one layer
    n_sliding = sum(config.is_sliding(i) for i in range(config.num_hidden_layers))
    n_full = config.num_hidden_layers - n_sliding
    window = min(config.sliding_window, context)
    kv_cache = batch * kv_row * (n_full * context + n_sliding * window)
    tokens = min(prefill_chunk + batch, batch * context)  # a step: prompt chunks + a decode token per row
    H, I, k = config.hidden_size, config.intermediate_size, config.experts_per_token
    per_token = act_bytes * (3 * H + (q_heads + 2 * kv_heads + q_heads) * config.head_dim
                             + k * (2 * I + I + H)) + 4 * (config.num_experts + 2 * k)  # router logits, weights
    V = config.vocab_size
    logits = 4 * batch * V  # fp32 logits of the last token per row
    if tensor_parallel > 1:  # the rank's slice, the gathered [ranks, rows, V/N] and its [rows, V] copy
        logits += act_bytes * batch * (V // tensor_parallel + 2 * V)
    activations = tokens * per_token + logits
    workspace = 64 << 20  # routing metadata, split-K partials, sampling: bounded, independent of context
    if tensor_parallel > 1:
        workspace += NCCL_BYTES
    return MemoryBudget(weight_bytes(config, act_bytes, tensor_parallel), kv_cache, kv_row * n_full, activations,
                        workspace)


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


def check_layout(config: GptOssConfig, batch: int, context: int, free_by_rank: list, *, weights_loaded: bool = False,
                 devices: list | None = None, **kw) -> MemoryBudget:
    """Raise a ValueError naming every rank short of memory when each of len(free_by_rank) ranks holds its share
    of the model with `batch` sequences of `context` tokens. free_by_rank[r]: the bytes rank r can still get
    (None: not checked, off CUDA); with weights_loaded the weights are already in place and not counted."""
    tp = len(free_by_rank)
    budget = memory_budget(config, batch, context, tensor_parallel=tp, **kw)
    need = budget.total - (budget.weights if weights_loaded else 0)
    short = [(r, free) for r, free in enumerate(free_by_rank) if free is not None and need > free]
    if short:
        least = min(free for _, free in short)
        fits = max_batch(config, context, least + (budget.weights if weights_loaded else 0), tensor_parallel=tp, **kw)
        where = "; ".join(f"rank {r}{f' ({devices[r]})' if devices else ''} has {free / GB:.2f} GB free: short by "
                          f"{(need - free) / GB:.2f} GB" for r, free in short)
        parts = ("" if weights_loaded else f"weights {budget.weights / GB:.2f} GB + ") + (
            f"KV cache {budget.kv_cache / GB:.2f} GB + activations {budget.activations / GB:.2f} GB + workspace "
            f"{budget.workspace / GB:.2f} GB")
        advice = (f"at most batch {fits} fits at this context" if fits else
                  "not even one sequence fits at this context: use more ranks or shorter contexts")
        raise ValueError(f"tensor parallel {tp}: batch {batch} at {context} tokens needs {need / GB:.2f} GB per "
                         f"rank ({parts}); {where}; {advice}")
    return budget


# GPU memory as sold (GiB) less what the CUDA context and the driver take before any tensor (~0.5 GiB on
# recent drivers; an allowance, not a measurement).
CONTEXT_RESERVE = 512 << 20
LAYOUTS = (("2x24 GB", 2, 24), ("2x48 GB", 2, 48), ("4x24 GB", 4, 24), ("8x80 GB", 8, 80))
CONTEXTS = (4096, 32768, 131072)


def fit_table(configs: dict, layouts=LAYOUTS, contexts=CONTEXTS) -> list[dict]:
    """For each model and layout (name, ranks, GiB per GPU): the weights per rank and the largest batch that
    fits per rank at each context (0: none)."""
    rows = []
    for model, config in configs.items():
        for name, tp, gib in layouts:
            usable = (gib << 30) - CONTEXT_RESERVE
            rows.append({"model": model, "layout": name, "ranks": tp,
                         "weights_per_rank": weight_bytes(config, tensor_parallel=tp),
                         "max_batch": {ctx: max_batch(config, ctx, usable, tensor_parallel=tp) for ctx in contexts}})
    return rows


def main() -> None:
    """Print the fit table for gpt-oss-20b and 120b: `python -m gpt_oss_triton.model.budget`."""
    from .config import PRESETS

    print("model | GPUs | weights per rank | max batch at " + " | ".join(f"{c // 1024}K" for c in CONTEXTS))
    for row in fit_table({m: PRESETS[m] for m in ("gpt-oss-20b", "gpt-oss-120b")}):
        print(f"{row['model']} | {row['layout']} | {row['weights_per_rank'] / GB:.2f} GB | "
              + " | ".join(str(row["max_batch"][c]) for c in CONTEXTS))


if __name__ == "__main__":
    main()
