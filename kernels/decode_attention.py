"""Decode attention: one new query token per sequence over its KV cache, GQA with sinks (flash-decoding).

Sequence b's query sits at position p_b = positions[b]; the cache already holds keys 0..p_b (its own
included) at slots s % L, so a ring buffer of L >= window slots serves a sliding layer. Visible keys:
s in [max(0, p_b - window + 1), p_b] (window = 0: [0, p_b]). With sinks:

    o[b, h] = sum_s softmax([q_h·k_s * sm_scale for visible s] + [sink[h]])_s * v_s     (sink column dropped)

Shapes: q [B, Hq, D] (any batch stride; heads and dims contiguous), k_cache, v_cache [>=B, L, Hkv, D],
positions [B] int32 on the device (no host sync: the launch shape depends only on B and L, so it can be
captured in a CUDA graph), sinks [Hq]; out [B, Hq, D] in q.dtype.

Pass 1 (grid num_splits x B*Hkv): each program takes one KV head and 1/num_splits of the sequence's visible
keys (split sizes follow each sequence's own length, so a short sequence in a long cache still spreads over
all programs) and keeps the G query heads of the group as the rows of one tile (padded to 16 for tl.dot),
so the group reads its K/V once. It writes an unnormalised partial output with its running max and sum.
Pass 2 (grid B*Hkv) merges the splits and the sink: m = max(m_i..., sink), l = sum l_i e^(m_i-m) + e^(sink-m).
"""
import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .attention import _LOG2E, check_cache, check_gqa, dot_precision
from .launch_plan import Traffic, multiprocessors, tensor_bytes, traffic


def _configs():
    """Configs that compile for sm_90 without spilling (tests/kernels/test_sm90_resources.py checks)."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn, w, s in ((64, 4, 2), (64, 4, 4), (128, 8, 3), (32, 4, 4))]


@triton.autotune(configs=_configs(), key=["GP", "D", "SLIDING", "NUM_SPLITS"])
@triton.jit
def _decode_attention_kernel(Q, KC, VC, POS, O_PART, ML_PART, stride_qb, stride_kcb, stride_kcs, stride_vcb,
                             stride_vcs, cache_len, qk_scale, window,
                             HKV: tl.constexpr, G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr,
                             NUM_SPLITS: tl.constexpr, SLIDING: tl.constexpr, DOT_F32: tl.constexpr,
                             PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    split = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    end = tl.load(POS + b) + 1
    lo = 0
    if SLIDING:
        lo = tl.maximum(end - window, 0)
    chunk = tl.cdiv(tl.cdiv(end - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    s_lo = lo + split * chunk
    s_hi = tl.minimum(s_lo + chunk, end)

    g = tl.arange(0, GP)
    h = kvh * G + g
    d = tl.arange(0, D)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + (h * D)[:, None] + d[None, :], mask=(g < G)[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    # Finite start: an empty split must not produce exp2(-inf - -inf) = nan.
    m_i = tl.full([GP], -1e30, dtype=tl.float32)
    l_i = tl.zeros([GP], dtype=tl.float32)
    acc = tl.zeros([GP, D], dtype=tl.float32)
    kc_base = KC + b.to(tl.int64) * stride_kcb + kvh * D + d[None, :]
    vc_base = VC + b.to(tl.int64) * stride_vcb + kvh * D + d[None, :]
    n = tl.arange(0, BLOCK_N)
    for s0 in range(s_lo, s_hi, BLOCK_N):
        s = s0 + n
        valid = s < s_hi
        slot = (s % cache_len).to(tl.int64)
        k = tl.load(kc_base + slot[:, None] * stride_kcs, mask=valid[:, None], other=0.0)
        v = tl.load(vc_base + slot[:, None] * stride_vcs, mask=valid[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.where(valid[None, :], tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new

    # Partials [B, Hq, NUM_SPLITS, D] and [B, Hq, NUM_SPLITS, 2] (max, sum).
    part = (b * HKV * G + h).to(tl.int64) * NUM_SPLITS + split
    tl.store(O_PART + part[:, None] * D + d[None, :], acc, mask=(g < G)[:, None])
    tl.store(ML_PART + part * 2, m_i, mask=g < G)
    tl.store(ML_PART + part * 2 + 1, l_i, mask=g < G)


@triton.jit
def _decode_reduce_kernel(O_PART, ML_PART, SINKS, O, stride_ob, HKV: tl.constexpr, G: tl.constexpr,
                          GP: tl.constexpr, D: tl.constexpr, NUM_SPLITS: tl.constexpr, SPLITS_P: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // HKV
    g = tl.arange(0, GP)
    h = (pid % HKV) * G + g
    sp = tl.arange(0, SPLITS_P)
    d = tl.arange(0, D)
    part = (b * HKV * G + h).to(tl.int64)[:, None] * NUM_SPLITS + sp[None, :]
    ok = (g < G)[:, None] & (sp < NUM_SPLITS)[None, :]
    m_s = tl.load(ML_PART + part * 2, mask=ok, other=float("-inf"))
    l_s = tl.load(ML_PART + part * 2 + 1, mask=ok, other=0.0)
    o_s = tl.load(O_PART + part[:, :, None] * D + d[None, None, :], mask=ok[:, :, None], other=0.0)
    sink = tl.load(SINKS + h, mask=g < G, other=0.0).to(tl.float32) * 1.4426950408889634  # log2(e)
    m = tl.maximum(tl.max(m_s, 1), sink)
    w = tl.exp2(m_s - m[:, None])
    l = tl.sum(l_s * w, 1) + tl.exp2(sink - m)
    o = tl.sum(o_s * w[:, :, None], 1) / l[:, None]
    tl.store(O + b.to(tl.int64) * stride_ob + (h * D)[:, None] + d[None, :], o.to(O.dtype.element_ty),
             mask=(g < G)[:, None])


def default_num_splits(batch: int, kv_heads: int, visible: int, device: torch.device) -> int:
    """Enough programs to fill the GPU twice over, at least 256 keys per split."""
    sms = multiprocessors(device)
    return max(1, min(triton.cdiv(2 * sms, batch * kv_heads), triton.cdiv(visible, 256)))


@torch.library.triton_op("gpt_oss_triton::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                     positions: torch.Tensor, sm_scale: float, sliding_window: int = 0,
                     num_splits: int = 0) -> torch.Tensor:
    """q [B, Hq, D], k_cache, v_cache [>=B, L, Hkv, D], sinks [Hq], positions [B] int32 -> out [B, Hq, D].

    num_splits = 0 picks default_num_splits (from B, Hkv and min(L, window): never from device values).
    """
    if q.dim() != 3 or q.stride(2) != 1 or q.stride(1) != q.shape[2]:
        raise ValueError(f"decode_attention: q must be [B, Hq, D] with contiguous heads and dims, got shape "
                         f"{list(q.shape)} strides {list(q.stride())}")
    B, Hq, D = q.shape
    if k_cache.dim() != 4:
        raise ValueError(f"decode_attention: k_cache must be [B, L, Hkv, D], got shape {list(k_cache.shape)}")
    Hkv, L = k_cache.shape[2], k_cache.shape[1]
    check_gqa("decode_attention", Hq, Hkv, D, q.dtype)
    check_cache("decode_attention", k_cache, v_cache, B, Hkv, D, q.dtype, q.device, sliding_window)
    if sinks.shape != (Hq,) or not sinks.is_floating_point() or sinks.device != q.device:
        raise ValueError(f"decode_attention: sinks must be a float [Hq] = [{Hq}] on {q.device}, got "
                         f"{list(sinks.shape)} {sinks.dtype} on {sinks.device}")
    if positions.shape != (B,) or positions.dtype != torch.int32 or positions.device != q.device:
        raise ValueError(f"decode_attention: positions must be int32 [B] = [{B}] on {q.device}, got "
                         f"{list(positions.shape)} {positions.dtype} on {positions.device}")
    if sliding_window < 0 or num_splits < 0:
        raise ValueError(f"decode_attention: sliding_window ({sliding_window}) and num_splits ({num_splits}) "
                         "must be >= 0")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    visible = min(L, sliding_window) if sliding_window else L
    splits = num_splits or default_num_splits(B, Hkv, visible, q.device)
    G = Hq // Hkv
    o_part = torch.empty((B, Hq, splits, D), dtype=torch.float32, device=q.device)
    ml_part = torch.empty((B, Hq, splits, 2), dtype=torch.float32, device=q.device)
    wrap_triton(_decode_attention_kernel)[(splits, B * Hkv)](
        q, k_cache, v_cache, positions, o_part, ml_part, q.stride(0), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), L, sm_scale * _LOG2E, sliding_window,
        HKV=Hkv, G=G, GP=max(triton.next_power_of_2(G), 16), D=D, NUM_SPLITS=splits,
        SLIDING=sliding_window > 0, DOT_F32=interpreting(), PRECISION=dot_precision(q.dtype))
    wrap_triton(_decode_reduce_kernel)[(B * Hkv,)](
        o_part, ml_part, sinks, out, out.stride(0), HKV=Hkv, G=G, GP=triton.next_power_of_2(G), D=D,
        NUM_SPLITS=splits, SPLITS_P=triton.next_power_of_2(splits), num_warps=4)
    return out


@traffic(_decode_attention_kernel)
def _decode_attention_traffic(launch, constexprs, env):
    """Each sequence's visible keys and values (env["context"] cached positions), q once, the partials written."""
    a = launch.args
    B = a["Q"].shape[0]
    visible = min(env["context"] + 1, a["window"]) if a["SLIDING"] else env["context"] + 1
    kv = 2 * B * a["HKV"] * visible * a["D"] * a["KC"].element_size()
    blocks = triton.cdiv(triton.cdiv(visible, a["NUM_SPLITS"]), constexprs["BLOCK_N"])
    return Traffic(read=kv + tensor_bytes(a["Q"]), written=tensor_bytes(a["O_PART"]) + tensor_bytes(a["ML_PART"]),
                   loop_trips=a["NUM_SPLITS"] * B * a["HKV"] * blocks)
