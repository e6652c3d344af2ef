"""Grouped expert GEMMs of the MoE block on packed MXFP4 weights, with their epilogues fused.

Rows are the (token, slot) pairs in expert-grouped order (`routing.RoutingData`): grouped position p holds pair
gather_indx[p] = token * K + slot, routed to expert e. Weights are in the repacked layout (mxfp4.mxfp4_repack,
same shapes as the checkpoint's): blocks [E, N, Kdim/32, 16] uint8, scales [E, N, Kdim/32] uint8, decoded in
registers (mxfp4_unpack); products accumulate in fp32. Activations come in the kernels' K order (mxfp4.permute_k:
[rows, cdiv(Kdim, 64) * 64], positions past Kdim ignored).

    moe_mlp1: x [T, H'] -> a [T*K, I'] bf16 (grouped order, K order permuted for mlp2)
        h [2I] = x[token] @ W1[e]^T + b1[e];  a[p] = swiglu(h):
        glu = min(h[0::2], limit), lin = clamp(h[1::2], -limit, limit), a = glu * sigmoid(1.702 glu) * (lin + 1)
    moe_mlp2: a [T*K, I'] -> out [T, H] bf16
        y[p] [H] = a[p] @ W2[e]^T + b2[e] (fp32);  out[t] = residual[t] + sum_slot w[t, slot] * y[scatter_indx[t*K + slot]]

A program computes y^T for BLOCK_N weight rows by BLOCK_M grouped rows of one expert ("swap AB": the decoded
weights are the tensor-core A operand, from registers, and the few activation rows its N side, from shared
memory; on sm_90 a wgmma m64nBLOCK_Mk16): at decode the activation side is 16 wide, not 64. The m-th row tile's
expert comes from the counts on the device (`expert_tile`): the grid is sized by the bound cdiv(T*K, BLOCK_M) +
min(E, T*K) on the number of non-empty row tiles, programs past the real count exit at once, and an expert with
no pairs owns no tile. The third grid dimension splits the K loop (SPLIT_K) when the tiles alone cannot fill
the GPU (`split_k`): each split writes fp32 partial sums, and the last program to arrive at a tile (an int32
counter per tile, atomically incremented after a fence; the last one resets it to 0) adds the splits in split
order and runs the epilogue, so results do not depend on arrival order. The counters' atomics order programs;
no value is accumulated atomically (kernels/arrival.py).

Regimes, tuned apart (autotune keys separate them by the token count's power of two):
- decode (T <= 64): BLOCK_M = 16, wide BLOCK_N, split-K; mlp2's epilogue is the weighted combine of each
  token's experts plus the residual, run per column tile by the last program of the tile (all row tiles and
  splits): the MoE block is three launches (routing, mlp1, mlp2);
- prefill: 64..128-wide activation tiles; mlp2 writes y in bf16 and `_moe_combine_kernel` sums the slots.
"""
import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._interpreter import interpreting, wrap_triton
from .arrival import counters, last_to_arrive
from .launch_plan import Traffic, multiprocessors, tensor_bytes, traffic
from .mxfp4 import KCHUNK, REPACK_ROWS, mxfp4_dequantize, mxfp4_unrepack
from .mxfp4_unpack import mxfp4_decode4, mxfp4_factor, permuted_k, true_k
from .reference import swiglu_ref

INTERPRET = interpreting()
# The interpreter's tl.dot is wrong on bf16 operands; fp32 holds bf16 and MXFP4 values exactly.
DOT_DTYPE = tl.float32 if INTERPRET else tl.bfloat16
DECODE_TOKENS = 64
SWIGLU_ALPHA = tl.constexpr(1.702)
Y_BF16, SWIGLU, COMBINE = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # epilogues
_SPLITS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)
_FENCE = tl.constexpr(not INTERPRET)
_KCHUNK, _ROWS = tl.constexpr(KCHUNK), tl.constexpr(REPACK_ROWS)


def _configs(decode: bool) -> list:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages), each with every SPLIT_K at decode (pruned to one by
    `_prune`). All compile for sm_80..sm_90 without spills within each target's shared memory, and every one
    has at least 3 stages, so the K loop keeps the next tiles' copies in flight while it decodes and multiplies
    one (2 stages keep a single buffer: loads and math take turns) (tests/kernels/test_compile_targets.py)."""
    if INTERPRET:  # one tile per regime: no autotuning in the interpreter
        tiles = [(16, 256, 128, 4, 1)] if decode else [(32, 128, 128, 4, 1)]
    elif decode:
        tiles = [(16, 128, 128, 4, 3), (16, 128, 128, 4, 4), (32, 128, 128, 4, 3)]
    else:
        tiles = [(64, 128, 64, 4, 3), (128, 128, 64, 8, 3), (64, 128, 128, 4, 3), (128, 256, 64, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "SPLIT_K": s}, num_warps=w, num_stages=st)
            for m, n, k, w, st in tiles for s in (_SPLITS if decode else (1,))]


def split_k(tiles: float, iters: int, sms: int) -> int:
    """How many splits of a K loop of `iters` trips spread `tiles` output tiles most evenly over `sms` SMs, taking
    programs to SMs round-robin: the fewest splits within 3% of the best efficiency
    tiles * iters / (sms * ceil(tiles * S / sms) * ceil(iters / S))."""
    tiles = max(1, math.ceil(tiles))

    def efficiency(s):
        return tiles * iters / (sms * math.ceil(tiles * s / sms) * math.ceil(iters / s))
    candidates = [s for s in _SPLITS if s <= iters]
    best = max(efficiency(s) for s in candidates)
    return next(s for s in candidates if efficiency(s) >= 0.97 * best)


def expected_experts(n_experts: int, experts_per_token: int, n_tokens: int) -> float:
    """Distinct experts n_tokens touch when each picks experts_per_token of n_experts uniformly: E(1 - (1 - k/E)^T)."""
    return n_experts * (1 - (1 - experts_per_token / n_experts) ** n_tokens)


def expected_row_tiles(n_experts: int, experts_per_token: int, n_tokens: int, block_m: int) -> float:
    """Expected sum over experts of cdiv(pairs of the expert, block_m), pairs ~ Binomial(n_tokens, k/E)."""
    p = min(1.0, experts_per_token / n_experts)
    return n_experts * sum(math.comb(n_tokens, c) * p ** c * (1 - p) ** (n_tokens - c) * -(-c // block_m)
                           for c in range(1, n_tokens + 1))


def _decode_split(cfg: dict, n_tokens, n_experts, experts_per_token, N, K, sms, hint) -> int:
    """The SPLIT_K of a decode tile shape for this problem: `hint` if set, else `split_k` of its grid."""
    iters = triton.cdiv(K, cfg["BLOCK_K"])
    if hint:
        return min(hint, iters)
    tiles = expected_row_tiles(n_experts, experts_per_token, n_tokens, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    return split_k(tiles, iters, sms)


def _prune(configs, args, **kwargs):
    """Keep, for each decode tile shape, the config with its `_decode_split`."""
    a = {**args, **kwargs}
    sms = multiprocessors(a["x_ptr"].device)
    return [cfg for cfg in configs if cfg.kwargs["SPLIT_K"] == _decode_split(
        cfg.kwargs, a["n_tokens"], a["n_experts"], a["EXPERTS_PER_TOKEN"], a["N"], a["K"], sms, a["split_hint"])]


def _tokens_bucket(n_tokens: int) -> int:
    """Autotune key: one tuning per power of two of the token count."""
    return min(triton.next_power_of_2(n_tokens), 1 << 14)


@triton.jit
def expert_tile(pid_m, counts_ptr, offsets_ptr, n_experts, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """The pid_m-th row tile over the experts' groups: (expert, first grouped row, rows, number of row tiles);
    rows <= 0 past the last tile. The expert's first row is the first expert's offset (loaded beside the counts,
    not after them) plus the counts before it: one dependent load fewer before the weights stream."""
    offs_e = tl.arange(0, E_PAD)
    counts = tl.load(counts_ptr + offs_e, mask=offs_e < n_experts, other=0)
    start = tl.load(offsets_ptr, volatile=True)  # volatile: issued here, not sunk past the caller's early exit
    tiles = tl.cdiv(counts, BLOCK_M)
    tiles_end = tl.cumsum(tiles, 0)
    expert = tl.sum((tiles_end <= pid_m).to(tl.int32), 0)
    mine = offs_e == expert
    first_tile = tl.sum(tl.where(mine, tiles_end - tiles, 0), 0)
    count = tl.sum(tl.where(mine, counts, 0), 0)
    start += tl.sum(tl.where(offs_e < expert, counts, 0), 0)
    m0 = (pid_m - first_tile) * BLOCK_M
    return expert, start + m0, tl.minimum(count - m0, BLOCK_M), tl.sum(tiles, 0)


@triton.jit
def _combine(ws_ptr, b_ptr, out_ptr, scatter_ptr, indices_ptr, weights_ptr, residual_ptr, n_experts, expert_start,
             N, n_pairs, n_tokens, stride_out, offs_n, HAS_RESIDUAL: tl.constexpr, EXPERTS_PER_TOKEN: tl.constexpr,
             SPLIT_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[t, offs_n] = residual + sum over the token's slots (in order) of w * (y + bias), y = the splits' sum;
    BLOCK_T tokens at a time."""
    mask_n = offs_n < N
    for t0 in range(0, n_tokens, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask_t = offs_t < n_tokens
        acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
        for slot in tl.static_range(EXPERTS_PER_TOKEN):
            pair = offs_t * EXPERTS_PER_TOKEN + slot
            e = tl.load(indices_ptr + pair, mask=mask_t, other=0) - expert_start
            local = mask_t & (e >= 0) & (e < n_experts)  # experts held elsewhere add nothing here
            pos = tl.load(scatter_ptr + pair, mask=local, other=0).to(tl.int64)
            mask = local[:, None] & mask_n[None, :]
            y = tl.load(b_ptr + e.to(tl.int64)[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
            for s in range(SPLIT_K):
                y += tl.load(ws_ptr + (s * n_pairs + pos)[:, None] * N + offs_n[None, :], mask=mask, other=0.0,
                             cache_modifier=".cg")
            acc += tl.load(weights_ptr + pair, mask=local, other=0.0)[:, None] * y
        p_out = offs_t.to(tl.int64)[:, None] * stride_out + offs_n[None, :]
        if HAS_RESIDUAL:
            acc += tl.load(residual_ptr + p_out, mask=mask_t[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        tl.store(out_ptr + p_out, acc.to(out_ptr.dtype.element_ty), mask=mask_t[:, None] & mask_n[None, :])


@triton.jit
def _mma_step(acc, k0, p_w, p_s, p_x, K, KQ, G, MASK_K: tl.constexpr, K_TAIL: tl.constexpr, FAST: tl.constexpr,
              DOT_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc [BLOCK_N, BLOCK_M] += W[rows, k0:k0+BLOCK_K] @ x^T: codes, scales and x of one K tile. The pointers'
    rows are clamped in range (rows past the tile's end are computed and never stored), so only the last K tile
    (MASK_K) masks its loads."""
    C: tl.constexpr = BLOCK_K // _KCHUNK
    T: tl.constexpr = BLOCK_N // _ROWS
    offs_q = k0 // 4 + tl.arange(0, BLOCK_K // 4)
    offs_g = k0 // 32 + tl.arange(0, 2 * C)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    if MASK_K:
        packed = tl.load(p_w + offs_q[None, :], mask=(offs_q < KQ)[None, :], other=0)
        sc = tl.load(p_s + offs_g[None, :, None] * _ROWS, mask=(offs_g < G)[None, :, None], other=0)
        if K_TAIL:  # a half chunk at the end: its missing half is not in K
            x = tl.load(p_x + offs_k[:, None], mask=(true_k(offs_k) < K)[:, None], other=0.0)
        else:
            x = tl.load(p_x + offs_k[:, None], mask=(offs_k < K)[:, None], other=0.0)
    else:
        packed = tl.load(p_w + offs_q[None, :])
        sc = tl.load(p_s + offs_g[None, :, None] * _ROWS)
        x = tl.load(p_x + offs_k[:, None])
    sc = tl.reshape(tl.permute(tl.reshape(sc, (T, 2 * C, 8, 2)), (0, 3, 2, 1)), (BLOCK_N, 2 * C))  # rows, groups
    # Element 16 c + 4 q + 2 g + b of the tile holds codes of group 2 c + q // 2.
    f = mxfp4_factor(sc, FAST)
    f = tl.reshape(tl.broadcast_to(tl.reshape(f, (BLOCK_N, C, 2, 1)), (BLOCK_N, C, 2, 8)), (BLOCK_N, BLOCK_K // 4))
    v0, v1, v2, v3 = mxfp4_decode4(packed, f, FAST, DOT_DTYPE)
    w = tl.join(tl.join(v0, v1), tl.join(v2, v3))                       # n, (c q g b), j', i   (code j = 2i + j')
    w = tl.reshape(w, (BLOCK_N, C, 4, 2, 2, 2, 2))
    w = tl.reshape(tl.permute(w, (0, 1, 3, 6, 5, 2, 4)), (BLOCK_N, BLOCK_K))  # K order: c g j q b
    return tl.dot(w, x.to(DOT_DTYPE), acc)


@triton.jit
def _moe_gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, ws_ptr, cnt_ptr, gather_ptr, scatter_ptr, indices_ptr,
                     weights_ptr, residual_ptr, counts_ptr, offsets_ptr, n_experts, expert_start, N, K, n_pairs,
                     n_tokens, swiglu_limit, stride_x, stride_w, stride_out, tokens_bucket, split_hint,
                     EPILOGUE: tl.constexpr, K_TAIL: tl.constexpr, GATHER_ROWS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     EXPERTS_PER_TOKEN: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                     FAST: tl.constexpr, DOT_DTYPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    expert, first_row, n_rows, n_tiles = expert_tile(pid_m, counts_ptr, offsets_ptr, n_experts, E_PAD, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if n_rows <= 0:
        if EPILOGUE == COMBINE:
            if (n_tiles == 0) & (pid_m == 0) & (pid_k == 0):  # no local pair at all: the residual alone
                _combine(ws_ptr, b_ptr, out_ptr, scatter_ptr, indices_ptr, weights_ptr, residual_ptr, n_experts,
                         expert_start, N, n_pairs, n_tokens, stride_out, offs_n, HAS_RESIDUAL, EXPERTS_PER_TOKEN,
                         0, BLOCK_T, BLOCK_N)
        return
    rows = first_row + tl.arange(0, BLOCK_M)
    mask_m = tl.arange(0, BLOCK_M) < n_rows
    mask_n = offs_n < N
    if GATHER_ROWS:  # mlp1 reads each token's row where it sits; mlp2's input is already grouped
        x_rows = tl.load(gather_ptr + rows, mask=mask_m, other=0) // EXPERTS_PER_TOKEN
    else:
        x_rows = tl.minimum(rows, n_pairs - 1)
    p_x = x_ptr + x_rows.to(tl.int64)[None, :] * stride_x
    # Codes as uint16 (4 codes each): row stride stride_w = K/4; scales: 16-row groups of 16 bytes per group of 32.
    expert64 = expert.to(tl.int64)
    KQ = stride_w
    G = K // 32
    T: tl.constexpr = BLOCK_N // _ROWS
    p_w = (w_ptr.to(tl.pointer_type(tl.uint16)) + expert64 * N * KQ
           + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * KQ)
    offs_tg = tl.minimum(pid_n * T + tl.arange(0, T), N // _ROWS - 1)
    p_s = s_ptr + expert64 * N * G + offs_tg[:, None, None] * (G * _ROWS) + tl.arange(0, _ROWS)[None, None, :]
    iters = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(iters, SPLIT_K)
    it_end = tl.minimum((pid_k + 1) * per_split, iters)
    full_end = tl.minimum(it_end, K // BLOCK_K)  # iterations that need no mask along K
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for it in range(pid_k * per_split, full_end):
        acc = _mma_step(acc, it * BLOCK_K, p_w, p_s, p_x, K, KQ, G, False, K_TAIL, FAST, DOT_DTYPE, BLOCK_N, BLOCK_K)
    if full_end < it_end:  # the split holding K's last, partial tile
        acc = _mma_step(acc, full_end * BLOCK_K, p_w, p_s, p_x, K, KQ, G, True, K_TAIL, FAST, DOT_DTYPE, BLOCK_N,
                        BLOCK_K)

    if SPLIT_K > 1 or EPILOGUE == COMBINE:
        tl.store(ws_ptr + (pid_k * n_pairs + rows.to(tl.int64))[None, :] * N + offs_n[:, None], acc,
                 mask=mask_m[None, :] & mask_n[:, None])
        if EPILOGUE == COMBINE:  # the column tile's last program of all row tiles and splits combines
            counter, arrivals = cnt_ptr + pid_n, n_tiles * SPLIT_K
        else:  # the tile's last split sums the splits
            counter, arrivals = cnt_ptr + pid_m * tl.num_programs(1) + pid_n, SPLIT_K
        if not last_to_arrive(counter, arrivals, pid_m, _FENCE):
            return
        if EPILOGUE == COMBINE:
            _combine(ws_ptr, b_ptr, out_ptr, scatter_ptr, indices_ptr, weights_ptr, residual_ptr, n_experts,
                     expert_start, N, n_pairs, n_tokens, stride_out, offs_n, HAS_RESIDUAL, EXPERTS_PER_TOKEN,
                     SPLIT_K, BLOCK_T, BLOCK_N)
            return
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for s in range(SPLIT_K):  # split order: the same sum whichever program arrived last
            acc += tl.load(ws_ptr + (s * n_pairs + rows.to(tl.int64))[None, :] * N + offs_n[:, None],
                           mask=mask_m[None, :] & mask_n[:, None], other=0.0, cache_modifier=".cg")
    acc += tl.load(b_ptr + expert64 * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    p_out = out_ptr + rows.to(tl.int64)[None, :] * stride_out
    if EPILOGUE == SWIGLU:
        glu, lin = tl.split(tl.permute(tl.reshape(acc, (BLOCK_N // 2, 2, BLOCK_M)), (0, 2, 1)))
        glu = tl.minimum(glu, swiglu_limit)
        lin = tl.minimum(tl.maximum(lin, -swiglu_limit), swiglu_limit)
        act = glu * tl.sigmoid(glu * SWIGLU_ALPHA) * (lin + 1.0)
        offs_o = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(p_out + permuted_k(offs_o)[:, None], act.to(out_ptr.dtype.element_ty),
                 mask=mask_m[None, :] & (offs_o < N // 2)[:, None])
    else:
        tl.store(p_out + offs_n[:, None], acc.to(out_ptr.dtype.element_ty), mask=mask_m[None, :] & mask_n[:, None])


# The same kernel tuned per regime: a decode-tuned config would be a poor prefill tile and vice versa.
_KEY = ["N", "K", "tokens_bucket", "split_hint", "EPILOGUE"]
_moe_gemm_decode = triton.autotune(configs=_configs(True), key=_KEY,
                                   prune_configs_by={"early_config_prune": _prune})(_moe_gemm_kernel)
_moe_gemm_prefill = triton.autotune(configs=_configs(False), key=_KEY)(_moe_gemm_kernel)


@triton.jit
def _moe_combine_kernel(y_ptr, weights_ptr, scatter_ptr, indices_ptr, residual_ptr, out_ptr, n_tokens, N,
                        n_experts, expert_start, K: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                        BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    """Prefill: out[t] = residual[t] + sum over slots (in order) of w * y[scatter[t*K + slot]]."""
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_t = tokens < n_tokens
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for slot in tl.static_range(K):  # fixed slot order: the same sum on every run
        e = tl.load(indices_ptr + tokens * K + slot, mask=mask_t, other=0) - expert_start
        local = mask_t & (e >= 0) & (e < n_experts)
        rows = tl.load(scatter_ptr + tokens * K + slot, mask=local, other=0).to(tl.int64)
        y = tl.load(y_ptr + rows[:, None] * N + offs_n[None, :], mask=local[:, None] & mask_n[None, :], other=0.0)
        acc += tl.load(weights_ptr + tokens * K + slot, mask=local, other=0.0)[:, None] * y.to(tl.float32)
    p_out = tokens.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = mask_t[:, None] & mask_n[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + p_out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + p_out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _check(op: str, name: str, x: torch.Tensor, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
        raise ValueError(f"{op}: {name} must be {list(shape)} {dtype}, got {list(x.shape)} {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (shape {list(x.shape)}, strides {x.stride()})")
    if x.device != device:
        raise ValueError(f"{op}: {name} is on {x.device}, the weights on {device}")


def _check_weights(op: str, blocks, scales, bias) -> tuple[int, int, int]:
    """blocks [E, N, G, 16], scales [E, N, G], bias [E, N] -> (E, N, Kdim)."""
    if blocks.dim() != 4 or blocks.shape[-1] != 16:
        raise ValueError(f"{op}: blocks must be [experts, out, in/32, 16] uint8, got {list(blocks.shape)}")
    E, N, G, _ = blocks.shape
    dev = blocks.device
    _check(op, "blocks", blocks, blocks.shape, torch.uint8, dev)
    _check(op, "scales", scales, (E, N, G), torch.uint8, dev)
    _check(op, "bias", bias, (E, N), torch.bfloat16, dev)
    if N % REPACK_ROWS:
        raise ValueError(f"{op}: the weights' {N} output rows must be a multiple of {REPACK_ROWS}")
    return E, N, G * 32


def _check_routing(op, gather_indx, scatter_indx, indices, weights, counts, offsets, n_tokens, k, n_experts, dev):
    pairs = n_tokens * k
    for name, t, shape, dtype in (("gather_indx", gather_indx, (pairs,), torch.int32),
                                  ("scatter_indx", scatter_indx, (pairs,), torch.int32),
                                  ("indices", indices, (n_tokens, k), torch.int32),
                                  ("weights", weights, (n_tokens, k), torch.float32),
                                  ("counts", counts, (n_experts,), torch.int32),
                                  ("offsets", offsets, (n_experts,), torch.int32)):
        _check(op, name, t, shape, dtype, dev)


def _launch(x, blocks, scales, bias, out, routing_args, *, epilogue, gather_rows, residual, swiglu_limit,
            expert_start, fast, split_hint):
    gather_indx, scatter_indx, indices, weights, counts, offsets = routing_args
    E, N, Kdim = blocks.shape[0], blocks.shape[1], blocks.shape[2] * 32
    T, k = indices.shape
    n_pairs = T * k
    decode = T <= DECODE_TOKENS
    kernel = _moe_gemm_decode if decode else _moe_gemm_prefill
    splits = 1
    if decode:  # the fp32 partial sums of the most splits any decode tile shape may take
        sms = multiprocessors(x.device)
        splits = max(_decode_split(cfg.kwargs, T, E, k, N, Kdim, sms, split_hint) for cfg in kernel.configs)
    ws = out
    if splits > 1 or epilogue == COMBINE:
        ws = torch.empty(splits, n_pairs, N, dtype=torch.float32, device=x.device)
    grid_m = triton.cdiv(n_pairs, 16) + min(E, n_pairs)  # bounds the row tiles of any BLOCK_M >= 16
    cnt = counters(x.device, grid_m * triton.cdiv(N, 16))

    def grid(meta):
        return (triton.cdiv(n_pairs, meta["BLOCK_M"]) + min(E, n_pairs), triton.cdiv(N, meta["BLOCK_N"]),
                meta["SPLIT_K"])

    res = residual if residual is not None else out
    wrap_triton(kernel)[grid](
        x, blocks, scales, bias, out, ws, cnt, gather_indx, scatter_indx, indices, weights, res, counts, offsets,
        E, expert_start, N, Kdim, n_pairs, T, swiglu_limit, x.stride(0), Kdim // 4, out.stride(0), _tokens_bucket(T),
        split_hint, EPILOGUE=epilogue, K_TAIL=Kdim % KCHUNK != 0, GATHER_ROWS=gather_rows, HAS_RESIDUAL=residual is not None,
        EXPERTS_PER_TOKEN=k, E_PAD=max(16, triton.next_power_of_2(E)),
        BLOCK_T=16, FAST=fast and not INTERPRET,
        DOT_DTYPE=DOT_DTYPE)


def _permuted_width(k: int) -> int:
    return triton.cdiv(k, KCHUNK) * KCHUNK


@triton_op("gpt_oss_triton::moe_mlp1", mutates_args=())
def _moe_mlp1_op(x: torch.Tensor, gather_indx: torch.Tensor, scatter_indx: torch.Tensor, indices: torch.Tensor,
                 weights: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor, blocks: torch.Tensor,
                 scales: torch.Tensor, bias: torch.Tensor, swiglu_limit: float, expert_start: int, fast: bool,
                 split_hint: int) -> torch.Tensor:
    E, N, H = _check_weights("moe_mlp1", blocks, scales, bias)
    dev = blocks.device
    if x.dim() != 2:
        raise ValueError(f"moe_mlp1: x must be [tokens, {_permuted_width(H)}] (mxfp4.permute_k), got {list(x.shape)}")
    T, k = indices.shape
    _check("moe_mlp1", "x", x, (T, _permuted_width(H)), torch.bfloat16, dev)
    _check_routing("moe_mlp1", gather_indx, scatter_indx, indices, weights, counts, offsets, T, k, E, dev)
    if N % 2:
        raise ValueError(f"moe_mlp1: the weight's {N} output rows must interleave glu and linear (an even count)")
    out = torch.empty(T * k, _permuted_width(N // 2), dtype=x.dtype, device=dev)
    if T:
        _launch(x, blocks, scales, bias, out, (gather_indx, scatter_indx, indices, weights, counts, offsets),
                epilogue=SWIGLU, gather_rows=True, residual=None, swiglu_limit=swiglu_limit,
                expert_start=expert_start, fast=fast, split_hint=split_hint)
    return out


@triton_op("gpt_oss_triton::moe_mlp2", mutates_args=())
def _moe_mlp2_op(a: torch.Tensor, gather_indx: torch.Tensor, scatter_indx: torch.Tensor, indices: torch.Tensor,
                 weights: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor, blocks: torch.Tensor,
                 scales: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None, expert_start: int,
                 fast: bool, split_hint: int) -> torch.Tensor:
    E, H, I = _check_weights("moe_mlp2", blocks, scales, bias)
    T, k = indices.shape
    dev = blocks.device
    _check("moe_mlp2", "a", a, (T * k, _permuted_width(I)), torch.bfloat16, dev)
    _check_routing("moe_mlp2", gather_indx, scatter_indx, indices, weights, counts, offsets, T, k, E, dev)
    if residual is not None:
        _check("moe_mlp2", "residual", residual, (T, H), torch.bfloat16, dev)
    out = torch.empty(T, H, dtype=a.dtype, device=dev)
    if T == 0:
        return out
    routing_args = (gather_indx, scatter_indx, indices, weights, counts, offsets)
    if T <= DECODE_TOKENS:
        _launch(a, blocks, scales, bias, out, routing_args, epilogue=COMBINE, gather_rows=False,
                residual=residual, swiglu_limit=0.0, expert_start=expert_start, fast=fast, split_hint=split_hint)
        return out
    y = torch.empty(T * k, H, dtype=a.dtype, device=dev)
    _launch(a, blocks, scales, bias, y, routing_args, epilogue=Y_BF16, gather_rows=False,
            residual=None, swiglu_limit=0.0, expert_start=expert_start, fast=fast, split_hint=split_hint)
    block_n = min(triton.next_power_of_2(H), 1024)
    block_t = min(triton.next_power_of_2(T), max(1, 2048 // block_n))
    wrap_triton(_moe_combine_kernel)[(triton.cdiv(T, block_t), triton.cdiv(H, block_n))](
        y, weights, scatter_indx, indices, out if residual is None else residual, out, T, H, E, expert_start, K=k,
        HAS_RESIDUAL=residual is not None, BLOCK_T=block_t, BLOCK_N=block_n)
    return out


def moe_mlp1(x: torch.Tensor, routing, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
             swiglu_limit: float = 7.0, *, expert_start: int = 0, fast: bool = True, split_k: int = 0) -> torch.Tensor:
    """x [T, H'] bf16 (mxfp4.permute_k of [T, H]), routing: RoutingData; W1 (repacked) blocks [E, 2I, H/32, 16],
    scales [E, 2I, H/32] uint8, bias [E, 2I] bf16 -> swiglu(x @ W1[e]^T + b1[e]) [T*K, I'] bf16, rows in grouped
    order, columns in the kernels' K order. The weights hold experts expert_start.. (expert parallelism);
    fast: the weights' scales allow the fast decode (mxfp4_unpack.fast_decode_ok); split_k: 0 picks it."""
    E = blocks.shape[0]
    return _moe_mlp1_op(x, routing.gather_indx, routing.scatter_indx, routing.indices, routing.weights,
                        routing.counts[expert_start:expert_start + E], routing.offsets[expert_start:expert_start + E],
                        blocks, scales, bias, float(swiglu_limit), expert_start, fast, split_k)


def moe_mlp2(a: torch.Tensor, routing, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
             residual: torch.Tensor | None = None, *, expert_start: int = 0, fast: bool = True,
             split_k: int = 0) -> torch.Tensor:
    """a [T*K, I'] bf16 (grouped order, kernels' K order: moe_mlp1's output), routing: RoutingData; W2 (repacked)
    blocks [E, H, I/32, 16], scales [E, H, I/32], bias [E, H] bf16; residual [T, H] bf16 or None
    -> residual + sum_k weights[:, k] * (a @ W2[e]^T + b2[e]) [T, H] bf16 (slots of other ranks' experts add 0)."""
    E = blocks.shape[0]
    return _moe_mlp2_op(a, routing.gather_indx, routing.scatter_indx, routing.indices, routing.weights,
                        routing.counts[expert_start:expert_start + E], routing.offsets[expert_start:expert_start + E],
                        blocks, scales, bias, residual, expert_start, fast, split_k)


@traffic(_moe_gemm_kernel)
def _moe_gemm_traffic(launch, constexprs, env):
    """The touched experts' packed weights (uniform routing), each row tile's activations, partial sums, outputs."""
    a = launch.args
    E, N, K, k, T = a["n_experts"], a["N"], a["K"], a["EXPERTS_PER_TOKEN"], a["n_tokens"]
    bm, bn, bk, splits = constexprs["BLOCK_M"], constexprs["BLOCK_N"], constexprs["BLOCK_K"], constexprs["SPLIT_K"]
    pairs = T * k
    weights = expected_experts(E, k, T) * N * K
    partial = pairs * N * 4 * splits if splits > 1 or a["EPILOGUE"] == COMBINE else 0
    out = tensor_bytes(a["out_ptr"]) if a["EPILOGUE"] != COMBINE else T * N * 2
    trips = expected_row_tiles(E, k, T, bm) * triton.cdiv(N, bn) * triton.cdiv(K, bk)
    return Traffic(read=weights * 17 / 32 + pairs * K * 2 + partial, written=out + partial, weights=weights,
                   loop_trips=trips)


def _pair_experts(routing) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, expert) of each grouped row, as int64."""
    pairs = routing.gather_indx.long()
    return pairs // routing.experts_per_token, routing.indices.flatten().long()[pairs]


def _dense(blocks, scales, e):
    """Expert e of repacked weights, dequantized in fp32."""
    b, s = mxfp4_unrepack(blocks[e:e + 1], scales[e:e + 1])
    return mxfp4_dequantize(b[0], s[0], torch.float32)


def moe_mlp1_ref(x, routing, blocks, scales, bias, swiglu_limit: float = 7.0, *, expert_start: int = 0) -> torch.Tensor:
    """moe_mlp1 in fp32 from the dequantized weights, in natural orders: x [T, H] -> [T*K, I] fp32 in grouped order
    (rows of experts not held here: 0)."""
    tokens, experts = _pair_experts(routing)
    out = torch.zeros(len(tokens), blocks.shape[1] // 2, dtype=torch.float32, device=x.device)
    for e in experts.unique().tolist():
        if not expert_start <= e < expert_start + blocks.shape[0]:
            continue
        rows = (experts == e).nonzero(as_tuple=True)[0]
        h = x[tokens[rows]].float() @ _dense(blocks, scales, e - expert_start).T + bias[e - expert_start].float()
        out[rows] = swiglu_ref(h, swiglu_limit)
    return out


def moe_mlp2_ref(a, routing, blocks, scales, bias, residual=None, *, expert_start: int = 0) -> torch.Tensor:
    """moe_mlp2 in fp32 from the dequantized weights, a [T*K, I] in natural order: [T, H] fp32."""
    tokens, experts = _pair_experts(routing)
    y = torch.zeros(len(tokens), blocks.shape[1], dtype=torch.float32, device=a.device)
    for e in experts.unique().tolist():
        if not expert_start <= e < expert_start + blocks.shape[0]:
            continue
        rows = (experts == e).nonzero(as_tuple=True)[0]
        y[rows] = a[rows].float() @ _dense(blocks, scales, e - expert_start).T + bias[e - expert_start].float()
    out = (y[routing.scatter_indx.long()].view(routing.n_tokens, routing.experts_per_token, -1)
           * routing.weights[..., None]).sum(1)
    return out if residual is None else out + residual.float()

