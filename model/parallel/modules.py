"""Turn a model built for one device into this rank's share of it, before its weights are assigned.

`shard_model(model, plan, parallel)` takes a model built on the meta device with the whole config and
- gives every parameter and buffer the shape of this rank's slice (`ShardPlan.shapes`), so that
  `load_state_dict(assign=True)` adopts the rank's tensors under the usual names;
- tells the blocks their share: attention heads (`n_heads`, `n_kv_heads`), the first of their experts
  (`first_expert`), and the `TensorParallel` whose collectives end their row-parallel parts;
- swaps the embedding and unembedding for their vocabulary-split versions below;
- sets `model.cache_config`, the config with this rank's heads, from which KV caches are shaped.
The blocks' own code runs unchanged on the smaller shapes.
"""
import dataclasses

import torch
from torch import nn

from .group import TensorParallel
from .plan import ShardPlan


class VocabParallelEmbedding(nn.Module):
    """Rows [vocab_start, vocab_start + n) of the embedding; a token outside them contributes zeros, and the
    all-reduce gathers each token's row from the rank that holds it. forward(tokens [...]) -> [..., H]."""

    def __init__(self, n: int, hidden: int, vocab_start: int, parallel: TensorParallel, dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, hidden, dtype=dtype, device=device))
        self.vocab_start, self.parallel = vocab_start, parallel

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = tokens - self.vocab_start
        inside = (local >= 0) & (local < self.weight.shape[0])
        x = nn.functional.embedding(torch.where(inside, local, 0), self.weight)
        return self.parallel.all_reduce_(x.masked_fill_(~inside[..., None], 0))


class VocabParallelUnembedding(nn.Module):
    """Rows [vocab_start, vocab_start + n) of the unembedding; the logits of every rank's rows are gathered,
    so each rank returns the whole vocabulary's. forward(x [..., H]) -> [..., V]."""

    def __init__(self, n: int, hidden: int, parallel: TensorParallel, dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, hidden, dtype=dtype, device=device))
        self.parallel = parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parallel.all_gather_last(nn.functional.linear(x, self.weight))


def shard_model(model: nn.Module, plan: ShardPlan, parallel: TensorParallel) -> None:
    """Reshape `model` (on the meta device) in place to rank `plan.rank`'s share; see the module docstring."""
    if plan.world_size != parallel.world_size or plan.rank != parallel.rank:
        raise ValueError(f"plan for rank {plan.rank} of {plan.world_size}, process is rank {parallel.rank} of "
                         f"{parallel.world_size}")
    config, dtype = model.config, model.dtype
    (q0, q1), (k0, k1), (e0, _), (v0, v1) = plan.q_heads, plan.kv_heads, plan.experts, plan.vocab
    model.embedding = VocabParallelEmbedding(v1 - v0, config.hidden_size, v0, parallel, dtype, device="meta")
    model.unembedding = VocabParallelUnembedding(v1 - v0, config.hidden_size, parallel, dtype, device="meta")
    for block in model.block:
        block.attn.n_heads, block.attn.n_kv_heads = q1 - q0, k1 - k0
        block.attn.parallel = block.mlp.parallel = parallel
        block.mlp.first_expert = e0
    shapes = plan.shapes()
    for name, t in list(model.state_dict(keep_vars=True).items()):
        if tuple(t.shape) == shapes[name]:
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        local = torch.empty(shapes[name], dtype=t.dtype, device="meta")
        if leaf in owner._parameters:
            owner._parameters[leaf] = nn.Parameter(local, requires_grad=False)
        else:
            owner._buffers[leaf] = local
    model.cache_config = dataclasses.replace(config, num_attention_heads=q1 - q0, num_key_value_heads=k1 - k0)
    model.parallel = parallel
