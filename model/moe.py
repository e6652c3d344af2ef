"""The MoE block on the Triton kernels, a drop-in for the reference `MLPBlock` (same parameters and state_dict)."""
import torch

from ..kernels.moe import moe_block
from ..kernels.mxfp4 import mxfp4_repack, mxfp4_unrepack
from ..kernels.mxfp4_unpack import fast_decode_ok
from .reference import MLPBlock, MXFP4Weight

_REPACK_CHUNK_BYTES = 1 << 26  # experts repacked at a time: their int32 working copies stay within ~256 MB


class RepackedMXFP4Weight(MXFP4Weight):
    """MXFP4Weight holding the kernels' layout (kernels/mxfp4.py, mxfp4_repack: the same shapes and bytes, permuted).

    load_state_dict takes the checkpoint layout and repacks it in place, a few experts at a time (with
    assign=True the module takes the given tensors over); state_dict() gives the checkpoint layout back, as
    copies (for a full-size model that is the expert weights' size again). `fast_decode`: every scale allows
    the kernels' fast decode."""

    def __init__(self, n_experts: int, out_features: int, in_features: int, device=None):
        super().__init__(n_experts, out_features, in_features, device)
        self.fast_decode = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if prefix + "blocks" in state_dict and prefix + "scales" in state_dict and not error_msgs:
            self._repack()

    @torch.no_grad()
    def _repack(self) -> None:
        blocks, scales = self.blocks, self.scales
        if blocks.device.type == "meta":
            return
        per_expert = blocks[:1].numel() * 4
        step = max(1, _REPACK_CHUNK_BYTES // max(per_expert, 1))
        for e in range(0, blocks.shape[0], step):
            b, s = mxfp4_repack(blocks[e:e + step], scales[e:e + step])
            blocks[e:e + step].copy_(b)
            scales[e:e + step].copy_(s)
        self.fast_decode = fast_decode_ok(scales)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        blocks, scales = (self.blocks, self.scales) if self.blocks.device.type == "meta" else \
            mxfp4_unrepack(self.blocks, self.scales)
        destination[prefix + "blocks"] = blocks
        destination[prefix + "scales"] = scales


class TritonMLPBlock(MLPBlock):
    """forward(x [..., H] bf16) -> x + moe(norm(x)): the norm, router and top-k, mlp1 and mlp2 with the combine and
    the residual add; three launches at decode (kernels/moe.py). On an expert-parallel rank: its experts' share,
    the residual on rank 0 only, then summed over ranks."""

    def __init__(self, config, dtype=torch.bfloat16, device=None):
        super().__init__(config, dtype, device)
        E, H, I = config.num_experts, config.hidden_size, config.intermediate_size
        self.mlp1_weight = RepackedMXFP4Weight(E, 2 * I, H, device=device)
        self.mlp2_weight = RepackedMXFP4Weight(E, H, I, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2d = x.reshape(-1, x.shape[-1]).contiguous()
        y = moe_block(x2d, self.norm.scale, self.norm.eps, self.gate.weight, self.gate.bias,
                      self.mlp1_weight.blocks, self.mlp1_weight.scales, self.mlp1_bias,
                      self.mlp2_weight.blocks, self.mlp2_weight.scales, self.mlp2_bias,
                      experts_per_token=self.experts_per_token, swiglu_limit=self.swiglu_limit,
                      fast=self.mlp1_weight.fast_decode and self.mlp2_weight.fast_decode,
                      first_expert=self.first_expert, residual=self.parallel.residual(x2d) is not None)
        return self.parallel.all_reduce_(y).view_as(x)
