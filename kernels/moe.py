"""The MoE block on the Triton kernels.

    moe_block(x [T, H] bf16, norm_scale, eps, router, mlp1, mlp2) -> x + moe(rmsnorm(x))   [T, H] bf16
    moe(t [T, H] bf16, router, mlp1, mlp2, residual=None) -> residual + moe(t)
    moe(t) = sum_k weights[:, k] * expert_k(t),  expert_e(t) = swiglu(t @ W1[e]^T + b1[e]) @ W2[e]^T + b2[e]

At decode (T <= 64) `moe_block` is three launches: routing_decode (norm, router, top-k, bookkeeping),
moe_mlp1 (+ bias + swiglu), moe_mlp2 (+ bias + the weighted combine + the residual). Prefill adds the norm, the
routing's prefix-sum launches, the K-order permutation of t and the combine.

Router: gate_weight [E, H], gate_bias [E] bf16. Expert weights in the repacked layout (mxfp4.mxfp4_repack; the
module repacks the checkpoint's at load): mlp1 blocks [El, 2I, H/32, 16], scales [El, 2I, H/32] uint8, bias
[El, 2I]; mlp2 blocks [El, H, I/32, 16], scales [El, H, I/32], bias [El, H]. `fast`: their scales allow the fast
decode (mxfp4_unpack.fast_decode_ok). The reference is `kernels.reference.moe_ref` on the checkpoint layout.

Expert parallelism: the mlp weights may hold only El of the router's E experts, from `first_expert` on. Every
token is still routed over all E; the GEMMs run the chosen pairs of those El experts only, and a slot whose
expert is elsewhere adds nothing in the combine (moe_gemm's expert_start): the output is this share of the sum,
which the sum over the ranks holding the other experts completes.
"""
import torch

from .moe_gemm import moe_mlp1, moe_mlp2
from .mxfp4 import permute_k
from .rmsnorm import rmsnorm
from .routing import DECODE_TOKENS, routing, routing_decode


def moe_block(x: torch.Tensor, norm_scale: torch.Tensor, eps: float, gate_weight: torch.Tensor,
              gate_bias: torch.Tensor, mlp1_blocks: torch.Tensor, mlp1_scales: torch.Tensor, mlp1_bias: torch.Tensor,
              mlp2_blocks: torch.Tensor, mlp2_scales: torch.Tensor, mlp2_bias: torch.Tensor, *,
              experts_per_token: int, swiglu_limit: float = 7.0, fast: bool = True, first_expert: int = 0,
              residual: bool = True) -> torch.Tensor:
    """x [T, H] bf16 -> x + moe(rmsnorm(x)) [T, H] bf16 (residual=False: moe(rmsnorm(x)) alone, the share of an
    expert-parallel rank other than the first)."""
    res = x if residual else None
    if x.shape[0] > DECODE_TOKENS:
        return moe(rmsnorm(x, norm_scale, eps), gate_weight, gate_bias, mlp1_blocks, mlp1_scales, mlp1_bias,
                   mlp2_blocks, mlp2_scales, mlp2_bias, experts_per_token=experts_per_token,
                   swiglu_limit=swiglu_limit, residual=res, fast=fast, first_expert=first_expert)
    t, r = routing_decode(x, norm_scale, eps, gate_weight, gate_bias, experts_per_token)
    a = moe_mlp1(t, r, mlp1_blocks, mlp1_scales, mlp1_bias, swiglu_limit, expert_start=first_expert, fast=fast)
    return moe_mlp2(a, r, mlp2_blocks, mlp2_scales, mlp2_bias, residual=res, expert_start=first_expert, fast=fast)


def moe(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
        mlp1_blocks: torch.Tensor, mlp1_scales: torch.Tensor, mlp1_bias: torch.Tensor,
        mlp2_blocks: torch.Tensor, mlp2_scales: torch.Tensor, mlp2_bias: torch.Tensor,
        *, experts_per_token: int, swiglu_limit: float = 7.0, residual: torch.Tensor | None = None,
        fast: bool = True, first_expert: int = 0) -> torch.Tensor:
    """t [T, H] bf16 (after the norm) -> residual + moe(t) [T, H] bf16 (residual optional)."""
    r = routing(t, gate_weight, gate_bias, experts_per_token)
    if not 0 <= first_expert <= first_expert + mlp1_blocks.shape[0] <= r.n_experts:
        raise ValueError(f"moe: experts [{first_expert}, {first_expert + mlp1_blocks.shape[0]}) are not within "
                         f"the router's {r.n_experts}")
    a = moe_mlp1(permute_k(t), r, mlp1_blocks, mlp1_scales, mlp1_bias, swiglu_limit, expert_start=first_expert,
                 fast=fast)
    return moe_mlp2(a, r, mlp2_blocks, mlp2_scales, mlp2_bias, residual=residual, expert_start=first_expert,
                    fast=fast)
