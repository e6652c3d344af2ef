"""transformers' GptOssForCausalLM with and without `apply` (model/integrations/transformers.py): prefill and
decode steps of the same model, timed as bench_e2e times transformers (its DynamicCache, wall-clock with a sync).

"transformers" is the model as transformers loads the checkpoint with its MXFP4 experts dequantized to bf16 and
eager attention (the one with sinks that needs no extra package); "ours" is that same model after
`apply(model, checkpoint=...)`: our router, packed-MXFP4 expert GEMMs, RMSNorm and attention. The checkpoint is
a synthetic one of the preset's shapes (the speed does not depend on the values). Full-size presets are marked
`large`.
"""
import pytest
import torch
from gpt_oss_triton.loader import make_checkpoint
from gpt_oss_triton.model import GptOssConfig
from gpt_oss_triton.model.roofline import decode_bytes, forward_flops

import engines
import peers
from bench_e2e import _measure, _or_skip_on_oom

PRESETS = [pytest.param("tiny"), pytest.param("gpt-oss-20b", marks=pytest.mark.large)]
IMPLS = (peers.OURS, "transformers")
BATCHES = (1, 8)
CONTEXTS = (1024, 8192)


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(preset, roofs, tmp_path_factory):  # roofs first: it skips on a machine without a GPU
    return make_checkpoint(tmp_path_factory.mktemp("hf") / preset, GptOssConfig.preset(preset), layout="hf")


@pytest.fixture(scope="module", params=IMPLS)
def impl(request, checkpoint):
    transformers = peers.transformers_or_skip()
    quant = transformers.Mxfp4Config(dequantize=True)
    hf = _or_skip_on_oom("loading transformers' model", transformers.GptOssForCausalLM.from_pretrained, checkpoint,
                         dtype=torch.bfloat16, quantization_config=quant, device_map="cuda").eval()
    if request.param == peers.OURS:
        from gpt_oss_triton.model.integrations.transformers import apply
        apply(hf, checkpoint=checkpoint)
    yield request.param, engines.HFEngine(hf, vocab_size=hf.config.vocab_size)
    del hf
    torch.cuda.empty_cache()


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("kind", ["decode", "prefill"])
def test_step(benchmark, record, impl, preset, kind, batch, context):
    """One decode step at `context` cached positions, or a prefill of `context` tokens, for `batch` rows."""
    name, engine = impl
    benchmark.group = f"hf_integration_{kind}"
    ms, peak_gb = _or_skip_on_oom(f"at batch {batch}, context {context}", _measure, benchmark, engine, kind,
                                  batch, context)
    config = GptOssConfig.preset(preset)
    if kind == "decode":
        moved, flops, tokens = decode_bytes(config, batch, context).total, forward_flops(config, batch, 1, context), \
            batch
    else:  # the least a prefill must read: every weight its tokens route to, once
        moved, flops, tokens = decode_bytes(config, batch * context).weights, forward_flops(config, batch, context), \
            batch * context
    record(benchmark, ms, bytes_moved=moved, flops=flops, impl=name,
           **{"tokens/s": tokens / (ms * 1e-3), "peak_mem_GB": peak_gb})
