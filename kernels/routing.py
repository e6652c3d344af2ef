"""Fused MoE routing: router GEMM, top-k, softmax over the k, and the bookkeeping the expert GEMMs need.

    logits  [T, E] = (t [T, H] @ W [E, H]^T + b [E]) accumulated in fp32, rounded to t.dtype
    indices [T, K] = the K largest logits of each token, largest first, ties to the lower expert index
    weights [T, K] = softmax over those K logits, fp32

Rounding the logits to the activation dtype before the top-k is what the reference implementations' bf16
router linear does; choosing among fp32 logits instead would pick other experts on near-ties.

A pair p = token * K + slot. The pairs are grouped by expert, stably (ascending p within an expert):
    counts [E]        pairs per expert
    offsets [E]       exclusive prefix sum of counts: expert e's pairs sit at offsets[e] .. offsets[e] + counts[e]
    gather_indx [T*K] grouped position -> pair;  scatter_indx [T*K]: pair -> grouped position

No host synchronisation and no loop over experts on the host; at most three launches:
1. per block of BLOCK_T tokens: logits, top-k, softmax, and the block's expert histogram; when a single
   block holds every token (decode) it also places the pairs, and routing is one launch;
2. one program: prefix sums of the block histograms -> counts, offsets and each block's start per expert;
3. per block: pair -> offsets[e] + its block's start for e + its rank among the block's pairs of expert e.

`routing_decode` (up to DECODE_TOKENS tokens) also runs the RMSNorm before the router, in one launch whose
programs split the router's weights (16 experts each), the tokens (16 each) and, while that leaves fewer than
16 programs, the hidden dim, so the weights stream from many SMs: each program normalises its tokens (their
whole rows for the sum of squares, then its slice for t), writes t in the expert GEMMs' K order
(mxfp4.permute_k) when it holds the first experts, and stores its fp32 partial logits; the last program to
arrive (kernels/arrival.py) sums the slices in order, adds the bias, rounds the logits to bf16 and runs top-k,
softmax and the pair bookkeeping for all tokens.
"""
import dataclasses

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._interpreter import interpreting, wrap_triton
from .arrival import counters, last_to_arrive
from .launch_plan import Traffic, tensor_bytes, traffic
from .mxfp4 import KCHUNK
from .mxfp4_unpack import permuted_k

_KCHUNK = tl.constexpr(KCHUNK)
# The interpreter's tl.dot is wrong on bf16 operands; fp32 holds bf16 values exactly.
DOT_DTYPE = tl.float32 if interpreting() else tl.bfloat16
MAX_EXPERTS = 256
BLOCK_T = 32  # tokens per routing program; its one-hot [BLOCK_T * K, E] must stay in registers
BLOCK_B = 64  # block histograms per step of the prefix-sum program
DECODE_TOKENS = 64  # up to this many tokens, `routing_decode`: norm, router, top-k and bookkeeping in one launch
SS_TILE = 8192  # elements of routing_decode's sum-of-squares tile: a 2880-wide row in one load
_FENCE = tl.constexpr(not interpreting())


@dataclasses.dataclass(frozen=True)
class RoutingData:
    """Routing of T tokens to K of E experts (a pair p = token * K + slot).

    logits [T, E] t.dtype; indices [T, K] int32 (largest logit first); weights [T, K] fp32;
    counts [E] int32; offsets [E] int32 (exclusive prefix sum of counts);
    gather_indx [T*K] int32 (grouped position -> pair); scatter_indx [T*K] int32 (pair -> grouped position).
    """
    logits: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    counts: torch.Tensor
    offsets: torch.Tensor
    gather_indx: torch.Tensor
    scatter_indx: torch.Tensor

    def __post_init__(self):
        T, E = self.logits.shape
        K = self.indices.shape[1]
        expected = {"indices": ((T, K), torch.int32), "weights": ((T, K), torch.float32),
                    "counts": ((E,), torch.int32), "offsets": ((E,), torch.int32),
                    "gather_indx": ((T * K,), torch.int32), "scatter_indx": ((T * K,), torch.int32)}
        for name, (shape, dtype) in expected.items():
            got = getattr(self, name)
            if tuple(got.shape) != shape or got.dtype != dtype:
                raise ValueError(f"RoutingData.{name}: expected {list(shape)} {dtype}, got {list(got.shape)} {got.dtype}")

    @property
    def n_tokens(self) -> int:
        return self.logits.shape[0]

    @property
    def n_experts(self) -> int:
        return self.logits.shape[1]

    @property
    def experts_per_token(self) -> int:
        return self.indices.shape[1]


@triton.jit
def _block_pairs(top_i, offs_t, n_tokens, K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr):
    """Experts top_i [BLOCK_T, K_PAD] of tokens offs_t -> (pairs [P], valid [P], one-hot [P, E_PAD] int32)."""
    P: tl.constexpr = top_i.shape[0] * K_PAD
    offs_k = tl.arange(0, K_PAD)
    pairs = tl.reshape(offs_t[:, None] * K + offs_k[None, :], (P,))
    valid = tl.reshape((offs_t < n_tokens)[:, None] & (offs_k < K)[None, :], (P,))
    experts = tl.reshape(top_i, (P,))
    onehot = ((experts[:, None] == tl.arange(0, E_PAD)[None, :]) & valid[:, None]).to(tl.int32)
    return pairs, valid, onehot


@triton.jit
def _place_pairs(pairs, valid, onehot, base, gather_ptr, scatter_ptr):
    """Each valid pair goes to base[e] + the number of earlier pairs of its expert e in this block."""
    earlier = tl.cumsum(onehot, 0) - onehot
    pos = tl.sum((earlier + base[None, :]) * onehot, 1)
    tl.store(gather_ptr + pos, pairs, mask=valid)
    tl.store(scatter_ptr + pairs, pos, mask=valid)


@triton.jit
def _top_k(logits, offs_t, n_tokens, n_experts, indices_ptr, weights_ptr, K: tl.constexpr, K_PAD: tl.constexpr,
           E_PAD: tl.constexpr):
    """Top-k of logits [BLOCK_T, E_PAD] (tokens offs_t) by repeated arg-max, the lowest index winning among equal
    maxima (a stable descending sort), and the softmax over the k: stores indices and weights, returns
    the experts [BLOCK_T, K_PAD]."""
    BLOCK_T: tl.constexpr = logits.shape[0]
    offs_e = tl.arange(0, E_PAD)
    vals = tl.where((offs_e < n_experts)[None, :], logits.to(tl.float32), float("-inf"))
    offs_k = tl.arange(0, K_PAD)
    top_v = tl.full((BLOCK_T, K_PAD), float("-inf"), tl.float32)
    top_i = tl.zeros((BLOCK_T, K_PAD), tl.int32)
    for k in tl.static_range(K):
        best = tl.max(vals, 1)
        expert = tl.min(tl.where(vals == best[:, None], offs_e[None, :], E_PAD), 1)
        top_v = tl.where(offs_k[None, :] == k, best[:, None], top_v)
        top_i = tl.where(offs_k[None, :] == k, expert[:, None], top_i)
        vals = tl.where(offs_e[None, :] == expert[:, None], float("-inf"), vals)
    p = tl.exp(top_v - tl.max(top_v, 1)[:, None])  # padding slots hold -inf: weight 0
    p = p / tl.sum(p, 1)[:, None]
    out_offs = offs_t[:, None] * K + offs_k[None, :]
    out_mask = (offs_t < n_tokens)[:, None] & (offs_k < K)[None, :]
    tl.store(indices_ptr + out_offs, top_i, mask=out_mask)
    tl.store(weights_ptr + out_offs, p, mask=out_mask)
    return top_i


@triton.jit
def _routing_kernel(t_ptr, w_ptr, b_ptr, logits_ptr, indices_ptr, weights_ptr, hist_ptr,
                    counts_ptr, offsets_ptr, gather_ptr, scatter_ptr, n_tokens, H, n_experts,
                    K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_H: tl.constexpr, SINGLE_BLOCK: tl.constexpr, DOT_DTYPE: tl.constexpr):
    pid = tl.program_id(0)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_tokens
    offs_e = tl.arange(0, E_PAD)
    mask_e = offs_e < n_experts
    acc = tl.zeros((BLOCK_T, E_PAD), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        x = tl.load(t_ptr + offs_t.to(tl.int64)[:, None] * H + offs_h[None, :],
                    mask=mask_t[:, None] & mask_h[None, :], other=0.0)
        w = tl.load(w_ptr + offs_e[None, :] * H + offs_h[:, None], mask=mask_e[None, :] & mask_h[:, None], other=0.0)
        acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc)
    bias = tl.load(b_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    logits = (acc + bias[None, :]).to(logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + offs_t.to(tl.int64)[:, None] * n_experts + offs_e[None, :], logits,
             mask=mask_t[:, None] & mask_e[None, :])

    top_i = _top_k(logits, offs_t, n_tokens, n_experts, indices_ptr, weights_ptr, K, K_PAD, E_PAD)
    pairs, valid, onehot = _block_pairs(top_i, offs_t, n_tokens, K, K_PAD, E_PAD)
    hist = tl.sum(onehot, 0)
    if SINGLE_BLOCK:
        offsets = tl.cumsum(hist, 0) - hist
        tl.store(counts_ptr + offs_e, hist, mask=mask_e)
        tl.store(offsets_ptr + offs_e, offsets, mask=mask_e)
        _place_pairs(pairs, valid, onehot, offsets, gather_ptr, scatter_ptr)
    else:
        tl.store(hist_ptr + pid * E_PAD + offs_e, hist)


@triton.jit
def _routing_offsets_kernel(hist_ptr, counts_ptr, offsets_ptr, n_blocks, n_experts,
                            E_PAD: tl.constexpr, BLOCK_B: tl.constexpr):
    """hist [n_blocks, E_PAD] becomes, in place, each block's first rank within each expert's pairs."""
    offs_e = tl.arange(0, E_PAD)
    total = tl.zeros((E_PAD,), tl.int32)
    for b0 in range(0, n_blocks, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        ptrs = hist_ptr + offs_b[:, None] * E_PAD + offs_e[None, :]
        mask = (offs_b < n_blocks)[:, None]
        h = tl.load(ptrs, mask=mask, other=0)
        tl.store(ptrs, tl.cumsum(h, 0) - h + total[None, :], mask=mask)
        total += tl.sum(h, 0)
    mask_e = offs_e < n_experts
    tl.store(counts_ptr + offs_e, total, mask=mask_e)
    tl.store(offsets_ptr + offs_e, tl.cumsum(total, 0) - total, mask=mask_e)


@triton.jit
def _routing_place_kernel(indices_ptr, hist_ptr, offsets_ptr, gather_ptr, scatter_ptr, n_tokens, n_experts,
                          K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    offs_t = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_k = tl.arange(0, K_PAD)
    top_i = tl.load(indices_ptr + offs_t[:, None] * K + offs_k[None, :],
                    mask=(offs_t < n_tokens)[:, None] & (offs_k < K)[None, :], other=0)
    pairs, valid, onehot = _block_pairs(top_i, offs_t, n_tokens, K, K_PAD, E_PAD)
    offs_e = tl.arange(0, E_PAD)
    base = tl.load(offsets_ptr + offs_e, mask=offs_e < n_experts, other=0) + tl.load(hist_ptr + pid * E_PAD + offs_e)
    _place_pairs(pairs, valid, onehot, base, gather_ptr, scatter_ptr)


@triton.jit
def _routing_decode_kernel(x_ptr, scale_ptr, w_ptr, b_ptr, t_ptr, logits_ptr, part_ptr, indices_ptr, weights_ptr,
                           counts_ptr, offsets_ptr, gather_ptr, scatter_ptr, cnt_ptr, n_tokens, H, n_experts, eps,
                           stride_x, stride_t, h_split, K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr,
                           SS_ROWS: tl.constexpr, SS_W: tl.constexpr, SS_TRIPS: tl.constexpr,
                           H_SPLITS: tl.constexpr,
                           DOT_DTYPE: tl.constexpr):
    pid_e, pid_t, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_tokens
    p_x = x_ptr + offs_t.to(tl.int64)[:, None] * stride_x
    # The whole rows' sum of squares in [SS_ROWS, SS_W] tiles: only as many rows as there are tokens (all of
    # them in the first SS_ROWS when SS_ROWS < BLOCK_T), so a token's row is one load and one reduction.
    offs_r = pid_t * BLOCK_T + tl.arange(0, SS_ROWS)
    p_r = x_ptr + offs_r.to(tl.int64)[:, None] * stride_x
    ss_r = tl.zeros((SS_ROWS,), dtype=tl.float32)
    for i in tl.static_range(SS_TRIPS):
        offs_s = i * SS_W + tl.arange(0, SS_W)
        xs = tl.load(p_r + offs_s[None, :], mask=(offs_r < n_tokens)[:, None] & (offs_s < H)[None, :],
                     other=0.0).to(tl.float32)
        ss_r += tl.sum(xs * xs, 1)
    if SS_ROWS == BLOCK_T:
        ss = ss_r
    elif SS_ROWS == 1:  # one token
        ss = tl.where(tl.arange(0, BLOCK_T) == 0, tl.sum(ss_r, 0), 0.0)
    else:  # rows past SS_ROWS hold no token
        ss = tl.sum(tl.where(tl.arange(0, BLOCK_T)[:, None] == tl.arange(0, SS_ROWS)[None, :], ss_r[None, :], 0.0), 1)
    rstd = tl.rsqrt(ss / H + eps)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = offs_e < n_experts
    acc = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for h0 in range(pid_h * h_split, tl.minimum((pid_h + 1) * h_split, H), BLOCK_H):  # this program's slice
        offs_h = h0 + tl.arange(0, BLOCK_H)
        mask_h = offs_h < H
        x = tl.load(p_x + offs_h[None, :], mask=mask_t[:, None] & mask_h[None, :], other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        t = (x * rstd[:, None] * scale[None, :]).to(t_ptr.dtype.element_ty)  # the activation dtype, as rmsnorm
        if pid_e == 0:  # t's padding to whole K chunks too (x is 0 there): blocks of BLOCK_H end on a chunk
            tl.store(t_ptr + offs_t.to(tl.int64)[:, None] * stride_t + permuted_k(offs_h)[None, :], t,
                     mask=mask_t[:, None] & (offs_h < tl.cdiv(H, _KCHUNK) * _KCHUNK)[None, :])
        w = tl.load(w_ptr + offs_e[None, :] * H + offs_h[:, None], mask=mask_e[None, :] & mask_h[:, None], other=0.0)
        acc = tl.dot(t.to(DOT_DTYPE), w.to(DOT_DTYPE), acc)
    p_part = (pid_h * n_tokens + offs_t.to(tl.int64))[:, None] * n_experts + offs_e[None, :]
    tl.store(part_ptr + p_part, acc, mask=mask_t[:, None] & mask_e[None, :])
    if not last_to_arrive(cnt_ptr, tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2), pid_e, _FENCE):
        return
    # The logits (slices summed in order, the bias, rounded as a bf16 linear would), top-k of every token and
    # the histogram, then each pair's grouped position: BLOCK_T tokens at a time.
    offs_ee = tl.arange(0, E_PAD)
    mask_ee = offs_ee < n_experts
    bias = tl.load(b_ptr + offs_ee, mask=mask_ee, other=0.0).to(tl.float32)
    hist = tl.zeros((E_PAD,), dtype=tl.int32)
    for t0 in range(0, n_tokens, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        mask = (offs_t < n_tokens)[:, None] & mask_ee[None, :]
        rows = offs_t.to(tl.int64)[:, None] * n_experts + offs_ee[None, :]
        logits = bias[None, :] + tl.zeros((BLOCK_T, E_PAD), dtype=tl.float32)
        for s in range(H_SPLITS):
            logits += tl.load(part_ptr + s * n_tokens * n_experts + rows, mask=mask, other=0.0, cache_modifier=".cg")
        logits = logits.to(logits_ptr.dtype.element_ty)
        tl.store(logits_ptr + rows, logits, mask=mask)
        top_i = _top_k(logits, offs_t, n_tokens, n_experts, indices_ptr, weights_ptr, K, K_PAD, E_PAD)
        _, _, onehot = _block_pairs(top_i, offs_t, n_tokens, K, K_PAD, E_PAD)
        hist += tl.sum(onehot, 0)
    base = tl.cumsum(hist, 0) - hist
    tl.store(counts_ptr + offs_ee, hist, mask=mask_ee)
    tl.store(offsets_ptr + offs_ee, base, mask=mask_ee)
    tl.debug_barrier()  # the indices this program stored, read back by other threads
    offs_k = tl.arange(0, K_PAD)
    for t0 in range(0, n_tokens, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        top_i = tl.load(indices_ptr + offs_t[:, None] * K + offs_k[None, :],
                        mask=(offs_t < n_tokens)[:, None] & (offs_k < K)[None, :], other=0)
        pairs, valid, onehot = _block_pairs(top_i, offs_t, n_tokens, K, K_PAD, E_PAD)
        _place_pairs(pairs, valid, onehot, base, gather_ptr, scatter_ptr)
        base += tl.sum(onehot, 0)


def _routing_outputs(T: int, E: int, K: int, dtype: torch.dtype, dev: torch.device) -> tuple:
    """The RoutingData fields, allocated; the kernels write every element, except with no token: counts 0."""
    new = torch.zeros if T == 0 else torch.empty  # no fill launched when the kernels write it all
    return (torch.empty(T, E, dtype=dtype, device=dev), torch.empty(T, K, dtype=torch.int32, device=dev),
            torch.empty(T, K, dtype=torch.float32, device=dev), new(E, dtype=torch.int32, device=dev),
            new(E, dtype=torch.int32, device=dev), torch.empty(T * K, dtype=torch.int32, device=dev),
            torch.empty(T * K, dtype=torch.int32, device=dev))


def _check_routing_inputs(t, gate_weight, gate_bias, experts_per_token):
    if t.dim() != 2 or t.dtype != torch.bfloat16:
        raise ValueError(f"routing: t must be [tokens, hidden] bf16, got {list(t.shape)} {t.dtype}")
    E = gate_weight.shape[0]
    if gate_weight.dim() != 2 or gate_weight.shape[1] != t.shape[1] or gate_weight.dtype != t.dtype:
        raise ValueError(f"routing: gate_weight must be [experts, {t.shape[1]}] {t.dtype}, "
                         f"got {list(gate_weight.shape)} {gate_weight.dtype}")
    if tuple(gate_bias.shape) != (E,) or gate_bias.dtype != t.dtype:
        raise ValueError(f"routing: gate_bias must be [{E}] {t.dtype}, got {list(gate_bias.shape)} {gate_bias.dtype}")
    if not 0 < E <= MAX_EXPERTS or not 0 < experts_per_token <= E:
        raise ValueError(f"routing: need 0 < experts_per_token ({experts_per_token}) <= experts ({E}) <= {MAX_EXPERTS}")
    for name, x in (("t", t), ("gate_weight", gate_weight), ("gate_bias", gate_bias)):
        if not x.is_contiguous():
            raise ValueError(f"routing: {name} must be contiguous (strides {x.stride()})")
        if x.device != t.device:
            raise ValueError(f"routing: {name} is on {x.device}, t on {t.device}")


@triton_op("gpt_oss_triton::routing", mutates_args=())
def _routing_op(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor, experts_per_token: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                           torch.Tensor]:
    _check_routing_inputs(t, gate_weight, gate_bias, experts_per_token)
    (T, H), E, K = t.shape, gate_weight.shape[0], experts_per_token
    dev = t.device
    logits, indices, weights, counts, offsets, gather_indx, scatter_indx = _routing_outputs(T, E, K, t.dtype, dev)
    if T == 0:
        return logits, indices, weights, counts, offsets, gather_indx, scatter_indx
    E_PAD, K_PAD = max(16, triton.next_power_of_2(E)), triton.next_power_of_2(K)
    block_t = max(16, triton.next_power_of_2(T)) if T <= BLOCK_T else BLOCK_T  # tl.dot needs >= 16 rows
    n_blocks = triton.cdiv(T, block_t)
    single = n_blocks == 1
    hist = counts if single else torch.empty(n_blocks, E_PAD, dtype=torch.int32, device=dev)
    num_warps = 8 if E_PAD >= 128 else 4
    wrap_triton(_routing_kernel)[(n_blocks,)](
        t, gate_weight, gate_bias, logits, indices, weights, hist, counts, offsets, gather_indx, scatter_indx,
        T, H, E, K=K, K_PAD=K_PAD, E_PAD=E_PAD, BLOCK_T=block_t, BLOCK_H=64, SINGLE_BLOCK=single,
        DOT_DTYPE=DOT_DTYPE, num_warps=num_warps)
    if not single:
        wrap_triton(_routing_offsets_kernel)[(1,)](hist, counts, offsets, n_blocks, E, E_PAD=E_PAD, BLOCK_B=BLOCK_B,
                                                    num_warps=num_warps)
        wrap_triton(_routing_place_kernel)[(n_blocks,)](
            indices, hist, offsets, gather_indx, scatter_indx, T, E, K=K, K_PAD=K_PAD, E_PAD=E_PAD, BLOCK_T=block_t,
            num_warps=num_warps)
    return logits, indices, weights, counts, offsets, gather_indx, scatter_indx


def routing(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor, experts_per_token: int) -> RoutingData:
    """Route t [T, H] bf16 with the router gate_weight [E, H] / gate_bias [E] (bf16) to experts_per_token experts."""
    return RoutingData(*_routing_op(t, gate_weight, gate_bias, experts_per_token))


@traffic(_routing_kernel)
def _routing_traffic(launch, constexprs, env):
    """The router weights by each token block, its tokens' rows, the logits and routing outputs."""
    a = launch.args
    blocks = triton.cdiv(a["n_tokens"], a["BLOCK_T"])
    out = sum(tensor_bytes(a[n]) for n in ("logits_ptr", "indices_ptr", "weights_ptr", "gather_ptr", "scatter_ptr"))
    return Traffic(read=blocks * tensor_bytes(a["w_ptr"]) + tensor_bytes(a["t_ptr"]), written=out,
                   loop_trips=blocks * triton.cdiv(a["H"], a["BLOCK_H"]))


@triton_op("gpt_oss_triton::routing_decode", mutates_args=())
def _routing_decode_op(x: torch.Tensor, norm_scale: torch.Tensor, eps: float, gate_weight: torch.Tensor,
                       gate_bias: torch.Tensor, experts_per_token: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor, torch.Tensor]:
    _check_routing_inputs(x, gate_weight, gate_bias, experts_per_token)
    (T, H), E, K = x.shape, gate_weight.shape[0], experts_per_token
    if T > DECODE_TOKENS:
        raise ValueError(f"routing_decode: {T} tokens; at most {DECODE_TOKENS} (use routing)")
    if tuple(norm_scale.shape) != (H,) or not norm_scale.is_floating_point() or norm_scale.device != x.device:
        raise ValueError(f"routing_decode: norm_scale must be a float [{H}] on {x.device}, got "
                         f"{list(norm_scale.shape)} {norm_scale.dtype} on {norm_scale.device}")
    dev = x.device
    t = torch.empty(T, triton.cdiv(H, KCHUNK) * KCHUNK, dtype=x.dtype, device=dev)
    logits, indices, weights, counts, offsets, gather_indx, scatter_indx = _routing_outputs(T, E, K, x.dtype, dev)
    if T:
        block_t, block_e, block_h = 16, 16, 256 if interpreting() else 128  # 16: tl.dot's least tile
        programs = triton.cdiv(E, block_e) * triton.cdiv(T, block_t)
        # Split the hidden dim too while the grid is small: the router's weights stream from more SMs.
        h_splits = max(1, min(triton.cdiv(H, block_h), 16 // programs))
        h_split = triton.cdiv(triton.cdiv(H, h_splits), block_h) * block_h
        h_splits = triton.cdiv(H, h_split)
        ss_rows = min(block_t, triton.next_power_of_2(T))
        ss_w = min(triton.next_power_of_2(H), SS_TILE // ss_rows)
        part = torch.empty(h_splits, T, E, dtype=torch.float32, device=dev)
        wrap_triton(_routing_decode_kernel)[(triton.cdiv(E, block_e), triton.cdiv(T, block_t), h_splits)](
            x, norm_scale, gate_weight, gate_bias, t, logits, part, indices, weights, counts, offsets, gather_indx,
            scatter_indx, counters(dev, 1), T, H, E, eps, x.stride(0), t.stride(0), h_split, K=K,
            K_PAD=triton.next_power_of_2(K), E_PAD=max(16, triton.next_power_of_2(E)), BLOCK_T=block_t,
            BLOCK_E=block_e, BLOCK_H=block_h, SS_ROWS=ss_rows, SS_W=ss_w, SS_TRIPS=triton.cdiv(H, ss_w),
            H_SPLITS=h_splits, DOT_DTYPE=DOT_DTYPE,
            num_warps=8 if E > 64 else 4)
    return t, logits, indices, weights, counts, offsets, gather_indx, scatter_indx


def routing_decode(x: torch.Tensor, norm_scale: torch.Tensor, eps: float, gate_weight: torch.Tensor,
                   gate_bias: torch.Tensor, experts_per_token: int) -> tuple[torch.Tensor, RoutingData]:
    """x [T, H] bf16 (T <= DECODE_TOKENS), the RMSNorm's scale [H] and eps, the router [E, H] / [E] ->
    (t = rmsnorm(x) [T, cdiv(H, 64) * 64] in the expert GEMMs' K order, the routing of t), in one launch."""
    t, *fields = _routing_decode_op(x, norm_scale, eps, gate_weight, gate_bias, experts_per_token)
    return t, RoutingData(*fields)


@traffic(_routing_decode_kernel)
def _routing_decode_traffic(launch, constexprs, env):
    """Each program: its tokens' whole rows (sum of squares), their slice again, its slice of its experts' router
    rows; partial logits out and back in; t, the logits and the routing outputs."""
    a = launch.args
    T, H, E = a["n_tokens"], a["H"], a["n_experts"]
    e_blocks, t_blocks, splits = triton.cdiv(E, a["BLOCK_E"]), triton.cdiv(T, a["BLOCK_T"]), a["H_SPLITS"]
    rows = e_blocks * (splits + 1) * T * H * a["x_ptr"].element_size()
    partial = 2 * splits * T * E * 4
    out = tensor_bytes(a["t_ptr"]) + tensor_bytes(a["logits_ptr"]) + T * a["K"] * 16 + E * 8
    return Traffic(read=rows + t_blocks * tensor_bytes(a["w_ptr"]) + partial // 2, written=out + partial // 2,
                   loop_trips=e_blocks * t_blocks * splits * triton.cdiv(a["h_split"], a["BLOCK_H"]))
