"""Random MoE weights shaped like the checkpoint's, scaled so that activations come out O(1)."""
import math

import torch

# RMS of an E2M1 value over uniformly random codes: sqrt(mean(FP4_VALUES**2)) = sqrt(68.5 / 8).
_E2M1_RMS = math.sqrt(68.5 / 8)


def random_mxfp4(n_experts: int, out_features: int, in_features: int, *, input_rms: float = 1.0,
                 output_rms: float = 3.0, gen: torch.Generator, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random codes and scales within one octave of the scale that makes x @ W^T about output_rms.

    blocks [E, N, K/32, 16] uint8, scales [E, N, K/32] uint8. At K = 2880 the scales land around 2**-6.
    """
    center = 127 + round(math.log2(output_rms / (_E2M1_RMS * math.sqrt(in_features) * input_rms)))
    groups = in_features // 32
    blocks = torch.randint(0, 256, (n_experts, out_features, groups, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(center - 1, center + 2, (n_experts, out_features, groups), dtype=torch.uint8, generator=gen)
    return blocks.to(device), scales.to(device)


def random_moe_weights(n_experts: int, hidden: int, intermediate: int, *, gen: torch.Generator, device="cpu",
                       forced_experts: tuple = ()) -> dict:
    """Router, mlp1 and mlp2 weights (bf16 / packed MXFP4) under moe_ref's argument names.

    Router logits are O(1); `forced_experts` get a bias of 20, so every token chooses them first.
    """
    def randn(*shape, std=1.0):
        return (torch.randn(*shape, generator=gen) * std).to(torch.bfloat16).to(device)

    gate_bias = torch.randn(n_experts, generator=gen) * 0.5
    gate_bias[list(forced_experts)] = 20.0
    mlp1_blocks, mlp1_scales = random_mxfp4(n_experts, 2 * intermediate, hidden, output_rms=4.0, gen=gen, device=device)
    mlp2_blocks, mlp2_scales = random_mxfp4(n_experts, hidden, intermediate, input_rms=10.0, output_rms=1.0, gen=gen,
                                            device=device)
    return dict(gate_weight=randn(n_experts, hidden, std=hidden ** -0.5), gate_bias=gate_bias.to(torch.bfloat16).to(device),
                mlp1_blocks=mlp1_blocks, mlp1_scales=mlp1_scales, mlp1_bias=randn(n_experts, 2 * intermediate),
                mlp2_blocks=mlp2_blocks, mlp2_scales=mlp2_scales, mlp2_bias=randn(n_experts, hidden))
