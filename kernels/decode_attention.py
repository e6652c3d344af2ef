"""Decode attention: one new query token per sequence over its KV cache, GQA with sinks (flash-decoding).

Query row i reads cache row c_i = slots[i] (default: c_i = i) and sits at position p_i = positions[c_i]; the
cache already holds keys 0..p_i (its own included) at slots s % L, so a ring buffer of L >= window slots serves
a sliding layer. Visible keys: s in [max(0, p_i - window + 1), p_i] (window = 0: [0, p_i]). With sinks:

    o[i, h] = sum_s softmax([q_h·k_s * sm_scale for visible s] + [sink[h]])_s * v_s     (sink column dropped)

Shapes: q [M, Hq, D] (any row stride; heads and dims contiguous), k_cache, v_cache [B, L, Hkv, D],
positions [B] int32 and slots [M] int32 on the device (no host sync: the launch shape depends only on M and
L, so it can be captured in a CUDA graph), sinks [Hq]; out [M, Hq, D] in q.dtype.

One launch (grid num_splits x M*Hkv): each program takes one KV head and 1/num_splits of the row's visible
keys, split evenly in keys, not key blocks (split sizes follow each row's own length, so a short sequence in a
long cache still spreads over all programs; a split may be shorter than a key block, so a 128-key window
still spreads over 17) and keeps the G query heads of the group as the rows of one tile (padded to 16
for tl.dot), so the group reads its K/V once. With one split it normalises and stores the output itself. With
several, each writes an unnormalised fp32 partial with its running max and sum, then counts itself done on a
counter per (row, KV head) (kernels/arrival.py); the last to arrive merges all splits in split order
(deterministic whichever arrives last) with the sink, m = max(m_i..., sink), l = sum l_i e^(m_i-m) +
e^(sink-m), reading MERGE_CHUNK splits' partials at once so the merge waits on few round trips. P is fed to
the P·V product as bf16 hi + lo parts: fp32-exact to ~2^-16, as the reference's fp32 probabilities, at the
cost of a second small MMA in a kernel bound by reading K and V.

The main loop is software-pipelined (num_stages >= 3 in every config: the loop waits for the oldest tile's
copies only, with the next ones in flight; tests/kernels/test_compile_targets.py reads it in the SASS).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .arrival import counters, last_to_arrive
from .attention import _LOG2E, check_cache, check_gqa, dot_precision
from .launch_plan import Traffic, multiprocessors, tensor_bytes, traffic
from .reference import attention_ref


MIN_SPLIT_KEYS = 4  # the fewest keys default_num_splits gives a split
MERGE_CHUNK = 8     # splits whose partials the merge reads at once


def _configs():
    """Configs that compile for sm_90 without spilling (tests/kernels/test_compile_targets.py checks), each
    with at least 3 stages: a 2-stage loop keeps one buffer and waits for all its copies at the top."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn, w, s in ((16, 4, 3), (32, 4, 4), (64, 4, 3), (64, 4, 4), (128, 8, 3))]


def _prune(configs, args, **kwargs):
    """Key blocks no longer than a split needs (split_keys: its keys, to a power of two >= 16): a longer block
    only computes masked keys."""
    keys = {**args, **kwargs}["split_keys"]
    return [c for c in configs if c.kwargs["BLOCK_N"] <= keys] or configs[:1]


def _split_keys(visible: int, splits: int) -> int:
    return min(max(16, triton.next_power_of_2(triton.cdiv(visible, splits))), 1 << 16)


@triton.jit
def _merge_splits(O_PART, ML_PART, SINKS, O_ROW, part0, head0, G: tl.constexpr, GM: tl.constexpr,
                  D: tl.constexpr, NUM_SPLITS: tl.constexpr, CHUNK: tl.constexpr):
    """Merge the NUM_SPLITS partials of the G query heads head0.. (partial rows part0..) and their sinks in split
    order, and store o [G, D] into the output row O_ROW: a running max over chunks of CHUNK splits, each chunk's
    partials loaded together."""
    g = tl.arange(0, GM)
    g_ok = g < G
    heads = head0 + g
    d = tl.arange(0, D)
    c = tl.arange(0, CHUNK)
    m = tl.load(SINKS + heads, mask=g_ok, other=0.0).to(tl.float32) * 1.4426950408889634  # log2(e)
    l = tl.full([GM], 1.0, dtype=tl.float32)  # the sink's term, e^(sink - m)
    o = tl.zeros([GM, D], dtype=tl.float32)
    for s0 in range(0, NUM_SPLITS, CHUNK):
        idx = (part0 + g)[:, None] * NUM_SPLITS + s0 + c[None, :]
        ok = g_ok[:, None] & (s0 + c < NUM_SPLITS)[None, :]
        # .cg: read what the other programs wrote from L2, never a stale L1 line.
        m_c = tl.load(ML_PART + idx * 2, mask=ok, other=float("-inf"), cache_modifier=".cg")
        l_c = tl.load(ML_PART + idx * 2 + 1, mask=ok, other=0.0, cache_modifier=".cg")
        o_c = tl.load(O_PART + idx[:, :, None] * D + d[None, None, :], mask=ok[:, :, None], other=0.0,
                      cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(m_c, 1))
        alpha = tl.exp2(m - m_new)
        w = tl.exp2(m_c - m_new[:, None])
        l = l * alpha + tl.sum(l_c * w, 1)
        o = o * alpha[:, None] + tl.sum(o_c * w[:, :, None], 1)
        m = m_new
    o = o / l[:, None]
    tl.store(O_ROW + (heads * D)[:, None] + d[None, :], o.to(O_ROW.dtype.element_ty), mask=g_ok[:, None])


@triton.autotune(configs=_configs(), key=["GP", "D", "SLIDING", "NUM_SPLITS", "split_keys"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _decode_attention_kernel(Q, KC, VC, SLOTS, POS, SINKS, O, O_PART, ML_PART, COUNTERS, stride_qb, stride_ob,
                             stride_kcb, stride_kcs, stride_vcb, stride_vcs, cache_len, qk_scale, window, split_keys,
                             HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, GM: tl.constexpr,
                             D: tl.constexpr, NUM_SPLITS: tl.constexpr, MERGE: tl.constexpr, SLIDING: tl.constexpr,
                             DOT_F32: tl.constexpr, PRECISION: tl.constexpr, FENCE: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    row = tl.load(SLOTS + b).to(tl.int64)
    end = tl.load(POS + row) + 1
    lo = 0
    if SLIDING:
        lo = tl.maximum(end - window, 0)
    # Even splits in keys: split i holds keys lo + [i n / S, (i + 1) n / S), n the visible keys.
    n_keys = end - lo
    s_lo = lo + split * n_keys // NUM_SPLITS
    s_hi = lo + (split + 1) * n_keys // NUM_SPLITS

    g = tl.arange(0, GP)
    g_ok = g < G
    h = kvh * G + g
    d = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + (h * D)[:, None] + d[None, :], mask=g_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    # Finite start: an empty split must not produce exp2(-inf - -inf) = nan.
    m_i = tl.full([GP], -1e30, dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    kc_base = KC + row * stride_kcb + kvh * D + d[None, :]
    vc_base = VC + row * stride_vcb + kvh * D + d[None, :]
    n = tl.arange(0, BLOCK_N)
    for s0 in range(s_lo, s_hi, BLOCK_N):
        s = s0 + n
        valid = s < s_hi
        slot = (s % cache_len).to(tl.int64)
        k = tl.load(kc_base + slot[:, None] * stride_kcs, mask=valid[:, None], other=0.0)
        v = tl.load(vc_base + slot[:, None] * stride_vcs, mask=valid[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
        qk = tl.where(valid[None, :], tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p_hi = p.to(VC.dtype.element_ty)
        p_lo = (p - p_hi.to(tl.float32)).to(VC.dtype.element_ty)
        if DOT_F32:
            v = v.to(tl.float32)
            p_hi = p_hi.to(tl.float32)
            p_lo = p_lo.to(tl.float32)
        acc = tl.dot(p_hi, v, acc * alpha[:, None], input_precision=PRECISION)
        acc = tl.dot(p_lo, v, acc, input_precision=PRECISION)
        m_i = m_new

    if NUM_SPLITS == 1:
        sink = tl.load(SINKS + h, mask=g_ok, other=0.0).to(tl.float32) * 1.4426950408889634  # log2(e)
        m = tl.maximum(m_i, sink)
        alpha = tl.exp2(m_i - m)
        o = acc * (alpha / (l_i * alpha + tl.exp2(sink - m)))[:, None]
        tl.store(O + b.to(tl.int64) * stride_ob + (h * D)[:, None] + d[None, :], o.to(O.dtype.element_ty),
                 mask=g_ok[:, None])
    else:
        part = (b * HKV * G + h).to(tl.int64)
        # Partials [M, Hq, NUM_SPLITS, D] and [M, Hq, NUM_SPLITS, 2] (max, sum).
        tl.store(O_PART + (part * NUM_SPLITS + split)[:, None] * D + d[None, :], acc, mask=g_ok[:, None])
        tl.store(ML_PART + (part * NUM_SPLITS + split) * 2, m_i, mask=g_ok)
        tl.store(ML_PART + (part * NUM_SPLITS + split) * 2 + 1, l_i, mask=g_ok)
        if last_to_arrive(COUNTERS + pid_bh, NUM_SPLITS, split, FENCE):
            _merge_splits(O_PART, ML_PART, SINKS, O + b.to(tl.int64) * stride_ob, (b * HKV + kvh).to(tl.int64) * G,
                          kvh * G, G, GM, D, NUM_SPLITS, MERGE)


def default_num_splits(batch: int, kv_heads: int, visible: int, device: torch.device) -> int:
    """Enough programs to give every SM one, at least MIN_SPLIT_KEYS keys per split: at batch 1 decode is a
    chain of latencies (load q, a trip or two over the keys, the partials, the merge), which more splits
    shorten until a split is one trip."""
    sms = multiprocessors(device)
    return max(1, min(triton.cdiv(sms, batch * kv_heads), triton.cdiv(visible, MIN_SPLIT_KEYS)))


@torch.library.triton_op("gpt_oss_triton::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     positions: torch.Tensor, sm_scale: float, sliding_window: int = 0, num_splits: int = 0,
                     slots: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [M, Hq, D], k_cache, v_cache [B, L, Hkv, D], sinks [Hq], positions [B] int32, slots [M] int32 (None: row
    i reads cache row i) -> out [M, Hq, D].

    num_splits = 0 picks default_num_splits (from M, Hkv and min(L, window): never from device values).
    """
    if q.dim() != 3 or q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        raise ValueError(f"decode_attention: q must be [M, Hq, D] with contiguous heads and dims, got shape "
                         f"{list(q.shape)} strides {list(q.stride())}")
    M, Hq, D = q.shape
    if k_cache.dim() != 4:
        raise ValueError(f"decode_attention: k_cache must be [B, L, Hkv, D], got shape {list(k_cache.shape)}")
    B, L, Hkv = k_cache.shape[0], k_cache.shape[1], k_cache.shape[2]
    check_gqa("decode_attention", Hq, Hkv, D, q.dtype)
    check_cache("decode_attention", k_cache, v_cache, M if slots is None else 1, Hkv, D, q.dtype, q.device,
                sliding_window)
    if sinks.shape != (Hq,) or not sinks.is_floating_point() or sinks.device != q.device:
        raise ValueError(f"decode_attention: sinks must be a float [Hq] = [{Hq}] on {q.device}, got "
                         f"{list(sinks.shape)} {sinks.dtype} on {sinks.device}")
    rows = M if slots is None else B
    if positions.dim() != 1 or positions.shape[0] < rows or positions.dtype != torch.int32 \
            or positions.device != q.device:
        raise ValueError(f"decode_attention: positions must be int32 [B] (B >= {rows}) on {q.device}, got "
                         f"{list(positions.shape)} {positions.dtype} on {positions.device}")
    if slots is not None and (slots.shape != (M,) or slots.dtype != torch.int32 or slots.device != q.device):
        raise ValueError(f"decode_attention: slots must be int32 [M] = [{M}] on {q.device}, got "
                         f"{list(slots.shape)} {slots.dtype} on {slots.device}")
    if sliding_window < 0 or num_splits < 0:
        raise ValueError(f"decode_attention: sliding_window ({sliding_window}) and num_splits ({num_splits}) "
                         "must be >= 0")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if M == 0:
        return out
    visible = min(L, sliding_window) if sliding_window else L
    splits = num_splits or default_num_splits(M, Hkv, visible, q.device)
    if slots is None:
        slots = torch.arange(M, dtype=torch.int32, device=q.device)
    cnt = counters(q.device, M * Hkv) if splits > 1 else slots  # one split: no merge, nothing to count
    G = Hq // Hkv
    o_part = torch.empty((M, Hq, splits, D) if splits > 1 else (1,), dtype=torch.float32, device=q.device)
    ml_part = torch.empty((M, Hq, splits, 2) if splits > 1 else (1,), dtype=torch.float32, device=q.device)
    wrap_triton(_decode_attention_kernel)[(splits, M * Hkv)](
        q, k_cache, v_cache, slots, positions, sinks, out, o_part, ml_part, cnt, q.stride(0), out.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1), L, sm_scale * _LOG2E,
        sliding_window, _split_keys(visible, splits), HKV=Hkv, G=G, GP=max(triton.next_power_of_2(G), 16),
        GM=triton.next_power_of_2(G), D=D, NUM_SPLITS=splits, MERGE=min(triton.next_power_of_2(splits), MERGE_CHUNK),
        SLIDING=sliding_window > 0, DOT_F32=interpreting(),
        PRECISION=dot_precision(q.dtype), FENCE=not interpreting())
    return out


@traffic(_decode_attention_kernel)
def _decode_attention_traffic(launch, constexprs, env):
    """Each sequence's visible keys and values (env["context"] cached positions), q once, the output; with
    several splits the partials are written and read back once by the merging program."""
    a = launch.args
    B = a["Q"].shape[0]
    visible = min(env["context"] + 1, a["window"]) if a["SLIDING"] else env["context"] + 1
    kv = 2 * B * a["HKV"] * visible * a["D"] * a["KC"].element_size()
    trips = a["NUM_SPLITS"] * triton.cdiv(triton.cdiv(visible, a["NUM_SPLITS"]), constexprs["BLOCK_N"])
    partials = tensor_bytes(a["O_PART"]) + tensor_bytes(a["ML_PART"]) if a["NUM_SPLITS"] > 1 else 0
    return Traffic(read=kv + tensor_bytes(a["Q"]) + partials, written=tensor_bytes(a["O"]) + partials,
                   loop_trips=B * a["HKV"] * trips)


def decode_attention_ref(q, k_cache, v_cache, sinks, positions, sm_scale, sliding_window=0, slots=None):
    """decode_attention from `attention_ref` (fp32), one row at a time over its cache row's keys -> [M, Hq, D]
    fp32. A ring buffer (L = window) is unrolled: position s sits at slot s % L."""
    out = []
    for i in range(q.shape[0]):
        c = int(slots[i]) if slots is not None else i
        p = int(positions[c])
        L = k_cache.shape[1]
        s = torch.arange(max(0, p + 1 - L), p + 1, device=q.device)
        k = torch.zeros(p + 1, *k_cache.shape[2:], dtype=torch.float32, device=q.device)
        v = torch.zeros_like(k)
        k[s], v[s] = k_cache[c, s % L].float(), v_cache[c, s % L].float()
        out.append(attention_ref(q[i, None, None].float(), k[None], v[None], sinks, sm_scale=sm_scale,
                                 sliding_window=sliding_window, q_start=p)[0, 0])
    return torch.stack(out)
