"""The MoE block after its norm, on the Triton kernels: routing -> moe_mlp1 (+ swiglu) -> moe_mlp2 (+ combine).

    t [T, H] bf16 -> residual + sum_k weights[:, k] * expert_k(t)  [T, H] bf16  (residual optional)
    expert_e(t) = (swiglu(t @ W1[e]^T + b1[e])) @ W2[e]^T + b2[e]

Weights in the checkpoint layout: gate_weight [E, H], gate_bias [E] (bf16); mlp1 blocks [E, 2I, H/32, 16],
scales [E, 2I, H/32] (uint8), bias [E, 2I]; mlp2 blocks [E, H, I/32, 16], scales [E, H, I/32], bias [E, H].
The reference is `kernels.reference.moe_ref` (which leaves the residual out).
"""
import torch

from .moe_gemm import moe_mlp1, moe_mlp2
from .routing import routing


def moe(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
        mlp1_blocks: torch.Tensor, mlp1_scales: torch.Tensor, mlp1_bias: torch.Tensor,
        mlp2_blocks: torch.Tensor, mlp2_scales: torch.Tensor, mlp2_bias: torch.Tensor,
        *, experts_per_token: int, swiglu_limit: float = 7.0, residual: torch.Tensor | None = None) -> torch.Tensor:
    r = routing(t, gate_weight, gate_bias, experts_per_token)
    a = moe_mlp1(t, r, mlp1_blocks, mlp1_scales, mlp1_bias, swiglu_limit)
    return moe_mlp2(a, r, mlp2_blocks, mlp2_scales, mlp2_bias, residual)
