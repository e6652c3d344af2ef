"""Skinny linear layer for decode: a weight-streaming GEMM with an RMSNorm prologue and bias / residual epilogues.

    y = (residual) + (norm(x)) @ W^T + (bias)         norm(x) = x * rsqrt(mean(x^2) + eps) * scale

x [M, K] bf16 (a few rows: the decode batch), W [N, K] bf16, bias [N], scale [K] fp32, residual [M, N] bf16;
y [M, N] in x.dtype (or fp32). Every term in brackets is optional and switched off by passing None, so a
tensor-parallel rank can add the bias and the residual on one rank only.

At decode the layer reads W once and little else: it is bound by the bandwidth of streaming W, so each program
takes every row of x (BLOCK_M >= M up to 64) and BLOCK_N weight rows, and the grid spreads N over the GPU.
The norm is folded into the prologue with no extra pass over x: since rstd is a per-row scalar,

    norm(x) @ W^T = rstd * ((x * scale) @ W^T),

so the K loop feeds (x * scale), rounded to bf16 as the separate norm's output would be, to the dot and sums
x^2 beside it; the product is scaled by rstd at the end. The epilogue adds the bias and the residual to the
fp32 accumulator and rounds once (an unfused projection rounds its output, then the residual sum again).
Reference: `linear_ref`.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .launch_plan import Traffic, tensor_bytes, traffic


def _configs(wide: bool):
    """(BLOCK_N, BLOCK_K, warps, stages), per regime of BLOCK_M (wide: 64 rows, on wgmma), each compiling for sm_90
    without spills and at least one within the 99 KB of shared memory of sm_86/89. Narrow N tiles, so that even
    N = 2880 gives more programs than an H100 has SMs; at 64 rows a wide one too, over which the norm prologue's
    work on x (the same per K step whatever BLOCK_N) is spread."""
    if interpreting():
        return [triton.Config({"BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4)]
    tiles = ([(32, 128, 4, 4), (64, 128, 4, 4), (32, 256, 8, 3), (64, 128, 8, 3), (128, 64, 8, 3)] if wide else
             [(16, 256, 4, 4), (32, 256, 8, 4), (32, 128, 4, 4), (64, 128, 4, 4)])
    return [triton.Config({"BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s) for n, k, w, s in tiles]


@triton.jit
def linear_tile(X, stride_xm, rows, row_ok, W, stride_wn, w_rows, w_ok, SCALE, K, eps,
                NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                DOT_F32: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] fp32 = norm(x[rows]) @ W[w_rows]^T (x[rows] @ W[w_rows]^T without NORM).

    rows [BLOCK_M] and w_rows [BLOCK_N] are any row indices (masked by row_ok / w_ok), so a caller may gather
    weight rows in the order its epilogue wants them (decode_qkv pairs the two halves of each head)."""
    p_x = X + rows.to(tl.int64)[:, None] * stride_xm
    p_w = W + w_rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < K
        x = tl.load(p_x + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(p_w + k[None, :], mask=w_ok[:, None] & k_ok[None, :], other=0.0)
        if NORM:
            xf = x.to(tl.float32)
            sumsq += tl.sum(xf * xf, 1)
            scale = tl.load(SCALE + k, mask=k_ok, other=0.0).to(tl.float32)
            x = (xf * scale[None, :]).to(W.dtype.element_ty)
        if DOT_F32:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc)
    if NORM:
        acc *= tl.rsqrt(sumsq / K + eps)[:, None]
    return acc


@triton.jit
def _linear_kernel(X, W, BIAS, RES, SCALE, Y, M, N, K, stride_xm, stride_wn, stride_rm, stride_ym, eps,
                   NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Row tiles vary fastest: the programs that share a weight tile run together and read it from L2.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    acc = linear_tile(X, stride_xm, rows, row_ok, W, stride_wn, cols, col_ok, SCALE, K, eps,
                      NORM, BLOCK_M, BLOCK_N, BLOCK_K, DOT_F32)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_RESIDUAL:
        acc += tl.load(RES + rows.to(tl.int64)[:, None] * stride_rm + cols[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(Y + rows.to(tl.int64)[:, None] * stride_ym + cols[None, :], acc.to(Y.dtype.element_ty), mask=mask)


# The same kernel tuned per row-tile regime (a config of one spills or idles in the other).
_KEY = ["BLOCK_M", "N", "K", "NORM", "HAS_BIAS", "HAS_RESIDUAL"]
_linear_narrow = triton.autotune(configs=_configs(False), key=_KEY)(_linear_kernel)
_linear_wide = triton.autotune(configs=_configs(True), key=_KEY)(_linear_kernel)


def block_m(m: int) -> int:
    """Rows per program: all of a decode batch (up to 64) in one tile, so W is streamed once."""
    return min(max(16, triton.next_power_of_2(m)), 64)


def _check_rows(op: str, name: str, t: torch.Tensor, shape: tuple, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device or t.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be {list(shape)} {dtype} on {device} with a contiguous last dim, got "
                         f"{list(t.shape)} {t.dtype} on {t.device} strides {list(t.stride())}")


def check_weight(op: str, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 norm_scale: Optional[torch.Tensor]) -> tuple[int, int, int]:
    """Shared checks of a projection's x [M, K] bf16, weight [N, K], bias [N] and norm scale [K] -> (M, N, K)."""
    if x.dim() != 2 or x.dtype != torch.bfloat16 or x.stride(-1) != 1:
        raise ValueError(f"{op}: x must be [M, K] bf16 with a contiguous last dim, got {list(x.shape)} {x.dtype} "
                         f"strides {list(x.stride())}")
    M, K = x.shape
    if weight.dim() != 2 or weight.shape[1] != K or weight.dtype != x.dtype or not weight.is_contiguous():
        raise ValueError(f"{op}: weight must be a contiguous [N, {K}] {x.dtype} tensor, got {list(weight.shape)} "
                         f"{weight.dtype} strides {list(weight.stride())}")
    N = weight.shape[0]
    for name, t, n in (("weight", weight, None), ("bias", bias, N), ("norm_scale", norm_scale, K)):
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{op}: {name} on {t.device}, x on {x.device}")
        if n is not None and (tuple(t.shape) != (n,) or not t.is_floating_point() or not t.is_contiguous()):
            raise ValueError(f"{op}: {name} must be a contiguous float [{n}], got {list(t.shape)} {t.dtype}")
    return M, N, K


@torch.library.triton_op("gpt_oss_triton::linear", mutates_args=())
def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None, norm_scale: Optional[torch.Tensor] = None,
           eps: float = 1e-5, out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """x [M, K] bf16, weight [N, K] -> (residual [M, N]) + (rmsnorm(x, norm_scale, eps)) @ weight^T + (bias [N]):
    [M, N] in out_dtype (default x.dtype). Any of bias, residual, norm_scale may be None (that term is off)."""
    M, N, K = check_weight("linear", x, weight, bias, norm_scale)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (torch.bfloat16, torch.float32):
        raise ValueError(f"linear: out_dtype must be bf16 or fp32, got {out_dtype}")
    if residual is not None:
        _check_rows("linear", "residual", residual, (M, N), residual.dtype, x.device)
    y = torch.empty(M, N, dtype=out_dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    bm = block_m(M)
    res = residual if residual is not None else y
    wrap_triton(_linear_wide if bm == 64 else _linear_narrow)[lambda meta: (triton.cdiv(M, bm), triton.cdiv(N, meta["BLOCK_N"]))](
        x, weight, bias if bias is not None else weight, res, norm_scale if norm_scale is not None else weight, y,
        M, N, K, x.stride(0), weight.stride(0), res.stride(0), y.stride(0), eps,
        NORM=norm_scale is not None, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        BLOCK_M=bm, DOT_F32=interpreting())
    return y


@traffic(_linear_kernel)
def _linear_traffic(launch, constexprs, env):
    """The weight streamed once (the row tiles of a weight tile run together and share it through L2), x,
    the bias, the residual and the output once each."""
    a = launch.args
    M, N, K = a["M"], a["N"], a["K"]
    read = tensor_bytes(a["W"]) + tensor_bytes(a["X"])
    read += N * a["BIAS"].element_size() if a["HAS_BIAS"] else 0
    read += M * N * a["RES"].element_size() if a["HAS_RESIDUAL"] else 0
    read += K * 4 if a["NORM"] else 0
    trips = triton.cdiv(M, a["BLOCK_M"]) * triton.cdiv(N, constexprs["BLOCK_N"]) * triton.cdiv(K, constexprs["BLOCK_K"])
    return Traffic(read=read, written=M * N * a["Y"].element_size(), weights=N * K, loop_trips=trips)


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               residual: Optional[torch.Tensor] = None, norm_scale: Optional[torch.Tensor] = None,
               eps: float = 1e-5) -> torch.Tensor:
    """`linear` in fp32 from the same inputs -> [M, N] fp32, with the norm where the kernel rounds it:
    (x * scale) rounded to x.dtype, then rsqrt(mean(x^2) + eps) applied to the product (one bf16 rounding of
    the normalised input, as a separate rmsnorm's output has; `rmsnorm_ref` then `@` differs by that rounding)."""
    if norm_scale is not None:
        t = (x.float() * norm_scale.float()).to(x.dtype).float()
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        y = (t @ weight.float().T) * rstd
    else:
        y = x.float() @ weight.float().T
    if bias is not None:
        y = y + bias.float()
    if residual is not None:
        y = y + residual.float()
    return y
