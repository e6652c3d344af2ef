"""The MoE block after its norm, on the Triton kernels: routing -> moe_mlp1 (+ swiglu) -> moe_mlp2 (+ combine).

    t [T, H] bf16 -> residual + sum_k weights[:, k] * expert_k(t)  [T, H] bf16  (residual optional)
    expert_e(t) = (swiglu(t @ W1[e]^T + b1[e])) @ W2[e]^T + b2[e]

Weights in the checkpoint layout: gate_weight [E, H], gate_bias [E] (bf16); mlp1 blocks [E, 2I, H/32, 16],
scales [E, 2I, H/32] (uint8), bias [E, 2I]; mlp2 blocks [E, H, I/32, 16], scales [E, H, I/32], bias [E, H].
The reference is `kernels.reference.moe_ref` (which leaves the residual out).

Expert parallelism: the mlp weights may hold only El of the router's E experts, from `first_expert` on. Every
token is still routed over all E; the GEMMs then run the chosen pairs of those El experts only, and a slot
whose expert is elsewhere weighs 0 in the combine: the output is this share of the sum, which the sum over
the ranks holding the other experts completes.
"""
import torch

from .moe_gemm import moe_mlp1, moe_mlp2
from .routing import RoutingData, routing


def moe(t: torch.Tensor, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
        mlp1_blocks: torch.Tensor, mlp1_scales: torch.Tensor, mlp1_bias: torch.Tensor,
        mlp2_blocks: torch.Tensor, mlp2_scales: torch.Tensor, mlp2_bias: torch.Tensor,
        *, experts_per_token: int, swiglu_limit: float = 7.0, residual: torch.Tensor | None = None,
        first_expert: int = 0) -> torch.Tensor:
    r = routing(t, gate_weight, gate_bias, experts_per_token)
    if mlp1_blocks.shape[0] != r.n_experts:
        r = local_experts(r, first_expert, mlp1_blocks.shape[0])
    a = moe_mlp1(t, r, mlp1_blocks, mlp1_scales, mlp1_bias, swiglu_limit)
    return moe_mlp2(a, r, mlp2_blocks, mlp2_scales, mlp2_bias, residual)


def local_experts(r: RoutingData, first: int, n: int) -> RoutingData:
    """The routing `r` restricted to experts first .. first + n - 1, renumbered from 0: their counts and
    offsets (views: their pairs keep their grouped rows), the weights of other experts' slots zeroed. No host
    sync, fixed shapes: a CUDA graph captures it."""
    if not 0 <= first <= first + n <= r.n_experts:
        raise ValueError(f"local_experts: experts [{first}, {first + n}) are not within the router's {r.n_experts}")
    mine = (r.indices >= first) & (r.indices < first + n)
    return RoutingData(r.logits[:, first:first + n], r.indices - first, torch.where(mine, r.weights, 0.0),
                       r.counts[first:first + n], r.offsets[first:first + n], r.gather_indx, r.scatter_indx)
