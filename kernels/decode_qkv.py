"""The attention block's input at decode in one launch: RMSNorm -> qkv projection + bias -> RoPE -> KV-cache write.

Row i of x [M, H] (bf16) is the new token of cache row c = slots[i], at position p = lengths[c]:

    qkv = rmsnorm(x[i]) @ W^T + bias                      W [(Hq + 2 Hkv) D, H] bf16, bias [(Hq + 2 Hkv) D]
    q, k = rope(qkv[:Hq D], p), rope(qkv[Hq D:(Hq + Hkv) D], p)     v = qkv[(Hq + Hkv) D:]
    q -> q_out [M, Hq, D];  k, v -> k_cache, v_cache [c, p % L]  (only where active[i]: a padding row of a
                                                                 decode bucket copies a real row and must not
                                                                 race its writes)

RoPE is the half-split rotation of `kernels/rope.py` ([x1, x2] -> [x1 c - x2 s, x2 c + x1 s] with the fp32
table's c, s cast to bf16 first, as the reference does), applied to the fp32 accumulator: q and k are rounded to
bf16 once, after the rotation (unfused, qkv is rounded, then the rotation's result again).

Each program takes all M rows and BLOCK_J columns of each half of one head (weight rows h D + j and
h D + D/2 + j, gathered by `linear_tile`), so the rotation pairs sit in the same tile; the norm is folded into
the prologue as in `linear`. Reference: `decode_qkv_ref`.
"""
import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .launch_plan import Traffic, tensor_bytes, traffic
from .linear import block_m, check_weight, linear_tile


def _configs(wide: bool):
    """(BLOCK_J, BLOCK_K, warps, stages) per regime of BLOCK_M (wide: 64 rows), each compiling for sm_90 without
    spills: 2 BLOCK_J weight rows per program, so BLOCK_J = 8 gives 20B's 80 heads 320 programs."""
    if interpreting():
        return [triton.Config({"BLOCK_J": 16, "BLOCK_K": 128}, num_warps=4)]
    tiles = ([(16, 128, 4, 4), (8, 128, 4, 4), (16, 128, 8, 3), (32, 128, 8, 3), (32, 64, 8, 3)] if wide else
             [(8, 256, 4, 4), (16, 256, 4, 4), (16, 128, 4, 4), (8, 128, 4, 4)])
    return [triton.Config({"BLOCK_J": j, "BLOCK_K": k}, num_warps=w, num_stages=s) for j, k, w, s in tiles]


@triton.jit
def _decode_qkv_kernel(X, W, BIAS, SCALE, COS, SIN, SLOTS, LENGTHS, ACTIVE, Q, KC, VC, M, K,
                       stride_xm, stride_qm, stride_kcb, stride_kcs, stride_vcb, stride_vcs, cache_len, eps,
                       HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr):
    HALF: tl.constexpr = D // 2
    SLICES: tl.constexpr = HALF // BLOCK_J
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    head = tl.program_id(1) // SLICES
    j = (tl.program_id(1) % SLICES) * BLOCK_J + tl.arange(0, BLOCK_J)
    # Weight rows [first half's BLOCK_J | second half's BLOCK_J] of this head.
    i = tl.arange(0, 2 * BLOCK_J)
    w_rows = head * D + (i // BLOCK_J) * HALF + (tl.program_id(1) % SLICES) * BLOCK_J + i % BLOCK_J
    acc = linear_tile(X, stride_xm, rows, row_ok, W, K, w_rows, w_rows >= 0, SCALE, K, eps,
                      True, BLOCK_M, 2 * BLOCK_J, BLOCK_K, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(BIAS + w_rows).to(tl.float32)[None, :]
    a1, a2 = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_J)), (0, 2, 1)))

    slot = tl.load(SLOTS + rows, mask=row_ok, other=0).to(tl.int64)
    pos = tl.load(LENGTHS + slot, mask=row_ok, other=0).to(tl.int64)
    mask = row_ok[:, None]
    if head < HQ + HKV:  # q and k heads rotate; v heads pass through
        table = pos[:, None] * HALF + j[None, :]
        c = tl.load(COS + table, mask=mask, other=0.0).to(Q.dtype.element_ty).to(tl.float32)
        s = tl.load(SIN + table, mask=mask, other=0.0).to(Q.dtype.element_ty).to(tl.float32)
        a1, a2 = a1 * c - a2 * s, a2 * c + a1 * s
    a1 = a1.to(Q.dtype.element_ty)
    a2 = a2.to(Q.dtype.element_ty)
    if head < HQ:
        p_q = Q + rows.to(tl.int64)[:, None] * stride_qm + head * D + j[None, :]
        tl.store(p_q, a1, mask=mask)
        tl.store(p_q + HALF, a2, mask=mask)
    else:
        mask = mask & (tl.load(ACTIVE + rows, mask=row_ok, other=0) != 0)[:, None]
        slot_in_ring = pos % cache_len
        if head < HQ + HKV:
            p_c = KC + (slot * stride_kcb + slot_in_ring * stride_kcs)[:, None] + (head - HQ) * D + j[None, :]
        else:
            p_c = VC + (slot * stride_vcb + slot_in_ring * stride_vcs)[:, None] + (head - HQ - HKV) * D + j[None, :]
        tl.store(p_c, a1, mask=mask)
        tl.store(p_c + HALF, a2, mask=mask)


_KEY = ["BLOCK_M", "K", "HQ", "HKV", "D"]
_decode_qkv_narrow = triton.autotune(configs=_configs(False), key=_KEY)(_decode_qkv_kernel)
_decode_qkv_wide = triton.autotune(configs=_configs(True), key=_KEY)(_decode_qkv_kernel)


def _check_index(name: str, t: torch.Tensor, m: int, device) -> None:
    if t.shape != (m,) or t.dtype != torch.int32 or t.device != device:
        raise ValueError(f"decode_qkv: {name} must be int32 [{m}] on {device}, got {list(t.shape)} {t.dtype} "
                         f"on {t.device}")


@torch.library.triton_op("gpt_oss_triton::decode_qkv", mutates_args=("k_cache", "v_cache"))
def decode_qkv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, norm_scale: torch.Tensor,
               eps: float, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               lengths: torch.Tensor, slots: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """x [M, H] bf16; weight [(Hq + 2 Hkv) D, H], bias [(Hq + 2 Hkv) D] or None, norm_scale [H]; cos, sin [P, D/2]
    fp32; k_cache, v_cache [B, L, Hkv, D]; lengths [B] int32 (positions); slots, active [M] int32
    -> q [M, Hq, D] bf16; k, v stored in the caches at (slots[i], lengths[slots[i]] % L) for active rows."""
    M, N, H = check_weight("decode_qkv", x, weight, bias, norm_scale)
    if norm_scale is None:
        raise ValueError("decode_qkv: norm_scale is required (the block's RMSNorm is fused into the projection)")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"decode_qkv: k_cache and v_cache must be equal [B, L, Hkv, D], got {list(k_cache.shape)} "
                         f"and {list(v_cache.shape)}")
    B, L, Hkv, D = k_cache.shape
    if D < 64 or D & (D - 1) or N % D or N // D <= 2 * Hkv:
        raise ValueError(f"decode_qkv: head dim {D} must be a power of two >= 64 and weight rows {N} a multiple "
                         f"of it with more than the 2 x {Hkv} k and v heads")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dtype != x.dtype or c.device != x.device or c.stride(3) != 1 or c.stride(2) != D:
            raise ValueError(f"decode_qkv: {name} must be {x.dtype} on {x.device} with contiguous heads and dims, "
                             f"got {c.dtype} on {c.device} strides {list(c.stride())}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or t.shape[1] != D // 2 or t.dtype != torch.float32 or not t.is_contiguous() \
                or t.device != x.device:
            raise ValueError(f"decode_qkv: {name} must be a contiguous fp32 [P, {D // 2}] table on {x.device}, got "
                             f"{list(t.shape)} {t.dtype}")
    _check_index("lengths", lengths, B, x.device)
    _check_index("slots", slots, M, x.device)
    _check_index("active", active, M, x.device)
    Hq = N // D - 2 * Hkv
    q = torch.empty(M, Hq, D, dtype=x.dtype, device=x.device)
    if M == 0:
        return q
    bm = block_m(M)
    wrap_triton(_decode_qkv_wide if bm == 64 else _decode_qkv_narrow)[lambda meta: (triton.cdiv(M, bm), (N // D) * (D // 2 // meta["BLOCK_J"]))](
        x, weight, bias if bias is not None else weight, norm_scale, cos, sin, slots, lengths, active, q,
        k_cache, v_cache, M, H, x.stride(0), q.stride(0), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0),
        v_cache.stride(1), L, eps, HQ=Hq, HKV=Hkv, D=D, HAS_BIAS=bias is not None, BLOCK_M=bm,
        DOT_F32=interpreting())
    return q


@traffic(_decode_qkv_kernel)
def _decode_qkv_traffic(launch, constexprs, env):
    """The qkv weight streamed once, x, bias, norm scale and each row's cos/sin once; q written, and k, v into
    one cache slot per row."""
    a = launch.args
    M, K, D, heads = a["M"], a["K"], a["D"], a["HQ"] + 2 * a["HKV"]
    read = tensor_bytes(a["W"]) + tensor_bytes(a["X"]) + heads * D * 2 + K * 4 + M * D * 4 + M * 8
    written = tensor_bytes(a["Q"]) + 2 * M * a["HKV"] * D * a["KC"].element_size()
    trips = triton.cdiv(M, a["BLOCK_M"]) * heads * (D // 2 // constexprs["BLOCK_J"]) * triton.cdiv(K, constexprs["BLOCK_K"])
    return Traffic(read=read, written=written, weights=heads * D * K, loop_trips=trips)


def decode_qkv_ref(x, weight, bias, norm_scale, eps, cos, sin, k_cache, v_cache, lengths, slots, active):
    """decode_qkv in torch: the projection in fp32 (norm rounded as `linear_ref`), RoPE in fp32 on it, one bf16
    rounding; writes the caches in place and returns q [M, Hq, D]."""
    from .linear import linear_ref

    Hkv, D = k_cache.shape[2], k_cache.shape[3]
    qkv = linear_ref(x, weight, bias, norm_scale=norm_scale, eps=eps)
    M = x.shape[0]
    Hq = weight.shape[0] // D - 2 * Hkv
    slot = slots.long()
    pos = lengths.long()[slot]
    c, s = cos[pos].to(x.dtype).float()[:, None, :], sin[pos].to(x.dtype).float()[:, None, :]

    def rotate(t):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat((t1 * c - t2 * s, t2 * c + t1 * s), dim=-1)

    q = rotate(qkv[:, :Hq * D].view(M, Hq, D)).to(x.dtype)
    k = rotate(qkv[:, Hq * D:(Hq + Hkv) * D].view(M, Hkv, D)).to(x.dtype)
    v = qkv[:, (Hq + Hkv) * D:].view(M, Hkv, D).to(x.dtype)
    for i in range(M):
        if active[i]:
            k_cache[slot[i], pos[i] % k_cache.shape[1]] = k[i]
            v_cache[slot[i], pos[i] % v_cache.shape[1]] = v[i]
    return q
