"""The attention block and RMSNorm on the Triton kernels; same parameters (and state_dict) as the reference.

TritonAttentionBlock: x + out(attention(rope(qkv(norm(x))))), with a TritonKVCache (full layers hold every
position, sliding layers a ring buffer of the window). Entry points:
  prefill(x [N, H], cos, sin, cu_seqlens, max_seqlen, cache, positions): packed variable-length prompts,
      each continuing after its cache.lengths[b] cached positions (chunked prefill);
  decode(x [M, H], cos, sin, cache, slots, active): one new token per row, row i continuing cache row slots[i]
      at position cache.lengths[slots[i]] (three launches: decode_qkv, decode_attention, linear);
  forward(x [B, T, H], cos, sin, cache): equal-length batch, the reference block's signature.
cos, sin [P, D/2] is the fp32 table for positions 0..P-1 (rope_table), computed once for the model.
None of them advances cache.lengths: the model does, once per step after the last layer (cache.advance).
"""
import torch

from ..kernels.attention import attention
from ..kernels.decode_attention import decode_attention
from ..kernels.decode_qkv import decode_qkv
from ..kernels.kv_cache_write import kv_cache_write
from ..kernels.linear import linear
from ..kernels.reference import rope_cos_sin, yarn_inv_freq
from ..kernels.rmsnorm import add_rmsnorm, rmsnorm
from ..kernels.rope import rope
from .config import GptOssConfig
from .kv_cache import TritonKVCache
from .reference import AttentionBlock, RMSNorm


def rope_table(config: GptOssConfig, n_positions: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n_positions, D/2] fp32 (YaRN, concentration included) for positions 0..n_positions-1."""
    inv_freq, concentration = yarn_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling_factor,
                                            config.rope_ntk_alpha, config.rope_ntk_beta,
                                            config.initial_context_length, config.rope_truncate)
    return rope_cos_sin(torch.arange(n_positions, device=device), inv_freq, concentration)


def prefill_positions(cu_seqlens: torch.Tensor, cache_seqlens: torch.Tensor | None, n_tokens: int) -> torch.Tensor:
    """Position [N] int32 of each packed token: start_b + its index in sequence b (start_b = 0 without a cache)."""
    tok = torch.arange(n_tokens, dtype=torch.int32, device=cu_seqlens.device)
    seq = torch.searchsorted(cu_seqlens[1:], tok, right=True)
    pos = tok - cu_seqlens[seq]
    if cache_seqlens is not None:
        pos += cache_seqlens[seq]
    return pos


class TritonRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm(x, self.scale, self.eps)

    def add_forward(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, norm(h)) with h = x + delta, in one pass: the residual add fused into the next norm."""
        return add_rmsnorm(x, delta, self.scale, self.eps)


class TritonAttentionBlock(AttentionBlock):
    def __init__(self, config: GptOssConfig, layer: int, dtype=torch.bfloat16, device=None):
        super().__init__(config, layer, dtype, device)
        self.norm = TritonRMSNorm(config.hidden_size, config.rms_norm_eps, device=device)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [N, H] -> views q [N, Hq, D], k, v [N, Hkv, D] into one qkv buffer (the kernels take the strides)."""
        qkv = self.qkv(self.norm(x))
        n, d = x.shape[0], self.head_dim
        q_dim, kv_dim = self.n_heads * d, self.n_kv_heads * d
        return (qkv[:, :q_dim].view(n, self.n_heads, d), qkv[:, q_dim:q_dim + kv_dim].view(n, self.n_kv_heads, d),
                qkv[:, q_dim + kv_dim:].view(n, self.n_kv_heads, d))

    def prefill(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, cache: TritonKVCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, H] packed prompts (cu_seqlens [B+1] int32) -> [N, H]. positions [N] int32 may be passed in
        (prefill_positions, the same for every layer); the chunk's k, v are appended to the cache."""
        q, k, v = self._qkv(x)
        lengths = cache.lengths[:cu_seqlens.numel() - 1] if cache is not None else None
        if positions is None:
            positions = prefill_positions(cu_seqlens, lengths, x.shape[0])
        rope(q, k, cos, sin, positions)
        if cache is None:
            o = attention(q, k, v, self.sinks, cu_seqlens, max_seqlen, self.sm_scale, self.sliding_window)
        else:
            k_cache, v_cache = cache.k[self.layer], cache.v[self.layer]
            o = attention(q, k, v, self.sinks, cu_seqlens, max_seqlen, self.sm_scale, self.sliding_window,
                          k_cache, v_cache, lengths)
            # After attention: the chunk's keys may overwrite ring slots its own queries still read.
            kv_cache_write(k, v, k_cache, v_cache, cu_seqlens, lengths, max_seqlen)
        return self.parallel.add_reduce(x, self.out(o.view(x.shape[0], -1)))

    def decode(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: TritonKVCache,
               slots: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """x [M, H]: row i is the new token of cache row slots[i] [M] int32, at position cache.lengths[slots[i]]
        -> x + out(attention) [M, H]; its k, v enter the cache where active[i] [M] int32 is nonzero. On a
        tensor-parallel rank other than the first the projection leaves out the residual and the out bias (rank 0
        adds them), and the ranks' shares are summed."""
        residual = self.parallel.residual(x) is not None
        M = x.shape[0]
        k_cache, v_cache = cache.k[self.layer], cache.v[self.layer]
        q = decode_qkv(x, self.qkv.weight, self.qkv.bias, self.norm.scale, self.norm.eps, cos, sin, k_cache,
                       v_cache, cache.lengths, slots, active)
        o = decode_attention(q, k_cache, v_cache, self.sinks, cache.lengths, self.sm_scale, self.sliding_window,
                             slots=slots)
        return self.parallel.all_reduce_(linear(o.view(M, -1), self.out.weight, self.out.bias if residual else None,
                                                x if residual else None))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: TritonKVCache | None = None) -> torch.Tensor:
        """x [B, T, H] -> [B, T, H]; every sequence continues at its cache.lengths[b] (0 without a cache).
        Unlike the reference's, cos/sin are indexed by absolute position; with no cache both read rows 0..T-1."""
        B, T, H = x.shape
        if cache is not None and T == 1:
            return self.decode(x.view(B, H), cos, sin, cache, cache.rows[:B], cache.rows_active[:B]).view(B, T, H)
        cu_seqlens = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=x.device)
        return self.prefill(x.reshape(B * T, H), cos, sin, cu_seqlens, T, cache).view(B, T, H)
