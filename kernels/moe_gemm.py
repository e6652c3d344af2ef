"""Grouped expert GEMMs of the MoE block on packed MXFP4 weights, with their epilogues fused.

Rows are the (token, slot) pairs in expert-grouped order (`routing.RoutingData`): grouped position p holds
pair gather_indx[p] = token * K + slot, routed to expert e. Weights stay in the checkpoint layout,
blocks [E, N, Kdim/32, 16] uint8 + scales [E, N, Kdim/32] uint8, and are dequantized tile by tile in
registers (`mxfp4_unpack`); products accumulate in fp32.

    moe_mlp1: x [T, H] bf16 -> a [T*K, I] bf16 (grouped order)
        h [2I] = x[token] @ W1[e]^T + b1[e];  a[p] = swiglu(h):
        glu = min(h[0::2], limit), lin = clamp(h[1::2], -limit, limit), a = glu * sigmoid(1.702 glu) * (lin + 1)
    moe_mlp2: a [T*K, I] bf16 -> out [T, H] bf16
        y[p] [H] = a[p] @ W2[e]^T + b2[e], rounded to bf16;  out[t] = (residual[t]) + sum_slot w[t, slot] * y[scatter_indx[t*K + slot]]

Tiles: program (m, n) computes BLOCK_M grouped rows of one expert by BLOCK_N output columns. The m-th tile's
expert comes from the counts on the device (`expert_tile`): the grid is sized by the bound
cdiv(T*K, BLOCK_M) + min(E, T*K) on the number of non-empty row tiles, programs past the real count
exit at once, and an expert with no pairs owns no tile. Regimes, tuned apart:
- decode (T <= 64): few rows per expert, so BLOCK_M = 16 and narrow BLOCK_N with long BLOCK_K: a GEMV-like
  split in which hundreds of programs each stream a slab of packed weight rows with wide loads;
- prefill: tensor-core tiles, BLOCK_M 64..128.
The k slots of a token are summed by a separate combine kernel in slot order: deterministic, no atomics.
"""

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._interpreter import interpreting, wrap_triton
from .launch_plan import Traffic, tensor_bytes, traffic
from .mxfp4 import mxfp4_dequantize
from .mxfp4_unpack import mxfp4_unpack
from .reference import swiglu_ref

INTERPRET = interpreting()
# The interpreter's tl.dot is wrong on bf16 operands; fp32 holds bf16 and MXFP4 values exactly.
DOT_DTYPE = tl.float32 if INTERPRET else tl.bfloat16
DECODE_TOKENS = 64
SWIGLU_ALPHA = tl.constexpr(1.702)


def _configs(decode: bool) -> list:
    """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages); every one compiles for sm_90 without register spills
    (tests/kernels/test_moe_gemm_sm90.py). Larger prefill tiles (128 x 128) spill with the fp32 unpack."""
    if INTERPRET:  # one config: no autotuning in the interpreter, and distinct tiles for the two regimes
        tiles = [(16, 256, 128, 4, 4)] if decode else [(32, 128, 128, 4, 3)]
    elif decode:
        tiles = [(16, 16, 128, 2, 4), (16, 16, 256, 2, 4), (16, 32, 128, 2, 4), (16, 16, 256, 4, 4),
                 (16, 32, 128, 4, 3), (16, 32, 256, 4, 3), (16, 64, 128, 4, 3), (16, 64, 64, 4, 4)]
    else:
        tiles = [(64, 64, 64, 8, 3), (64, 128, 64, 8, 3), (128, 64, 64, 8, 3), (64, 64, 128, 8, 3)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in tiles]


def _tokens_bucket(n_tokens: int) -> int:
    """Autotune key: one tuning per power of two of the token count."""
    return min(triton.next_power_of_2(n_tokens), 1 << 14)


@triton.jit
def expert_tile(pid_m, counts_ptr, offsets_ptr, n_experts, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """The pid_m-th row tile over the experts' groups: (expert, first grouped row, rows); rows <= 0 past the last."""
    offs_e = tl.arange(0, E_PAD)
    counts = tl.load(counts_ptr + offs_e, mask=offs_e < n_experts, other=0)
    tiles = tl.cdiv(counts, BLOCK_M)
    tiles_end = tl.cumsum(tiles, 0)
    expert = tl.sum((tiles_end <= pid_m).to(tl.int32), 0)
    mine = offs_e == expert
    first_tile = tl.sum(tl.where(mine, tiles_end - tiles, 0), 0)
    count = tl.sum(tl.where(mine, counts, 0), 0)
    start = tl.load(offsets_ptr + expert, mask=expert < n_experts, other=0)
    m0 = (pid_m - first_tile) * BLOCK_M
    return expert, start + m0, tl.minimum(count - m0, BLOCK_M)


@triton.jit
def _moe_gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, out_ptr, gather_ptr, counts_ptr, offsets_ptr,
                     n_experts, N, K, experts_per_token, swiglu_limit, tokens_bucket,
                     GATHER_ROWS: tl.constexpr, SWIGLU: tl.constexpr, E_PAD: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr):
    expert, first_row, n_rows = expert_tile(tl.program_id(0), counts_ptr, offsets_ptr, n_experts, E_PAD, BLOCK_M)
    if n_rows <= 0:
        return
    rows = first_row + tl.arange(0, BLOCK_M)
    mask_m = tl.arange(0, BLOCK_M) < n_rows
    if GATHER_ROWS:  # mlp1 reads each token's row where it sits; mlp2's input is already grouped
        x_rows = tl.load(gather_ptr + rows, mask=mask_m, other=0) // experts_per_token
    else:
        x_rows = rows
    p_x = x_ptr + x_rows.to(tl.int64)[:, None] * K
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    expert = expert.to(tl.int64)
    p_w = w_ptr + expert * N * (K // 2) + offs_n[:, None] * (K // 2)
    p_s = s_ptr + expert * N * (K // 32) + offs_n[:, None] * (K // 32)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        offs_b = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        offs_g = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        x = tl.load(p_x + offs_k[None, :], mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        # Masked bytes and scales read 0: code 0 times scale 0 is 0, so a K tail adds nothing.
        packed = tl.load(p_w + offs_b[None, :], mask=mask_n[:, None] & (offs_b < K // 2)[None, :], other=0)
        scales = tl.load(p_s + offs_g[None, :], mask=mask_n[:, None] & (offs_g < K // 32)[None, :], other=0)
        w = mxfp4_unpack(packed, scales, DOT_DTYPE)
        acc = tl.dot(x.to(DOT_DTYPE), tl.trans(w), acc)
    acc += tl.load(b_ptr + expert * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    p_out = out_ptr + rows.to(tl.int64)[:, None] * (N // 2 if SWIGLU else N)
    if SWIGLU:
        glu, lin = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        glu = tl.minimum(glu, swiglu_limit)
        lin = tl.minimum(tl.maximum(lin, -swiglu_limit), swiglu_limit)
        act = glu * tl.sigmoid(glu * SWIGLU_ALPHA) * (lin + 1.0)
        offs_o = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        tl.store(p_out + offs_o[None, :], act.to(out_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & (offs_o < N // 2)[None, :])
    else:
        tl.store(p_out + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


# The same kernel tuned per regime: a decode-tuned config would be a poor prefill tile and vice versa.
_moe_gemm_decode = triton.autotune(configs=_configs(True), key=["N", "K", "tokens_bucket"])(_moe_gemm_kernel)
_moe_gemm_prefill = triton.autotune(configs=_configs(False), key=["N", "K", "tokens_bucket"])(_moe_gemm_kernel)


@triton.jit
def _moe_combine_kernel(y_ptr, weights_ptr, scatter_ptr, residual_ptr, out_ptr, n_tokens, N,
                        K: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_t = tokens < n_tokens
    mask = mask_t[:, None] & (offs_n < N)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for slot in tl.static_range(K):  # fixed slot order: the same sum on every run
        rows = tl.load(scatter_ptr + tokens * K + slot, mask=mask_t, other=0).to(tl.int64)
        y = tl.load(y_ptr + rows[:, None] * N + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += tl.load(weights_ptr + tokens * K + slot, mask=mask_t, other=0.0)[:, None] * y
    p_out = tokens.to(tl.int64)[:, None] * N + offs_n[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(residual_ptr + p_out, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + p_out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _check(op: str, name: str, x: torch.Tensor, shape: tuple, dtype: torch.dtype, device: torch.device) -> None:
    if tuple(x.shape) != tuple(shape) or x.dtype != dtype:
        raise ValueError(f"{op}: {name} must be {list(shape)} {dtype}, got {list(x.shape)} {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous (shape {list(x.shape)}, strides {x.stride()})")
    if x.device != device:
        raise ValueError(f"{op}: {name} is on {x.device}, the activations on {device}")


def _check_weights(op: str, blocks, scales, bias, counts) -> tuple[int, int, int]:
    """blocks [E, N, G, 16], scales [E, N, G], bias [E, N] -> (E, N, Kdim)."""
    if blocks.dim() != 4 or blocks.shape[-1] != 16:
        raise ValueError(f"{op}: blocks must be [experts, out, in/32, 16] uint8, got {list(blocks.shape)}")
    E, N, G, _ = blocks.shape
    dev = blocks.device
    _check(op, "blocks", blocks, blocks.shape, torch.uint8, dev)
    _check(op, "scales", scales, (E, N, G), torch.uint8, dev)
    _check(op, "bias", bias, (E, N), torch.bfloat16, dev)
    _check(op, "counts", counts, (E,), torch.int32, dev)
    return E, N, G * 32


def _launch_gemm(x, blocks, scales, bias, out, gather_indx, counts, offsets, n_tokens, experts_per_token,
                 swiglu_limit, *, gather_rows: bool, swiglu: bool):
    E, N, Kdim = blocks.shape[0], blocks.shape[1], blocks.shape[2] * 32
    n_pairs = gather_indx.numel()
    kernel = _moe_gemm_decode if n_tokens <= DECODE_TOKENS else _moe_gemm_prefill

    def grid(meta):
        return triton.cdiv(n_pairs, meta["BLOCK_M"]) + min(E, n_pairs), triton.cdiv(N, meta["BLOCK_N"])

    wrap_triton(kernel)[grid](
        x, blocks, scales, bias, out, gather_indx, counts, offsets, E, N, Kdim, experts_per_token, swiglu_limit,
        _tokens_bucket(n_tokens), GATHER_ROWS=gather_rows, SWIGLU=swiglu, E_PAD=max(16, triton.next_power_of_2(E)),
        DOT_DTYPE=DOT_DTYPE)


@triton_op("gpt_oss_triton::moe_mlp1", mutates_args=())
def _moe_mlp1_op(x: torch.Tensor, gather_indx: torch.Tensor, counts: torch.Tensor, offsets: torch.Tensor,
                 blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor, experts_per_token: int,
                 swiglu_limit: float) -> torch.Tensor:
    E, N, H = _check_weights("moe_mlp1", blocks, scales, bias, counts)
    if x.dim() != 2:
        raise ValueError(f"moe_mlp1: x must be [tokens, hidden], got {list(x.shape)}")
    T = x.shape[0]
    _check("moe_mlp1", "x", x, (T, H), torch.bfloat16, blocks.device)
    _check("moe_mlp1", "gather_indx", gather_indx, (T * experts_per_token,), torch.int32, blocks.device)
    _check("moe_mlp1", "offsets", offsets, (E,), torch.int32, blocks.device)
    if N % 2:
        raise ValueError(f"moe_mlp1: the weight's {N} output rows must interleave glu and linear (an even count)")
    out = torch.empty(T * experts_per_token, N // 2, dtype=x.dtype, device=x.device)
    if T:
        _launch_gemm(x, blocks, scales, bias, out, gather_indx, counts, offsets, T, experts_per_token, swiglu_limit,
                     gather_rows=True, swiglu=True)
    return out


@triton_op("gpt_oss_triton::moe_mlp2", mutates_args=())
def _moe_mlp2_op(a: torch.Tensor, gather_indx: torch.Tensor, scatter_indx: torch.Tensor, counts: torch.Tensor,
                 offsets: torch.Tensor, weights: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    E, H, I = _check_weights("moe_mlp2", blocks, scales, bias, counts)
    if weights.dim() != 2:
        raise ValueError(f"moe_mlp2: weights must be [tokens, experts_per_token], got {list(weights.shape)}")
    T, K = weights.shape
    dev = blocks.device
    _check("moe_mlp2", "a", a, (T * K, I), torch.bfloat16, dev)
    _check("moe_mlp2", "weights", weights, (T, K), torch.float32, dev)
    _check("moe_mlp2", "gather_indx", gather_indx, (T * K,), torch.int32, dev)
    _check("moe_mlp2", "scatter_indx", scatter_indx, (T * K,), torch.int32, dev)
    _check("moe_mlp2", "offsets", offsets, (E,), torch.int32, dev)
    if residual is not None:
        _check("moe_mlp2", "residual", residual, (T, H), torch.bfloat16, dev)
    out = torch.empty(T, H, dtype=a.dtype, device=dev)
    if T == 0:
        return out
    y = torch.empty(T * K, H, dtype=a.dtype, device=dev)
    _launch_gemm(a, blocks, scales, bias, y, gather_indx, counts, offsets, T, K, 0.0, gather_rows=False, swiglu=False)
    block_n = min(triton.next_power_of_2(H), 1024)
    block_t = min(triton.next_power_of_2(T), max(1, 2048 // block_n))
    wrap_triton(_moe_combine_kernel)[(triton.cdiv(T, block_t), triton.cdiv(H, block_n))](
        y, weights, scatter_indx, out if residual is None else residual, out, T, H, K=K,
        HAS_RESIDUAL=residual is not None, BLOCK_T=block_t, BLOCK_N=block_n)
    return out


def moe_mlp1(x: torch.Tensor, routing, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
             swiglu_limit: float = 7.0) -> torch.Tensor:
    """x [T, H] bf16, routing: RoutingData; W1 blocks [E, 2I, H/32, 16], scales [E, 2I, H/32] uint8, bias [E, 2I]
    bf16 -> swiglu(x @ W1[e]^T + b1[e]) [T*K, I] bf16, rows in grouped order."""
    return _moe_mlp1_op(x, routing.gather_indx, routing.counts, routing.offsets, blocks, scales, bias,
                        routing.experts_per_token, float(swiglu_limit))


def moe_mlp2(a: torch.Tensor, routing, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
             residual: torch.Tensor | None = None) -> torch.Tensor:
    """a [T*K, I] bf16 (grouped order), routing: RoutingData; W2 blocks [E, H, I/32, 16], scales [E, H, I/32],
    bias [E, H] bf16; residual [T, H] bf16 or None -> residual + sum_k weights[:, k] * (a @ W2[e]^T + b2[e]) [T, H]."""
    return _moe_mlp2_op(a, routing.gather_indx, routing.scatter_indx, routing.counts, routing.offsets,
                        routing.weights, blocks, scales, bias, residual)


def _pair_experts(routing) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, expert) of each grouped row, as int64."""
    pairs = routing.gather_indx.long()
    return pairs // routing.experts_per_token, routing.indices.flatten().long()[pairs]


def moe_mlp1_ref(x, routing, blocks, scales, bias, swiglu_limit: float = 7.0) -> torch.Tensor:
    """moe_mlp1 in fp32 from the dequantized weights: [T*K, I] fp32 in grouped order."""
    tokens, experts = _pair_experts(routing)
    out = torch.empty(len(tokens), blocks.shape[1] // 2, dtype=torch.float32, device=x.device)
    for e in experts.unique().tolist():
        rows = (experts == e).nonzero(as_tuple=True)[0]
        h = x[tokens[rows]].float() @ mxfp4_dequantize(blocks[e], scales[e], torch.float32).T + bias[e].float()
        out[rows] = swiglu_ref(h, swiglu_limit)
    return out


def moe_mlp2_ref(a, routing, blocks, scales, bias, residual=None) -> torch.Tensor:
    """moe_mlp2 in fp32 from the dequantized weights: [T, H] fp32."""
    tokens, experts = _pair_experts(routing)
    y = torch.empty(len(tokens), blocks.shape[1], dtype=torch.float32, device=a.device)
    for e in experts.unique().tolist():
        rows = (experts == e).nonzero(as_tuple=True)[0]
        y[rows] = a[rows].float() @ mxfp4_dequantize(blocks[e], scales[e], torch.float32).T + bias[e].float()
    out = (y[routing.scatter_indx.long()].view(routing.n_tokens, routing.experts_per_token, -1)
           * routing.weights[..., None]).sum(1)
    return out if residual is None else out + residual.float()


def expected_experts(n_experts: int, experts_per_token: int, n_tokens: int) -> float:
    """Distinct experts n_tokens touch when each picks experts_per_token of n_experts uniformly: E(1 - (1 - k/E)^T)."""
    return n_experts * (1 - (1 - experts_per_token / n_experts) ** n_tokens)


def expected_row_tiles(n_experts: int, experts_per_token: int, n_tokens: int, block_m: int) -> float:
    """Expected sum over experts of cdiv(pairs of the expert, block_m), pairs ~ Binomial(n_tokens, k/E)."""
    p = experts_per_token / n_experts
    return n_experts * sum(math.comb(n_tokens, c) * p ** c * (1 - p) ** (n_tokens - c) * -(-c // block_m)
                           for c in range(1, n_tokens + 1))


@traffic(_moe_gemm_kernel)
def _moe_gemm_traffic(launch, constexprs, env):
    """The touched experts' packed weights (uniform routing), each row tile's activations, the outputs."""
    a = launch.args
    E, N, K = a["n_experts"], a["N"], a["K"]
    k, pairs = a["experts_per_token"], a["gather_ptr"].numel()
    T = pairs // k
    tiles = expected_row_tiles(E, k, T, constexprs["BLOCK_M"])
    weights = expected_experts(E, k, T) * N * K
    out = tensor_bytes(a["out_ptr"])
    return Traffic(read=weights * 17 / 32 + pairs * K * 2, written=out, weights=weights,
                   loop_trips=tiles * triton.cdiv(N, constexprs["BLOCK_N"]) * triton.cdiv(K, constexprs["BLOCK_K"]))
