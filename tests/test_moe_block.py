"""TritonMLPBlock against the reference MLPBlock, loaded from the same state_dict."""
import dataclasses

import pytest
import torch

from gpt_oss_triton.kernels.reference import rmsnorm_ref
from gpt_oss_triton.model.config import GptOssConfig
from gpt_oss_triton.model.moe import TritonMLPBlock
from gpt_oss_triton.model.reference import MLPBlock
from helpers import assert_close
from moe_testdata import random_moe_weights

SMALL = dataclasses.replace(GptOssConfig.preset("tiny"), num_experts=16, hidden_size=128, intermediate_size=64)


def blocks_with_random_weights(config, seed, device):
    gen = torch.Generator().manual_seed(seed)
    w = random_moe_weights(config.num_experts, config.hidden_size, config.intermediate_size, gen=gen, device=device)
    reference = MLPBlock(config, device=device)
    state = {"norm.scale": (1 + 0.1 * torch.randn(config.hidden_size, generator=gen)).to(device),
             "gate.weight": w["gate_weight"], "gate.bias": w["gate_bias"],
             "mlp1_weight.blocks": w["mlp1_blocks"], "mlp1_weight.scales": w["mlp1_scales"], "mlp1_bias": w["mlp1_bias"],
             "mlp2_weight.blocks": w["mlp2_blocks"], "mlp2_weight.scales": w["mlp2_scales"], "mlp2_bias": w["mlp2_bias"]}
    reference.load_state_dict(state, strict=True)
    triton_block = TritonMLPBlock(config, device=device)
    triton_block.load_state_dict(reference.state_dict(), strict=True)
    return reference, triton_block


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (2, 40)])  # decode (1 and 6 tokens), prefill (80 tokens)
def test_block_matches_reference(shape, device):
    reference, block = blocks_with_random_weights(SMALL, seed=sum(shape), device=device)
    gen = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, SMALL.hidden_size, generator=gen).to(torch.bfloat16).to(device)
    with torch.no_grad():
        out, expected = block(x), reference(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    # Tokens whose 4th and 5th router logits are within rounding of each other may route differently.
    t = rmsnorm_ref(x, reference.norm.scale).flatten(0, -2)
    logits = torch.nn.functional.linear(t, reference.gate.weight, reference.gate.bias).float()
    top = logits.topk(SMALL.experts_per_token + 1, dim=-1).values
    ties = (top[:, -2] - top[:, -1]) <= 2 * torch.finfo(torch.bfloat16).eps * top[:, -2].abs()
    assert ties.sum() <= max(1, len(ties) // 10), f"{int(ties.sum())} near-tie tokens of {len(ties)}: reseed"
    # The reference rounds to bf16 at three more points than the kernels (h, the expert outputs, the sum), and
    # the interpreter's fp32 -> bf16 casts truncate where the GPU rounds to nearest: both err by a few ulps.
    assert_close(out.flatten(0, -2)[~ties], expected.flatten(0, -2)[~ties], scale=3.0, name="block")
    assert (out != x).any(), "the MoE added nothing"
