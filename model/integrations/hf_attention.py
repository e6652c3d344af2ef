"""Attention with sinks and the sliding window on our kernels, as an implementation transformers' attention
dispatch selects (`AttentionInterface`), with the mask function that goes with it (`AttentionMaskInterface`).

transformers hands an attention implementation q [B, Hq, T, D] (RoPE applied) and the keys and values its cache
returned, k, v [B, Hkv, S, D]: for its dynamic caches the S consecutive positions that end at the last query (a
sliding layer keeps the last window - 1 before the T new ones). Visibility depends only on the distance between
positions, so positions are counted from the first returned key: query t sits at S - T + t, and the returned keys
are a cache of L = S slots (slot = position) that every kernel reads as it reads ours. T = 1: flash-decoding
(decode_attention); T > 1: the banded/full prefill kernel, its first S - T keys read from that cache.

What it cannot take is refused when the masks are made, once per forward: padding (an attention mask with zeros;
the kernels take no mask) and caches whose keys are not those consecutive positions (a static cache's
preallocated slots).
"""
import torch

from ...kernels.attention import attention
from ...kernels.decode_attention import decode_attention

NAME = "gpt_oss_triton"


def triton_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, s_aux: torch.Tensor | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """query [B, Hq, T, D], key, value [B, Hkv, S, D] -> (out [B, T, Hq, D], None: no attention weights)."""
    if attention_mask is not None:
        raise ValueError(f"attention '{NAME}': got an explicit attention mask of shape {list(attention_mask.shape)}; "
                         "its kernels take causal (and sliding-window) attention over unpadded rows only")
    if dropout:
        raise ValueError(f"attention '{NAME}': dropout {dropout} is not supported (inference kernels)")
    if s_aux is None:
        raise ValueError(f"attention '{NAME}': needs the attention sinks (s_aux), as gpt-oss passes them")
    B, Hq, T, D = query.shape
    S = key.shape[2]
    scale = D ** -0.5 if scaling is None else scaling
    # With S <= window no key is a window away from any query, so no band (and the kernels want L >= window).
    window = sliding_window if sliding_window and S > sliding_window else 0
    k, v = key.transpose(1, 2).contiguous(), value.transpose(1, 2).contiguous()  # [B, S, Hkv, D]
    if T == 1:
        positions = torch.full((B,), S - 1, dtype=torch.int32, device=query.device)
        out = decode_attention(query.reshape(B, Hq, D).contiguous(), k, v, s_aux, positions, scale, window)
        return out.view(B, 1, Hq, D), None
    q = query.transpose(1, 2).contiguous().view(B * T, Hq, D)
    cu_seqlens = torch.arange(0, (B + 1) * T, T, dtype=torch.int32, device=query.device)
    new_k, new_v = (t[:, S - T:].reshape(B * T, *t.shape[2:]) for t in (k, v))
    if S == T:
        out = attention(q, new_k, new_v, s_aux, cu_seqlens, T, scale, window)
    else:
        cached = torch.full((B,), S - T, dtype=torch.int32, device=query.device)
        out = attention(q, new_k, new_v, s_aux, cu_seqlens, T, scale, window, k, v, cached)
    return out.view(B, T, Hq, D), None


def triton_attention_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                          mask_function=None, attention_mask: torch.Tensor | None = None, **kwargs) -> None:
    """No mask (the kernels derive causality and the window from positions), after refusing what they cannot
    take. attention_mask: the 2D padding mask [B, past + T] bool, or None."""
    if not isinstance(q_offset, int) or kv_offset + kv_length != q_offset + q_length:
        raise ValueError(f"attention '{NAME}': the cache's keys must be the consecutive positions up to the last "
                         f"query (a DynamicCache); got {kv_length} keys from position {kv_offset} for queries at "
                         f"{q_offset}..: use a DynamicCache (the default of generate) or another attention")
    _check_pattern(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, kwargs.get("config"),
                   kwargs.get("device") or "cpu")
    if attention_mask is not None and not bool(attention_mask[:, -kv_length:].all()):
        raise ValueError(f"attention '{NAME}': the attention mask pads some rows; the kernels take unpadded rows "
                         "of equal length only (pass one prompt, or prompts of equal length without padding)")
    return None


def _check_pattern(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, config, device) -> None:
    """The mask transformers asks for is the causal or the sliding-window one: checked on the first and last query
    rows of each sequence (packed sequences or a bidirectional overlay would differ there)."""
    if mask_function is None:
        return
    rows = torch.tensor([q_offset, q_offset + q_length - 1], device=device)[None, :, None]
    cols = torch.arange(kv_offset, kv_offset + kv_length, device=device)[None, None, :]
    batch = torch.arange(batch_size, device=device)[:, None, None]
    got = torch.as_tensor(mask_function(batch, torch.zeros_like(batch), rows, cols)).expand(batch_size, 2, kv_length)
    causal = cols <= rows
    window = getattr(config, "sliding_window", None)
    allowed = [causal] + ([causal & (rows - cols < window)] if window else [])
    if not any(bool((got == want).all()) for want in allowed):
        raise ValueError(f"attention '{NAME}': the mask asked for is neither causal nor sliding-window causal "
                         "(packed sequences, a bidirectional or a custom mask function); its kernels take only those")


def register() -> str:
    """Register the attention and its mask function under NAME with transformers (idempotent); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    AttentionInterface.register(NAME, triton_attention)
    AttentionMaskInterface.register(NAME, triton_attention_mask)
    return NAME
