"""The Triton backend: the whole gpt-oss graph on our kernels, with the reference's parameters and state_dict.

`TritonGptOss` is `GptOss` with Triton blocks (attention: rmsnorm, rope + cache write, banded/full flash
attention for prefill; at decode decode_qkv, flash-decoding and the out-projection with bias and residual in
its epilogue; MoE: fused routing, MXFP4 grouped GEMMs with swiglu and the weighted combine + residual in their
epilogues), a Triton final norm (at decode the unembedding's prologue), the KV cache of `TritonKVCache` (sliding
layers keep a ring of the window) and a RoPE table computed once. `forward_packed` serves the engine: a step whose
rows each take at most one token runs `decode_step` on those rows (no host sync, shapes fixed by the row count:
what `DecodeGraph` captures in a CUDA graph per bucket of rows); any other step runs packed variable-length
prefill.
"""
import torch
from torch import nn

from ..kernels.linear import linear
from .attention import TritonAttentionBlock, TritonRMSNorm, prefill_positions, rope_table
from .gpt_oss import GptOss, OptionError
from .kv_cache import TritonKVCache
from .moe import TritonMLPBlock


class TritonTransformerBlock(nn.Module):
    def __init__(self, config, layer: int, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.attn = TritonAttentionBlock(config, layer, dtype, device)
        self.mlp = TritonMLPBlock(config, dtype, device)
        self.mlp.norm = TritonRMSNorm(config.hidden_size, config.rms_norm_eps, device=device)

    def forward(self, x, cos, sin, cache=None):
        return self.mlp(self.attn(x, cos, sin, cache))


class TritonGptOss(GptOss):
    block_class = TritonTransformerBlock
    backend = "triton"

    def __init__(self, config, dtype=torch.bfloat16, device=None):
        if dtype != torch.bfloat16:
            raise OptionError(f"{{backend=triton}} runs bf16 activations (its MoE kernels' contract), got {dtype}; "
                              "use {backend=torch} for fp32")
        super().__init__(config, dtype, device)
        self.norm = TritonRMSNorm(config.hidden_size, config.rms_norm_eps, device=device)
        self._rope = None

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [max_context, D/2] fp32, computed once on the model's device."""
        device = self.embedding.weight.device
        if self._rope is None or self._rope[0].device != device:
            self._rope = rope_table(self.config, self.config.max_context, device)
        return self._rope

    def new_cache(self, batch_size: int, max_len: int | None = None) -> TritonKVCache:
        max_len = max_len or self.config.max_context
        if max_len > self.config.max_context:
            raise ValueError(f"cache length {max_len} exceeds the model's context {self.config.max_context}")
        return TritonKVCache(self.cache_config, batch_size, max_len, self.dtype, self.embedding.weight.device)

    def forward(self, tokens: torch.Tensor, cache: TritonKVCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, V]; with a cache, every row continues at its (common) length."""
        self.check_forward(tokens, cache)
        cos, sin = self.rope_tables()
        x = self.embedding(tokens)
        for block in self.block:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.unembedding(self.norm(x))

    def decode_step(self, tokens: torch.Tensor, active: torch.Tensor, cache: TritonKVCache,
                    slots: torch.Tensor | None = None) -> torch.Tensor:
        """One new token per row: tokens [M] continue cache rows slots [M] int32 (default: row i is cache row i)
        at positions cache.lengths[slots] -> logits [M, V] fp32; then cache.lengths[slots[i]] += active[i] [M]
        int32 (1: the row takes its token; 0: it stays where it is and its k, v are not stored).

        Nothing asks the host for a value and the launch shapes depend on M alone: this is the body a CUDA graph
        captures (`DecodeGraph`, one graph per bucket of M). A row with active 0 is computed but leaves no trace:
        a bucket's padding rows copy a real row (same slot and token), so they read no other KV and route to no
        other experts. Per layer: decode_qkv, decode_attention and linear (the attention block), then the MoE
        block; the final norm is the unembedding's prologue.
        """
        if slots is None:
            slots = cache.rows[:tokens.shape[0]]
        cos, sin = self.rope_tables()
        x = self.embedding(tokens)
        for block in self.block:
            x = block.mlp(block.attn.decode(x, cos, sin, cache, slots, active))
        logits = self.parallel.all_gather_last(linear(x, self.unembedding.weight, norm_scale=self.norm.scale,
                                                      eps=self.norm.eps, out_dtype=torch.float32))
        cache.lengths.index_add_(0, slots, active)
        return logits

    def forward_packed(self, tokens: torch.Tensor, n_new: list[int], cache: TritonKVCache) -> torch.Tensor:
        """Row b of the cache takes its next n_new[b] tokens from the packed tokens [sum(n_new)] -> logits [B, V]
        of each row's last new token (rows with none: meaningless values, to be ignored)."""
        B = cache.batch_size
        if len(n_new) != B or sum(n_new) != tokens.numel():
            raise ValueError(f"n_new {n_new} must have one entry per cache row ({B}) and sum to the "
                             f"{tokens.numel()} packed tokens")
        device = tokens.device
        if max(n_new) <= 1:  # decode only: the rows that take a token, compacted (slot ids built on the host)
            slots = torch.tensor([b for b, n in enumerate(n_new) if n], dtype=torch.int32, device=device)
            logits = self.decode_step(tokens, torch.ones_like(slots), cache, slots)
            return torch.zeros(B, logits.shape[1], dtype=logits.dtype, device=device).index_copy_(0, slots.long(),
                                                                                                  logits)
        counts = torch.tensor(n_new, dtype=torch.int32, device=device)
        cos, sin = self.rope_tables()
        cu_seqlens = torch.zeros(B + 1, dtype=torch.int32, device=device)
        cu_seqlens[1:] = torch.cumsum(counts, 0)
        positions = prefill_positions(cu_seqlens, cache.lengths, tokens.numel())
        x = self.embedding(tokens)
        for block in self.block:
            x = block.mlp(block.attn.prefill(x, cos, sin, cu_seqlens, max(n_new), cache, positions))
        last = (cu_seqlens[1:] - 1).clamp(min=0).long()
        logits = self.unembedding(self.norm(x[last]))
        cache.advance(counts)
        return logits
