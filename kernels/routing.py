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
"""
import dataclasses

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._interpreter import interpreting, wrap_triton
from .launch_plan import Traffic, tensor_bytes, traffic

# The interpreter's tl.dot is wrong on bf16 operands; fp32 holds bf16 values exactly.
DOT_DTYPE = tl.float32 if interpreting() else tl.bfloat16
MAX_EXPERTS = 256
BLOCK_T = 32  # tokens per routing program; its one-hot [BLOCK_T * K, E] must stay in registers
BLOCK_B = 64  # block histograms per step of the prefix-sum program


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

    # Top-k by repeated arg-max; the lowest index among equal maxima wins, like a stable descending sort.
    vals = tl.where(mask_e[None, :], logits.to(tl.float32), float("-inf"))
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
    out_mask = mask_t[:, None] & (offs_k < K)[None, :]
    tl.store(indices_ptr + out_offs, top_i, mask=out_mask)
    tl.store(weights_ptr + out_offs, p, mask=out_mask)

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
    logits = torch.empty(T, E, dtype=t.dtype, device=dev)
    indices = torch.empty(T, K, dtype=torch.int32, device=dev)
    weights = torch.empty(T, K, dtype=torch.float32, device=dev)
    counts = torch.zeros(E, dtype=torch.int32, device=dev)
    offsets = torch.zeros(E, dtype=torch.int32, device=dev)
    gather_indx = torch.empty(T * K, dtype=torch.int32, device=dev)
    scatter_indx = torch.empty(T * K, dtype=torch.int32, device=dev)
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
