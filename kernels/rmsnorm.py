"""RMSNorm, alone and fused with the residual add that precedes it.

    rmsnorm:      t = x * rsqrt(mean(x^2) + eps) * scale
    add_rmsnorm:  h = x + delta (rounded to x.dtype, as an unfused add would);  t = rmsnorm(h)

x, delta [N, H] (any leading dims, flattened; rows contiguous) bf16/fp16/fp32, scale [H] (fp32 in the
model, any float dtype accepted). Math in fp32; outputs in x.dtype. A row (H = 2880) fits one tile
(BLOCK_H = 4096), so each row is read once and written once; the fused variant reads x and
delta once and writes h and t, where add-then-norm would read h again.
"""
import torch
import triton
import triton.language as tl

from ._interpreter import interpreting, wrap_triton
from .reference import rmsnorm_ref


@triton.jit
def _rmsnorm_kernel(X, DELTA, H_OUT, T_OUT, SCALE, N, H, stride_x, stride_d, stride_h, stride_t, eps,
                    HAS_DELTA: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_H)
    mask = (row < N)[:, None] & (cols < H)[None, :]
    x = tl.load(X + row[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_DELTA:
        # Round the sum to the activation dtype first: the residual stream is stored in that dtype.
        delta = tl.load(DELTA + row[:, None] * stride_d + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(H_OUT.dtype.element_ty)
        tl.store(H_OUT + row[:, None] * stride_h + cols[None, :], x, mask=mask)
    x = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / H + eps)
    scale = tl.load(SCALE + cols, mask=cols < H, other=0.0).to(tl.float32)
    t = x * rstd[:, None] * scale[None, :]
    tl.store(T_OUT + row[:, None] * stride_t + cols[None, :], t.to(T_OUT.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, scale: torch.Tensor, op: str) -> None:
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"{op}: x must be bf16, fp16 or fp32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be [..., H] with H > 0, got shape {list(x.shape)}")
    if scale.shape != (x.shape[-1],):
        raise ValueError(f"{op}: scale must be [H] = [{x.shape[-1]}], got shape {list(scale.shape)}")
    if not scale.is_floating_point():
        raise TypeError(f"{op}: scale must be floating point, got {scale.dtype}")
    if x.stride(-1) != 1 or scale.stride(-1) != 1:
        raise ValueError(f"{op}: the last dim of x and scale must be contiguous, got strides "
                         f"{x.stride()} and {scale.stride()}")
    if x.device != scale.device:
        raise ValueError(f"{op}: x on {x.device} but scale on {scale.device}")
    if x.shape[-1] > 65536:
        raise ValueError(f"{op}: H = {x.shape[-1]} exceeds the one-tile limit 65536")


def _launch(x2, delta2, h_out, t_out, scale, eps):
    N, H = x2.shape
    block = triton.next_power_of_2(H)
    # One row per program on the GPU (H = 2880 fills a 4096-wide tile); the interpreter pays per program.
    rows = 16 if interpreting() else 1
    has_delta = delta2 is not None
    d, h = (delta2, h_out) if has_delta else (x2, t_out)
    wrap_triton(_rmsnorm_kernel)[(triton.cdiv(N, rows),)](
        x2, d, h, t_out, scale, N, H, x2.stride(0), d.stride(0), h.stride(0), t_out.stride(0), eps,
        HAS_DELTA=has_delta, ROWS=rows, BLOCK_H=block, num_warps=min(max(block // 512, 1), 16))


@torch.library.triton_op("gpt_oss_triton::rmsnorm", mutates_args=())
def rmsnorm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x [..., H], scale [H] -> [..., H] in x.dtype."""
    _check(x, scale, "rmsnorm")
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    t = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    if x2.shape[0]:
        _launch(x2, None, None, t, scale, eps)
    return t.view(x.shape)


@torch.library.triton_op("gpt_oss_triton::add_rmsnorm", mutates_args=())
def add_rmsnorm(x: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor,
                eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """x, delta [..., H], scale [H] -> (h = x + delta, rmsnorm(h)), both [..., H] in x.dtype."""
    _check(x, scale, "add_rmsnorm")
    if delta.shape != x.shape or delta.dtype != x.dtype or delta.device != x.device:
        raise ValueError(f"add_rmsnorm: delta must match x (shape {list(x.shape)}, {x.dtype}, {x.device}), got "
                         f"shape {list(delta.shape)}, {delta.dtype}, {delta.device}")
    x2 = x.reshape(-1, x.shape[-1])
    d2 = delta.reshape(-1, x.shape[-1])
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    d2 = d2 if d2.stride(-1) == 1 else d2.contiguous()
    h = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    t = torch.empty_like(h)
    if x2.shape[0]:
        _launch(x2, d2, h, t, scale, eps)
    return h.view(x.shape), t.view(x.shape)


def add_rmsnorm_ref(x: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, eps: float = 1e-5):
    """The unfused pair in torch: (x + delta in x.dtype, rmsnorm_ref of it)."""
    h = x + delta
    return h, rmsnorm_ref(h, scale, eps)
