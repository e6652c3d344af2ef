"""Rotary position embedding (half-split, YaRN table), in place on q and k; optionally fused with the KV-cache write.

For token i at position p = positions[i], with c = cos[p], s = sin[p] (the fp32 table rows, concentration
included, cast to the activation dtype before use as the reference implementations do), each head x = [x1, x2]
(halves of D) becomes [x1*c - x2*s, x2*c + x1*s], computed in fp32.

Shapes: q [N, Hq, D], k [N, Hkv, D] (any token stride, heads and dims contiguous: views into the fused qkv
output are rotated where they lie); cos, sin [P, D/2] fp32 from reference.rope_cos_sin, computed once;
positions [N] int32 (< P). Decode mode (k_cache etc. given): token i is sequence i's new token; its rotated
k and its v [N, Hkv, D] are also stored at k_cache/v_cache [>=N, L, Hkv, D] slot p % L, saving the separate
cache-write pass. A prefill chunk writes its cache with kv_cache_write instead (after attention, which a
ring buffer needs).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .launch_plan import Traffic, traffic


@triton.jit
def _rotate_heads(X, stride_xt, tok, tok_ok, c, s, H: tl.constexpr, HP: tl.constexpr, D: tl.constexpr):
    HALF: tl.constexpr = D // 2
    hd = tl.arange(0, HP)
    j = tl.arange(0, HALF)
    ptr = X + tok[:, None, None] * stride_xt + (hd * D)[None, :, None] + j[None, None, :]
    mask = tok_ok[:, None, None] & (hd < H)[None, :, None]
    x1 = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = (x1 * c[:, None, :] - x2 * s[:, None, :]).to(X.dtype.element_ty)
    o2 = (x2 * c[:, None, :] + x1 * s[:, None, :]).to(X.dtype.element_ty)
    tl.store(ptr, o1, mask=mask)
    tl.store(ptr + HALF, o2, mask=mask)
    return o1, o2


@triton.jit
def _rope_kernel(Q, K, V, KC, VC, COS, SIN, POS, N, stride_qt, stride_kt, stride_vt, stride_kcb, stride_kcs,
                 stride_vcb, stride_vcs, cache_len,
                 HQ: tl.constexpr, HKV: tl.constexpr, HQP: tl.constexpr, HKVP: tl.constexpr, D: tl.constexpr,
                 WRITE_CACHE: tl.constexpr, BLOCK_T: tl.constexpr):
    HALF: tl.constexpr = D // 2
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    tok_ok = tok < N
    pos = tl.load(POS + tok, mask=tok_ok, other=0).to(tl.int64)
    j = tl.arange(0, HALF)
    row = pos[:, None] * HALF + j[None, :]
    c = tl.load(COS + row, mask=tok_ok[:, None], other=0.0).to(Q.dtype.element_ty).to(tl.float32)
    s = tl.load(SIN + row, mask=tok_ok[:, None], other=0.0).to(Q.dtype.element_ty).to(tl.float32)
    _rotate_heads(Q, stride_qt, tok, tok_ok, c, s, HQ, HQP, D)
    k1, k2 = _rotate_heads(K, stride_kt, tok, tok_ok, c, s, HKV, HKVP, D)
    if WRITE_CACHE:
        hd = tl.arange(0, HKVP)
        mask = tok_ok[:, None, None] & (hd < HKV)[None, :, None]
        col = (hd * D)[None, :, None] + j[None, None, :]
        kc = KC + (tok * stride_kcb + (pos % cache_len) * stride_kcs)[:, None, None] + col
        tl.store(kc, k1, mask=mask)
        tl.store(kc + HALF, k2, mask=mask)
        v = V + (tok * stride_vt)[:, None, None] + col
        vc = VC + (tok * stride_vcb + (pos % cache_len) * stride_vcs)[:, None, None] + col
        tl.store(vc, tl.load(v, mask=mask, other=0.0), mask=mask)
        tl.store(vc + HALF, tl.load(v + HALF, mask=mask, other=0.0), mask=mask)


def _check_heads(name: str, x: torch.Tensor, n: int, d: int, dtype: torch.dtype) -> None:
    if x.dim() != 3 or x.shape[0] != n or x.shape[2] != d:
        raise ValueError(f"rope: {name} must be [N={n}, heads, D={d}], got shape {list(x.shape)}")
    if x.stride(2) != 1 or x.stride(1) != d:
        raise ValueError(f"rope: {name} must have contiguous heads and dims, got strides {list(x.stride())}")
    if x.dtype != dtype:
        raise ValueError(f"rope: {name} is {x.dtype}, q is {dtype}")


@torch.library.triton_op("gpt_oss_triton::rope", mutates_args=("q", "k", "k_cache", "v_cache"))
def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
         v: Optional[torch.Tensor] = None, k_cache: Optional[torch.Tensor] = None,
         v_cache: Optional[torch.Tensor] = None) -> None:
    """Rotate q [N, Hq, D] and k [N, Hkv, D] in place by the table rows cos/sin [P, D/2] at positions [N].

    With v, k_cache and v_cache (decode mode): also store token i's rotated k and v at slot positions[i] % L
    of cache row i.
    """
    if q.dim() != 3:
        raise ValueError(f"rope: q must be [N, Hq, D], got shape {list(q.shape)}")
    N, Hq, D = q.shape
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"rope: q must be bf16, fp16 or fp32, got {q.dtype}")
    if D % 2 or D & (D - 1) or D > 512:
        raise ValueError(f"rope: head dim {D} must be an even power of two <= 512")
    _check_heads("q", q, N, D, q.dtype)
    _check_heads("k", k, N, D, q.dtype)
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or t.shape[1] != D // 2 or t.dtype != torch.float32 or not t.is_contiguous():
            raise ValueError(f"rope: {name} must be a contiguous fp32 [P, {D // 2}] table, got shape "
                             f"{list(t.shape)} {t.dtype} strides {list(t.stride())}")
    if cos.shape != sin.shape:
        raise ValueError(f"rope: cos {list(cos.shape)} and sin {list(sin.shape)} differ")
    if positions.shape != (N,) or positions.dtype != torch.int32:
        raise ValueError(f"rope: positions must be int32 [N] = [{N}], got {list(positions.shape)} {positions.dtype}")
    for name, t in (("k", k), ("cos", cos), ("sin", sin), ("positions", positions)):
        if t.device != q.device:
            raise ValueError(f"rope: {name} on {t.device}, q on {q.device}")
    write_cache = k_cache is not None
    if write_cache != (v_cache is not None) or write_cache != (v is not None):
        raise ValueError("rope: pass v, k_cache and v_cache together (decode mode), or none of them")
    Hkv = k.shape[1]
    if write_cache:
        _check_heads("v", v, N, D, q.dtype)
        if v.shape != k.shape:
            raise ValueError(f"rope: v {list(v.shape)} must match k {list(k.shape)}")
        for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
            if c.dim() != 4 or c.shape[0] < N or c.shape[1] == 0 or c.shape[2:] != k.shape[1:]:
                raise ValueError(f"rope: {name} must be [>={N}, L>0, {Hkv}, {D}], got shape {list(c.shape)}")
            if c.stride(3) != 1 or c.stride(2) != D or c.dtype != q.dtype or c.device != q.device:
                raise ValueError(f"rope: {name} must be {q.dtype} on {q.device} with contiguous heads and dims, "
                                 f"got {c.dtype} on {c.device} strides {list(c.stride())}")
        if k_cache.shape != v_cache.shape:
            raise ValueError(f"rope: k_cache {list(k_cache.shape)} and v_cache {list(v_cache.shape)} differ")
    if N == 0:
        return
    kc, vc, vv = (k_cache, v_cache, v) if write_cache else (k, k, k)
    # A few tokens per program on the GPU keep the [tokens, heads, D/2] tiles in registers; the interpreter
    # pays per program, so it takes more.
    block_t = 16 if interpreting() else 2
    wrap_triton(_rope_kernel)[(triton.cdiv(N, block_t),)](
        q, k, vv, kc, vc, cos, sin, positions, N, q.stride(0), k.stride(0), vv.stride(0),
        kc.stride(0), kc.stride(1) if write_cache else 0, vc.stride(0), vc.stride(1) if write_cache else 0,
        k_cache.shape[1] if write_cache else 1,
        HQ=Hq, HKV=Hkv, HQP=triton.next_power_of_2(Hq), HKVP=triton.next_power_of_2(Hkv), D=D,
        WRITE_CACHE=write_cache, BLOCK_T=block_t, num_warps=4)


@traffic(_rope_kernel)
def _rope_traffic(launch, constexprs, env):
    """q and k read and written in place, their N rows of cos/sin read; in decode mode v read and k, v written
    to one cache slot per token."""
    a = launch.args
    N, D = a["N"], a["D"]
    qk = N * (a["HQ"] + a["HKV"]) * D * a["Q"].element_size()
    kv_new = 2 * N * a["HKV"] * D * a["Q"].element_size() if a["WRITE_CACHE"] else 0
    return Traffic(read=qk + kv_new // 2 + 2 * N * (D // 2) * 4, written=qk + kv_new)
