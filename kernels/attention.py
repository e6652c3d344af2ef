"""Prefill attention: causal GQA flash attention with sinks, full or banded (sliding window), variable-length.

For each sequence b (its new tokens packed at rows cu_seqlens[b]..cu_seqlens[b+1]-1), query token t sits at
position p = start_b + t, where start_b = cache_seqlens[b] positions are already in the KV cache (chunked
prefill; 0 without a cache). Key position s is visible from p iff s <= p and (window == 0 or p - s < window);
keys s < start_b come from the cache (slot s % L), keys s >= start_b from the new k, v. With sinks:

    o[p, h] = sum_s softmax([q·k_s * sm_scale for visible s] + [sink[h]])_s * v_s        (sink column dropped)

Shapes: q [N, Hq, D], k, v [N, Hkv, D] (N = cu_seqlens[-1]; any token stride, heads and dims contiguous,
so views into a fused qkv buffer work); sinks [Hq] (any float dtype); k_cache, v_cache [B, L, Hkv, D] with
cache_seqlens [B] int32; out [N, Hq, D] in q.dtype. Query head h reads KV head h // (Hq / Hkv).

One program = one tile of BLOCK_T consecutive tokens x the G = Hq / Hkv heads of one KV head (rows token-
major, G padded to a power of two), so each K/V tile is loaded once for the whole group. Online softmax in
fp32 (base 2), the sink folded in as the running max's and normaliser's initial value. Key blocks wholly
outside the window are never visited: the loops start at the window's first key, so sliding layers cost
O(T * window). Blocks visible to every row of the tile run without a mask. Programs run in reverse order of
query block so the longest (last) blocks of a causal sequence start first.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton

_LOG2E = 1.4426950408889634


def _configs():
    """Configs that compile for sm_90 without spilling, each with at least 3 stages so the key loop keeps the
    next blocks' copies in flight (tests/kernels/test_compile_targets.py checks)."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bm, bn, w, s in ((128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 4, 4), (64, 32, 4, 3))]


@triton.jit
def _attend_block(acc, m_i, l_i, q, k, v, valid, qk_scale, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        qk = tl.where(valid, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def _attend_new_masked(acc, m_i, l_i, q, k_base, v_base, k_tile, v_tile, s, start, T, q_pos, window, qk_scale,
                       SLIDING: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """A block of the chunk's own keys at positions s that needs the causal (and window) mask. The scalar
    bases and 32-bit tiles stay apart until the load (a tile of 64-bit pointers held longer spills)."""
    is_new = s - start < T
    k = tl.load(k_base + k_tile, mask=is_new[:, None], other=0.0)
    v = tl.load(v_base + v_tile, mask=is_new[:, None], other=0.0)
    if DOT_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    valid = s[None, :] <= q_pos[:, None]
    if SLIDING:
        valid = valid & (q_pos[:, None] - s[None, :] < window)
    return _attend_block(acc, m_i, l_i, q, k, v, valid, qk_scale, True, PRECISION)


@triton.autotune(configs=_configs(), key=["GP", "D", "SLIDING", "HAS_CACHE"])
@triton.jit
def _attention_kernel(Q, K, V, KC, VC, SINKS, O, CU_SEQLENS, CACHE_SEQLENS,
                      stride_qt, stride_kt, stride_vt, stride_ot, stride_kcb, stride_kcs, stride_vcb, stride_vcs,
                      cache_len, qk_scale, window,
                      HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                      SLIDING: tl.constexpr, HAS_CACHE: tl.constexpr, DOT_F32: tl.constexpr,
                      PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    BLOCK_T: tl.constexpr = BLOCK_M // GP
    pid_t = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    bos = tl.load(CU_SEQLENS + b).to(tl.int64)
    T = (tl.load(CU_SEQLENS + b + 1) - bos).to(tl.int32)
    t0 = pid_t * BLOCK_T
    if t0 >= T:
        return
    start = 0
    if HAS_CACHE:
        start = tl.load(CACHE_SEQLENS + b)

    r = tl.arange(0, BLOCK_M)
    t = t0 + r // GP
    g = r % GP
    row_ok = (t < T) & (g < G)
    h = kvh * G + g
    q_pos = start + t
    d = tl.arange(0, D)
    q_tile = (r // GP)[:, None] * stride_qt + (h * D)[:, None] + d[None, :]
    q = tl.load(Q + (bos + t0) * stride_qt + q_tile, mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)

    sink = tl.load(SINKS + h, mask=g < G, other=0.0).to(tl.float32) * 1.4426950408889634  # log2(e)
    # A finite running max keeps exp2(m_old - m_new) from (-inf) - (-inf) = nan when a sink is -inf.
    m_i = tl.maximum(sink, -1e30)
    l_i = tl.exp2(sink - m_i)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)

    p0 = start + t0
    p1 = start + tl.minimum(t0 + BLOCK_T, T) - 1
    lo = 0
    if SLIDING:
        lo = tl.maximum(p0 - window + 1, 0)
    n = tl.arange(0, BLOCK_N)

    # Pointer tiles: a 64-bit scalar base plus 32-bit offsets (a [BLOCK_N, D] tile of 64-bit offsets costs
    # registers enough to spill); in-tile offsets stay below 2^31 (BLOCK_N rows, or L slots, of Hkv * D).
    if HAS_CACHE:
        kc_base = KC + b.to(tl.int64) * stride_kcb
        vc_base = VC + b.to(tl.int64) * stride_vcb
        for s0 in range(lo, start, BLOCK_N):
            s = s0 + n
            in_cache = s < start
            slot = s % cache_len
            k = tl.load(kc_base + slot[:, None] * stride_kcs + kvh * D + d[None, :], mask=in_cache[:, None],
                        other=0.0)
            v = tl.load(vc_base + slot[:, None] * stride_vcs + kvh * D + d[None, :], mask=in_cache[:, None],
                        other=0.0)
            if DOT_F32:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            valid = in_cache[None, :]
            if SLIDING:
                valid = valid & (q_pos[:, None] - s[None, :] < window)
            acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k, v, valid, qk_scale, True, PRECISION)

    # New keys s in [first, p1], read from rows bos + s - start. Every row of the tile sees [clear_lo, p0].
    first = tl.maximum(lo, start)
    clear_lo = first
    if SLIDING:
        clear_lo = tl.maximum(first, p1 - window + 1)
    k_tile = n[:, None] * stride_kt + kvh * D + d[None, :]
    v_tile = n[:, None] * stride_vt + kvh * D + d[None, :]
    # Masked blocks up to clear_lo (the window's lower edge), then unmasked ones, then masked up to p1.
    for s0 in range(first, clear_lo, BLOCK_N):
        acc, m_i, l_i = _attend_new_masked(acc, m_i, l_i, q, K + (bos + s0 - start) * stride_kt,
                                           V + (bos + s0 - start) * stride_vt, k_tile, v_tile, s0 + n, start, T,
                                           q_pos, window, qk_scale, SLIDING, DOT_F32, PRECISION)
    clear_start = first + tl.cdiv(clear_lo - first, BLOCK_N) * BLOCK_N
    n_clear = tl.maximum(p0 + 1 - clear_start, 0) // BLOCK_N
    for i in range(0, n_clear):
        row0 = bos + clear_start + i * BLOCK_N - start
        k = tl.load(K + row0 * stride_kt + k_tile)
        v = tl.load(V + row0 * stride_vt + v_tile)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        acc, m_i, l_i = _attend_block(acc, m_i, l_i, q, k, v, row_ok[:, None], qk_scale, False, PRECISION)
    for s0 in range(clear_start + n_clear * BLOCK_N, p1 + 1, BLOCK_N):
        acc, m_i, l_i = _attend_new_masked(acc, m_i, l_i, q, K + (bos + s0 - start) * stride_kt,
                                           V + (bos + s0 - start) * stride_vt, k_tile, v_tile, s0 + n, start, T,
                                           q_pos, window, qk_scale, SLIDING, DOT_F32, PRECISION)

    o = acc / l_i[:, None]
    o_tile = (r // GP)[:, None] * stride_ot + (h * D)[:, None] + d[None, :]
    tl.store(O + (bos + t0) * stride_ot + o_tile, o.to(O.dtype.element_ty), mask=row_ok[:, None])


def _check_heads(name: str, x: torch.Tensor, n_tokens: int | None = None) -> None:
    if x.dim() != 3:
        raise ValueError(f"attention: {name} must be [N, heads, D], got shape {list(x.shape)}")
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        raise ValueError(f"attention: {name} must have contiguous heads and dims (strides [*, {x.shape[2]}, 1]), "
                         f"got strides {list(x.stride())}")
    if n_tokens is not None and x.shape[0] != n_tokens:
        raise ValueError(f"attention: {name} has {x.shape[0]} tokens, q has {n_tokens}")


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands (fp32 activations, or any in the interpreter) multiply in full fp32, not tf32."""
    return "ieee" if dtype == torch.float32 or interpreting() else "tf32"


def check_gqa(op: str, q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> None:
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"{op}: q, k, v must be bf16, fp16 or fp32, got {dtype}")
    if kv_heads == 0 or q_heads % kv_heads:
        raise ValueError(f"{op}: query heads {q_heads} must be a multiple of KV heads {kv_heads}")
    if q_heads // kv_heads > 64:
        raise ValueError(f"{op}: GQA group {q_heads // kv_heads} exceeds the supported 64")
    if head_dim not in (16, 32, 64, 128, 256):
        raise ValueError(f"{op}: head dim {head_dim} must be a power of two in [16, 256]")


def check_cache(op: str, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: int, kv_heads: int, head_dim: int,
                dtype: torch.dtype, device: torch.device, sliding_window: int) -> None:
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or c.shape[0] < batch or c.shape[2] != kv_heads or c.shape[3] != head_dim:
            raise ValueError(f"{op}: {name} must be [>={batch}, L, {kv_heads}, {head_dim}], got {list(c.shape)}")
        if c.stride(3) != 1 or c.stride(2) != head_dim:
            raise ValueError(f"{op}: {name} must have contiguous heads and dims, got strides {list(c.stride())}")
        if c.dtype != dtype or c.device != device:
            raise ValueError(f"{op}: {name} is {c.dtype} on {c.device}, q is {dtype} on {device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"{op}: k_cache {list(k_cache.shape)} and v_cache {list(v_cache.shape)} differ")
    if k_cache.shape[1] == 0 or (sliding_window and k_cache.shape[1] < sliding_window):
        raise ValueError(f"{op}: cache length {k_cache.shape[1]} must be >= the sliding window {sliding_window} "
                         "(a ring buffer holds the whole window) and > 0")


@torch.library.triton_op("gpt_oss_triton::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, cu_seqlens: torch.Tensor,
              max_seqlen: int, sm_scale: float, sliding_window: int = 0,
              k_cache: Optional[torch.Tensor] = None, v_cache: Optional[torch.Tensor] = None,
              cache_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Packed variable-length prefill (see the module docstring). max_seqlen >= every cu_seqlens difference.

    q [N, Hq, D], k, v [N, Hkv, D], sinks [Hq], cu_seqlens [B+1] int32 -> out [N, Hq, D] in q.dtype.
    With k_cache, v_cache [B, L, Hkv, D] and cache_seqlens [B] int32, sequence b continues after its
    cache_seqlens[b] cached positions (slot = position % L: L >= sliding_window makes the cache a ring).
    """
    _check_heads("q", q)
    N, Hq, D = q.shape
    _check_heads("k", k, N)
    _check_heads("v", v, N)
    Hkv = k.shape[1]
    check_gqa("attention", Hq, Hkv, D, q.dtype)
    if v.shape != k.shape or k.shape[2] != D or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"attention: k {list(k.shape)} {k.dtype} and v {list(v.shape)} {v.dtype} must both be "
                         f"[N, Hkv, {D}] in q's dtype {q.dtype}")
    if sinks.shape != (Hq,) or not sinks.is_floating_point():
        raise ValueError(f"attention: sinks must be a float [Hq] = [{Hq}], got {list(sinks.shape)} {sinks.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise ValueError(f"attention: cu_seqlens must be int32 [B+1] with B >= 1, got {list(cu_seqlens.shape)} "
                         f"{cu_seqlens.dtype}")
    if sliding_window < 0:
        raise ValueError(f"attention: sliding_window must be >= 0, got {sliding_window}")
    for name, x in (("k", k), ("v", v), ("sinks", sinks), ("cu_seqlens", cu_seqlens)):
        if x.device != q.device:
            raise ValueError(f"attention: {name} on {x.device}, q on {q.device}")
    B = cu_seqlens.numel() - 1
    has_cache = k_cache is not None
    if has_cache != (v_cache is not None) or has_cache != (cache_seqlens is not None):
        raise ValueError("attention: pass k_cache, v_cache and cache_seqlens together, or none of them")
    if has_cache:
        check_cache("attention", k_cache, v_cache, B, Hkv, D, q.dtype, q.device, sliding_window)
        if cache_seqlens.shape != (B,) or cache_seqlens.dtype != torch.int32 or cache_seqlens.device != q.device:
            raise ValueError(f"attention: cache_seqlens must be int32 [B] = [{B}] on {q.device}, got "
                             f"{list(cache_seqlens.shape)} {cache_seqlens.dtype} on {cache_seqlens.device}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if N == 0 or max_seqlen <= 0:
        return out
    if N * max(Hq, Hkv) * D >= 2**62:
        raise ValueError(f"attention: {N} tokens x {Hq} heads x {D} overflow int64 offsets")
    G = Hq // Hkv
    GP = triton.next_power_of_2(G)
    kc, vc = (k_cache, v_cache) if has_cache else (k, v)

    def grid(meta):
        return (triton.cdiv(max_seqlen, meta["BLOCK_M"] // GP), B * Hkv)

    wrap_triton(_attention_kernel)[grid](
        q, k, v, kc, vc, sinks, out, cu_seqlens, cache_seqlens if has_cache else cu_seqlens,
        q.stride(0), k.stride(0), v.stride(0), out.stride(0),
        kc.stride(0), kc.stride(1) if has_cache else 0, vc.stride(0), vc.stride(1) if has_cache else 0,
        k_cache.shape[1] if has_cache else 1, sm_scale * _LOG2E, sliding_window,
        HKV=Hkv, G=G, GP=GP, D=D, SLIDING=sliding_window > 0, HAS_CACHE=has_cache, DOT_F32=interpreting(),
        PRECISION=dot_precision(q.dtype))
    return out
