"""The MoE block on the Triton kernels, a drop-in for the reference `MLPBlock` (same parameters and state_dict)."""
import torch

from ..kernels.moe import moe
from .reference import MLPBlock


class TritonMLPBlock(MLPBlock):
    """forward(x [..., H] bf16) -> x + moe(norm(x)), the residual add fused into the last kernel (on an
    expert-parallel rank: its experts' share, the residual on rank 0 only, then summed over ranks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        y = moe(self.norm(x2d), self.gate.weight, self.gate.bias,
                self.mlp1_weight.blocks, self.mlp1_weight.scales, self.mlp1_bias,
                self.mlp2_weight.blocks, self.mlp2_weight.scales, self.mlp2_bias,
                experts_per_token=self.experts_per_token, swiglu_limit=self.swiglu_limit,
                residual=self.parallel.residual(x2d), first_expert=self.first_expert)
        return self.parallel.all_reduce_(y).view_as(x)
