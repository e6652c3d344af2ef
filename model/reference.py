"""The reference gpt-oss model in plain torch, written from the spec; the oracle for every kernel.

Module and parameter names follow the original checkpoint layout, so that `state_dict()` keys are
exactly the tensor names of `original/model.safetensors` (`block.3.mlp.mlp1_weight.blocks`, ...).
MXFP4 expert weights stay packed; the forward pass dequantizes only the experts a token chose (and keeps them
when they are small: MXFP4Weight.expert).
"""
import torch
from torch import nn

from ..kernels.mxfp4 import mxfp4_dequantize
from ..kernels.reference import attention_ref, moe_ref, rmsnorm_ref, rope_cos_sin, rope_ref, yarn_inv_freq
from .config import GptOssConfig
from .parallel.group import SINGLE

DENSE_CACHE_BYTES = 64 << 20  # dequantized experts a reference MXFP4Weight keeps (see MXFP4Weight.expert)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-5, device=None):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(hidden_size, dtype=torch.float32, device=device))  # fp32, as spec'd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rmsnorm_ref(x, self.scale, self.eps)


class MXFP4Weight(nn.Module):
    """Packed expert weights: blocks [E, N, K/32, 16] uint8 and scales [E, N, K/32] uint8 (see kernels.mxfp4)."""

    def __init__(self, n_experts: int, out_features: int, in_features: int, device=None):
        super().__init__()
        groups = in_features // 32
        self.register_buffer("blocks", torch.zeros(n_experts, out_features, groups, 16, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.zeros(n_experts, out_features, groups, dtype=torch.uint8, device=device))
        self._dense, self._dense_key = {}, None

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        """Expert e dequantized to dtype [N, K]. A small stack (tests, tiny models: dequantizing dominates their
        CPU forward) keeps each one, until the packed tensors change (load_state_dict, .to); the real models'
        would not fit beside the packed weights, so theirs is dequantized each call."""
        if self.blocks.numel() * 2 * dtype.itemsize > DENSE_CACHE_BYTES:
            return mxfp4_dequantize(self.blocks[e], self.scales[e], dtype)
        key = (dtype, self.blocks.data_ptr(), self.blocks._version, self.scales.data_ptr(), self.scales._version)
        if key != self._dense_key:
            self._dense, self._dense_key = {}, key
        if e not in self._dense:
            self._dense[e] = mxfp4_dequantize(self.blocks[e], self.scales[e], dtype)
        return self._dense[e]


class KVCache:
    """Per-layer keys and values [B, max_len, Hkv, D]; row b holds `lengths[b]` positions.

    A plain forward over a batch needs every row at the same length (`length`); `slot(b)` is a
    one-row view for sequences that advance on their own (the engine's continuous batching).
    """

    def __init__(self, config: GptOssConfig, batch_size: int, max_len: int, dtype: torch.dtype, device=None):
        shape = (batch_size, max_len, config.num_key_value_heads, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.lengths = [0] * batch_size
        self.batch_size, self.max_len = batch_size, max_len

    @property
    def length(self) -> int:
        if len(set(self.lengths)) != 1:
            raise ValueError(f"cache rows hold different lengths {self.lengths}: run them one slot at a time")
        return self.lengths[0]

    @length.setter
    def length(self, value: int) -> None:
        self.lengths = [value] * self.batch_size

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0

    def slot(self, b: int) -> "KVCache":
        view = KVCache.__new__(KVCache)
        view.k, view.v = [t[b:b + 1] for t in self.k], [t[b:b + 1] for t in self.v]
        view.lengths, view.batch_size, view.max_len = [self.lengths[b]], 1, self.max_len
        return view


class AttentionBlock(nn.Module):
    parallel = SINGLE  # a tensor-parallel rank's heads: the out projection's partial sums are all-reduced

    def __init__(self, config: GptOssConfig, layer: int, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.sliding_window = config.sliding_window if config.is_sliding(layer) else 0
        self.sm_scale = config.head_dim ** -0.5
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device=device)
        self.qkv = nn.Linear(config.hidden_size, config.qkv_dim, dtype=dtype, device=device)
        self.sinks = nn.Parameter(torch.zeros(config.num_attention_heads, dtype=torch.float32, device=device))
        self.out = nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, H] at positions start..start+T-1 (start = cache.length, else 0); cos/sin [T, D/2]."""
        B, T, _ = x.shape
        qkv = self.qkv(self.norm(x))
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        q = qkv[..., :q_dim].view(B, T, self.n_heads, self.head_dim)
        k = qkv[..., q_dim:q_dim + kv_dim].view(B, T, self.n_kv_heads, self.head_dim)
        v = qkv[..., q_dim + kv_dim:].view(B, T, self.n_kv_heads, self.head_dim)
        q, k = rope_ref(q, cos, sin), rope_ref(k, cos, sin)
        start = 0
        if cache is not None:
            start = cache.length
            cache.k[self.layer][:, start:start + T] = k
            cache.v[self.layer][:, start:start + T] = v
            k, v = cache.k[self.layer][:, :start + T], cache.v[self.layer][:, :start + T]
        o = attention_ref(q, k, v, self.sinks, sm_scale=self.sm_scale, sliding_window=self.sliding_window, q_start=start)
        return self.parallel.add_reduce(x, self.out(o.reshape(B, T, -1)))


class MLPBlock(nn.Module):
    parallel = SINGLE  # an expert-parallel rank's experts: the combine is all-reduced
    first_expert = 0  # the router's index of this module's first expert

    def __init__(self, config: GptOssConfig, dtype=torch.bfloat16, device=None):
        super().__init__()
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.experts_per_token, self.swiglu_limit = config.experts_per_token, config.swiglu_limit
        self.norm = RMSNorm(H, config.rms_norm_eps, device=device)
        self.gate = nn.Linear(H, E, dtype=dtype, device=device)
        self.mlp1_weight = MXFP4Weight(E, 2 * I, H, device=device)
        self.mlp1_bias = nn.Parameter(torch.zeros(E, 2 * I, dtype=dtype, device=device))
        self.mlp2_weight = MXFP4Weight(E, H, I, device=device)
        self.mlp2_bias = nn.Parameter(torch.zeros(E, H, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(x).flatten(0, -2)
        y = moe_ref(t, self.gate.weight, self.gate.bias, self.mlp1_weight.blocks, self.mlp1_weight.scales,
                    self.mlp1_bias, self.mlp2_weight.blocks, self.mlp2_weight.scales, self.mlp2_bias,
                    experts_per_token=self.experts_per_token, swiglu_limit=self.swiglu_limit,
                    first_expert=self.first_expert,
                    expert_weights=lambda e, dtype: (self.mlp1_weight.expert(e, dtype), self.mlp2_weight.expert(e, dtype)))
        return self.parallel.add_reduce(x, y.view_as(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: GptOssConfig, layer: int, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.attn = AttentionBlock(config, layer, dtype, device)
        self.mlp = MLPBlock(config, dtype, device)

    def forward(self, x, cos, sin, cache=None):
        return self.mlp(self.attn(x, cos, sin, cache))


class Transformer(nn.Module):
    """The whole network: embedding -> blocks -> norm -> unembedding. forward(tokens [B, T]) -> logits [B, T, V]."""

    block_class = TransformerBlock
    parallel = SINGLE

    def __init__(self, config: GptOssConfig, dtype=torch.bfloat16, device=None):
        super().__init__()
        self.config = config
        self.cache_config = config  # the heads this process holds (fewer on a tensor-parallel rank)
        self.dtype = dtype
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.block = nn.ModuleList(self.block_class(config, i, dtype, device) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device=device)
        self.unembedding = nn.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype, device=device)
        inv_freq, self.rope_concentration = yarn_inv_freq(
            config.head_dim, config.rope_theta, config.rope_scaling_factor, config.rope_ntk_alpha,
            config.rope_ntk_beta, config.initial_context_length, config.rope_truncate)
        self.register_buffer("rope_inv_freq", inv_freq.to(device) if device != "meta" else inv_freq, persistent=False)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        max_len = max_len or self.config.max_context
        if max_len > self.config.max_context:
            raise ValueError(f"cache length {max_len} exceeds the model's context {self.config.max_context}")
        return KVCache(self.cache_config, batch_size, max_len, self.dtype, self.embedding.weight.device)

    def check_forward(self, tokens: torch.Tensor, cache=None) -> int:
        """Validate a public forward's input; returns the position the tokens start at."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {list(tokens.shape)}")
        B, T = tokens.shape
        if cache is not None and cache.batch_size != B:
            raise ValueError(f"tokens have batch {B} but the cache {cache.batch_size} rows")
        start = cache.length if cache is not None else 0
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"{start} cached + {T} new positions exceed the cache length {cache.max_len}")
        if start + T > self.config.max_context:
            raise ValueError(f"{start + T} positions exceed the model's context {self.config.max_context}")
        if T and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return start

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """tokens [B, T] int64 -> logits [B, T, V]. With a cache, tokens continue at position cache.length."""
        start = self.check_forward(tokens, cache)
        T = tokens.shape[1]
        positions = torch.arange(start, start + T, device=tokens.device)
        cos, sin = rope_cos_sin(positions, self.rope_inv_freq, self.rope_concentration)
        x = self.embedding(tokens)
        for block in self.block:
            x = block(x, cos, sin, cache)
        if cache is not None:
            cache.length = start + T
        return self.unembedding(self.norm(x))

    def forward_packed(self, tokens: torch.Tensor, n_new: list[int], cache: KVCache) -> torch.Tensor:
        """Each cache row b takes its next n_new[b] tokens (0: none) from the packed tokens [sum(n_new)].

        Returns the logits of each row's last new token [B, V] (rows with no new token: zeros).
        The engine's one entry point: prefill of new requests and decode of running ones in any mix.
        """
        if len(n_new) != cache.batch_size or sum(n_new) != tokens.numel():
            raise ValueError(f"n_new {n_new} must have one entry per cache row ({cache.batch_size}) and sum to "
                             f"the {tokens.numel()} packed tokens")
        out = torch.zeros(cache.batch_size, self.config.vocab_size, dtype=self.dtype, device=tokens.device)
        offset = 0
        for b, n in enumerate(n_new):
            if n:
                view = cache.slot(b)
                out[b] = self.forward(tokens[offset:offset + n].view(1, n), view)[0, -1]
                cache.lengths[b] = view.lengths[0]
                offset += n
        return out
