"""Append a packed prefill chunk's keys and values to the KV cache (full cache or ring buffer).

Sequence b's new tokens (packed rows cu_seqlens[b]..cu_seqlens[b+1]-1, T_b of them) take positions
start_b .. start_b + T_b - 1 with start_b = cache_seqlens[b], and slot = position % L. Of a chunk longer
than L (a ring buffer of a sliding layer) only the last L tokens are stored, so no two tokens race for
a slot. A full cache must have L > every position written (the caller's contract: nothing wraps there).

Shapes: k, v [N, Hkv, D] (any token stride, heads and dims contiguous), k_cache, v_cache [>=B, L, Hkv, D],
cu_seqlens [B+1] int32, cache_seqlens [B] int32 (not advanced here: the model advances it once per step).
"""
import torch
import triton
import triton.language as tl

from ._interpreter import wrap_triton


@triton.jit
def _kv_cache_write_kernel(K, V, KC, VC, CU_SEQLENS, CACHE_SEQLENS, stride_kt, stride_vt, stride_kcb, stride_kcs,
                           stride_vcb, stride_vcs, cache_len, HD: tl.constexpr, HD_P: tl.constexpr,
                           BLOCK_T: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    bos = tl.load(CU_SEQLENS + b).to(tl.int64)
    T = tl.load(CU_SEQLENS + b + 1) - bos
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    keep = (t < T) & (t >= T - cache_len)
    slot = ((tl.load(CACHE_SEQLENS + b) + t) % cache_len).to(tl.int64)
    c = tl.arange(0, HD_P)
    mask = keep[:, None] & (c < HD)[None, :]
    row = bos + t
    k = tl.load(K + row[:, None] * stride_kt + c[None, :], mask=mask)
    v = tl.load(V + row[:, None] * stride_vt + c[None, :], mask=mask)
    tl.store(KC + b * stride_kcb + slot[:, None] * stride_kcs + c[None, :], k, mask=mask)
    tl.store(VC + b * stride_vcb + slot[:, None] * stride_vcs + c[None, :], v, mask=mask)


@torch.library.triton_op("gpt_oss_triton::kv_cache_write", mutates_args=("k_cache", "v_cache"))
def kv_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   cu_seqlens: torch.Tensor, cache_seqlens: torch.Tensor, max_seqlen: int) -> None:
    """Store packed k, v [N, Hkv, D] at the cache slots of their positions (see the module docstring)."""
    for name, x in (("k", k), ("v", v)):
        if x.dim() != 3 or x.stride(2) != 1 or x.stride(1) != x.shape[2]:
            raise ValueError(f"kv_cache_write: {name} must be [N, Hkv, D] with contiguous heads and dims, got "
                             f"shape {list(x.shape)} strides {list(x.stride())}")
    if v.shape != k.shape or v.dtype != k.dtype:
        raise ValueError(f"kv_cache_write: v {list(v.shape)} {v.dtype} must match k {list(k.shape)} {k.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"kv_cache_write: cu_seqlens must be int32 [B+1], got {list(cu_seqlens.shape)} "
                         f"{cu_seqlens.dtype}")
    B = cu_seqlens.numel() - 1
    if cache_seqlens.shape != (B,) or cache_seqlens.dtype != torch.int32:
        raise ValueError(f"kv_cache_write: cache_seqlens must be int32 [B] = [{B}], got "
                         f"{list(cache_seqlens.shape)} {cache_seqlens.dtype}")
    N, Hkv, D = k.shape
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or c.shape[0] < B or c.shape[1] == 0 or c.shape[2:] != k.shape[1:]:
            raise ValueError(f"kv_cache_write: {name} must be [>={B}, L>0, {Hkv}, {D}], got {list(c.shape)}")
        if c.stride(3) != 1 or c.stride(2) != D or c.dtype != k.dtype:
            raise ValueError(f"kv_cache_write: {name} must be {k.dtype} with contiguous heads and dims, got "
                             f"{c.dtype} strides {list(c.stride())}")
    for name, x in (("v", v), ("k_cache", k_cache), ("v_cache", v_cache), ("cu_seqlens", cu_seqlens),
                    ("cache_seqlens", cache_seqlens)):
        if x.device != k.device:
            raise ValueError(f"kv_cache_write: {name} on {x.device}, k on {k.device}")
    if N == 0 or max_seqlen <= 0:
        return
    block_t = 16
    wrap_triton(_kv_cache_write_kernel)[(triton.cdiv(max_seqlen, block_t), B)](
        k, v, k_cache, v_cache, cu_seqlens, cache_seqlens, k.stride(0), v.stride(0), k_cache.stride(0),
        k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), k_cache.shape[1],
        HD=Hkv * D, HD_P=triton.next_power_of_2(Hkv * D), BLOCK_T=block_t, num_warps=4)
