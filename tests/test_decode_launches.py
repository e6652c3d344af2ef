"""Kernel launches of one decode step as the engine runs it (DecodeGraph: the rows' tokens gathered, decode_step,
the in-graph sampler, the tokens written back), recorded on meta tensors by kernels/launch_plan.py: every Triton
launch and every torch op that would launch a kernel on a GPU, inside our ops too.

Guards the fused decode path: at most 8 launches per layer (today 6: the attention block's 3, decode_qkv,
decode_attention with its split merge, linear with bias and residual; the MoE block's 3, router(+norm)+top-k,
mlp1, mlp2+combine+residual) and a few outside the layers. A host sync (.item(), .tolist()) in the step fails
on meta tensors, so the recording also proves there is none."""
import dataclasses

import pytest
import torch

from gpt_oss_triton.kernels import launch_plan
from gpt_oss_triton.model.config import GptOssConfig
from gpt_oss_triton.model.static_model import step_launches
from gpt_oss_triton.model.triton_model import TritonGptOss

ATTENTION_LAUNCHES = 3
LAYER_LAUNCHES = 8
OUTSIDE_LAUNCHES = 14  # embedding, unembedding (+ final norm), lengths advance; tokens gather, sampler (8), write-back


def _kernels(launches) -> int:
    return sum(getattr(launch, "count", 1) for launch in launches)


def _step(layers: int, batch: int, context: int) -> list:
    tiny = GptOssConfig.preset("tiny")
    config = dataclasses.replace(tiny, num_hidden_layers=layers, layer_types=tiny.layer_types[:layers])
    return step_launches(config, batch, context, sms=132)


@pytest.mark.parametrize("batch,context", [(1, 30), (3, 5000)])  # 5000: full layers split the keys (merge in-kernel)
def test_launches_per_decode_layer(batch, context):
    two, four = _step(2, batch, context), _step(4, batch, context)
    per_layer = (_kernels(four) - _kernels(two)) / 2
    outside = _kernels(four) - 4 * per_layer
    names = [launch.name if hasattr(launch, "name") else launch.op for launch in four]
    assert per_layer <= LAYER_LAUNCHES, f"{per_layer:g} per layer: {names}"
    assert outside <= OUTSIDE_LAUNCHES, f"{outside:g} outside the layers: {names}"


def test_attention_block_launches():
    with torch.device("meta"):
        model = TritonGptOss(GptOssConfig.preset("tiny"), device="meta")
        cache = model.new_cache(2, 64)
        x = torch.zeros(2, model.config.hidden_size, dtype=torch.bfloat16)
        cos, sin = model.rope_tables()
        with launch_plan.record() as launches:
            model.block[1].attn.decode(x, cos, sin, cache, cache.rows, cache.rows_active)
    assert [launch.name for launch in launches] == ["_decode_qkv_kernel", "_decode_attention_kernel",
                                                    "_linear_kernel"]
    assert _kernels(launches) == ATTENTION_LAUNCHES
