"""Our kernels inside Hugging Face transformers' GptOssForCausalLM (model/integrations/transformers.py): the same
logits and greedy tokens as transformers' own modules, every swapped module running our ops, and the refusals.

A small synthetic hf-layout checkpoint (2 layers, a window of 4) keeps the interpreter's cost down while prompts
still pass the window: prefill and decode both run the sliding layers' band and the full layers."""
import dataclasses
import sys

import pytest
import torch
from helpers import assert_close

transformers = pytest.importorskip("transformers", reason="needs the transformers package (the test extra)")
pytest.importorskip("accelerate", reason="needs the accelerate package: transformers reads MXFP4 through it")

from gpt_oss_triton.loader import make_checkpoint  # noqa: E402
from gpt_oss_triton.model import PRESETS  # noqa: E402
from gpt_oss_triton.model.integrations import transformers as integration  # noqa: E402
from gpt_oss_triton.model.integrations.hf_modules import (TritonGptOssExperts, TritonGptOssMLP,  # noqa: E402
                                                          TritonGptOssRMSNorm, TritonGptOssTopKRouter)

torch.set_grad_enabled(False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CONFIG = dataclasses.replace(PRESETS["tiny"], num_hidden_layers=2, layer_types=(), hidden_size=128,
                             intermediate_size=128, num_experts=4, experts_per_token=2, num_attention_heads=4,
                             sliding_window=4)
PROMPT = torch.randint(0, CONFIG.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
GREEDY_PROMPT = torch.arange(15, 21)[None]  # its greedy path keeps a clear margin (the test checks)
OUR_OPS = ("rmsnorm", "attention", "decode_attention", "routing", "moe_mlp1", "moe_mlp2")


def _load(path, dtype=torch.bfloat16, **kwargs):
    # dequantize=True: on the CPU with the `kernels` library installed transformers would fetch hub kernels (no
    # network); it is also the one MXFP4 path transformers runs on any device.
    quant = transformers.Mxfp4Config(dequantize=True)
    model = transformers.GptOssForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quant, **kwargs)
    return model.eval().to(DEVICE)


def _close(ours, ref, what):
    # Two bf16 implementations, as tests/test_triton_model.py bounds them: ~1 logit where a router flips.
    diff = (ours.float() - ref.float()).abs()
    assert diff.mean() < 0.1 and diff.max() < 1.5, f"{what}: mean {diff.mean():.3g} max {diff.max():.3g}"


def _ops(fn) -> dict:
    """Calls of each of our custom ops while fn() runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts = {e.key.split("::")[1]: e.count for e in prof.key_averages() if e.key.startswith("gpt_oss_triton::")}
    return {op: counts.get(op, 0) for op in OUR_OPS}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hf") / "small", CONFIG, layout="hf", seed=5)


@pytest.fixture(scope="module")
def theirs(checkpoint):
    return _load(checkpoint)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return integration.apply(_load(checkpoint), checkpoint=checkpoint)


@pytest.fixture(scope="module")
def our_logits(ours):
    return ours(input_ids=PROMPT.to(DEVICE)).logits


def test_logits_match_transformers(theirs, ours, our_logits):
    assert ours.config._attn_implementation == "gpt_oss_triton"
    _close(our_logits, theirs(input_ids=PROMPT.to(DEVICE)).logits, "prefill logits")


def test_greedy_generate_matches_transformers(theirs, ours):
    """generate() with transformers' DynamicCache: prefill of 6, then decode steps to position 9, past the window
    of 4. The prompt's greedy path keeps a clear margin at every step (checked first), so bf16 noise can't flip it."""
    prompt = GREEDY_PROMPT.to(DEVICE)
    expected = theirs.generate(prompt, max_new_tokens=4, do_sample=False)
    top2 = theirs(input_ids=expected[:, :-1]).logits[0, prompt.shape[1] - 1:].float().topk(2, dim=-1).values
    assert (top2[:, 0] - top2[:, 1]).min() > 0.1, "the prompt no longer has a clear greedy path: pick another"
    assert ours.generate(prompt, max_new_tokens=4, do_sample=False).tolist() == expected.tolist()


def test_attention_and_rmsnorm_in_fp32(checkpoint):
    """Without the MoE swap (the MoE kernels take bf16 only) the model runs fp32: our attention and RMSNorm give
    transformers' logits to fp32 tolerance, on a prefill and on decode steps past the window. The attention is
    chosen at load time here (register_attention), the way transformers users pick one."""
    theirs32 = _load(checkpoint, torch.float32)
    ours32 = _load(checkpoint, torch.float32, attn_implementation=integration.register_attention())
    assert ours32.config._attn_implementation == "gpt_oss_triton"
    integration.apply(ours32, moe=False, attention=False)
    tokens = PROMPT.to(DEVICE)
    assert_close(ours32(input_ids=tokens).logits, theirs32(input_ids=tokens).logits, torch.float32, name="prefill")
    cache_ours = transformers.DynamicCache(config=ours32.config)
    cache_theirs = transformers.DynamicCache(config=theirs32.config)
    for start, stop in ((0, 3), (3, 4), (4, 6), (6, 7)):  # decode steps and chunked prefill, past the window
        a = ours32(input_ids=tokens[:, start:stop], cache=cache_ours, use_cache=True).logits
        b = theirs32(input_ids=tokens[:, start:stop], cache=cache_theirs, use_cache=True).logits
        assert_close(a, b, torch.float32, name=f"positions {start}..{stop - 1} against the cache")


def test_every_swapped_module_runs_our_kernels(ours):
    layers = ours.model.layers
    assert all(type(layer.mlp) is TritonGptOssMLP and type(layer.mlp.router) is TritonGptOssTopKRouter
               and type(layer.mlp.experts) is TritonGptOssExperts for layer in layers)
    norms = [m for m in ours.modules() if isinstance(m, transformers.models.gpt_oss.modeling_gpt_oss.GptOssRMSNorm)]
    assert len(norms) == 2 * len(layers) + 1 and all(type(m) is TritonGptOssRMSNorm for m in norms)
    L = len(layers)
    cache = transformers.DynamicCache(config=ours.config)
    tokens = PROMPT.to(DEVICE)
    out = {}
    prefill = _ops(lambda: out.update(ours(input_ids=tokens, cache=cache, use_cache=True, output_router_logits=True)))
    # transformers' output recorders still find our router: its logits per layer, and the aux loss from them
    assert [tuple(r.shape) for r in out["router_logits"]] == [(tokens.numel(), CONFIG.num_experts)] * L
    assert torch.isfinite(out["aux_loss"])
    assert prefill == dict(rmsnorm=2 * L + 1, attention=L, decode_attention=0, routing=L, moe_mlp1=L, moe_mlp2=L)
    decode = _ops(lambda: ours(input_ids=tokens[:, :1], cache=cache, use_cache=True))
    assert decode == dict(rmsnorm=2 * L + 1, attention=0, decode_attention=L, routing=L, moe_mlp1=L, moe_mlp2=L)


def test_experts_take_transformers_interface(theirs, ours):
    """The experts alone, called as transformers calls experts (top_k_index, top_k_weights), give transformers'
    dense experts' output on routes chosen elsewhere."""
    x = torch.randn(5, CONFIG.hidden_size, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.bfloat16)
    index = torch.tensor([[0, 3], [1, 0], [2, 1], [3, 2], [0, 1]], device=DEVICE)
    weights = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], device=DEVICE)
    got = ours.model.layers[0].mlp.experts(x, index, weights)
    want = theirs.model.layers[0].mlp.experts(x, index, weights.to(torch.bfloat16))
    assert_close(got, want, torch.bfloat16, scale=2.0, name="experts")


def test_apply_twice_is_harmless(ours, our_logits, checkpoint):
    experts = [layer.mlp.experts for layer in ours.model.layers]
    assert integration.apply(ours, checkpoint=checkpoint) is ours
    integration.apply(ours)  # nothing left to swap: no checkpoint needed
    assert [layer.mlp.experts for layer in ours.model.layers] == experts
    assert torch.equal(ours(input_ids=PROMPT.to(DEVICE)).logits, our_logits)


def test_refuses_a_dequantized_model_without_its_checkpoint(checkpoint):
    model = _load(checkpoint)
    with pytest.raises(integration.UnsupportedModelError, match="dequantized them to bf16.*checkpoint="):
        integration.apply(model)
    assert type(model.model.layers[0].mlp) is not TritonGptOssMLP  # nothing half-applied


def test_refuses_another_checkpoints_experts(checkpoint, tmp_path):
    other = make_checkpoint(tmp_path / "other", CONFIG, layout="hf", seed=6)
    model = _load(checkpoint)
    with pytest.raises(integration.UnsupportedModelError, match="layer 0's experts .* are not the model's"):
        integration.apply(model, checkpoint=other)
    assert type(model.model.layers[-1].mlp) is not TritonGptOssMLP  # nothing half-applied


def test_refuses_an_unsupported_transformers_version(theirs, monkeypatch):
    # the module `import transformers` gives now (transformers' lazy module may have replaced the one imported above)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.56.2")
    with pytest.raises(integration.UnsupportedModelError, match="transformers 4.56.2 is not supported"):
        integration.apply(theirs, moe=False)


def test_refuses_a_device_without_triton(theirs, monkeypatch):
    if DEVICE != "cpu":
        pytest.skip("a GPU runs the kernels natively")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(integration.UnsupportedModelError, match="on cpu, where Triton does not run"):
        integration.apply(theirs, moe=False)


def test_refuses_moe_without_bf16(checkpoint):
    with pytest.raises(integration.UnsupportedModelError, match="runs torch.float32: the MoE kernels take bf16"):
        integration.apply(_load(checkpoint, torch.float32), checkpoint=checkpoint)


def test_refuses_padding_and_static_caches(ours):
    """What the attention kernels cannot take fails when the masks are made, before any layer runs."""
    tokens = PROMPT.to(DEVICE)
    padded = torch.ones_like(tokens)
    padded[1, :2] = 0
    with pytest.raises(ValueError, match="the attention mask pads some rows"):
        ours(input_ids=tokens, attention_mask=padded)
    static = transformers.StaticCache(config=ours.config, max_cache_len=16)
    with pytest.raises(ValueError, match="consecutive positions up to the last query"):
        ours(input_ids=tokens, cache=static, use_cache=True)


def test_mask_function_takes_causal_and_sliding_masks_only(ours):
    """transformers asks the mask function for the pattern it wants; gpt-oss asks for causal and sliding-window
    causal masks, and anything else (here bidirectional) is refused."""
    from transformers import masking_utils as mu

    from gpt_oss_triton.model.integrations.hf_attention import triton_attention_mask
    kw = dict(config=ours.config, device=DEVICE)
    assert triton_attention_mask(2, 7, 7, 0, 0, mu.causal_mask_function, None, **kw) is None
    assert triton_attention_mask(2, 1, 4, 9, 6, mu.sliding_window_causal_mask_function(4), None, **kw) is None
    with pytest.raises(ValueError, match="neither causal nor sliding-window causal"):
        triton_attention_mask(2, 7, 7, 0, 0, mu.bidirectional_mask_function, None, **kw)


def test_takes_the_blocks_transformers_builds_for_its_hub_kernels(checkpoint, ours):
    """Loaded for transformers' hub MXFP4 kernels (a GPU with them installed), each layer holds Mxfp4GptOssMLP
    with the hub's swizzled weights: apply reads the checkpoint's packed ones instead, checked by the biases. Built
    here from the dequantized model, as that loading would leave it (fp32 biases, no dense weights)."""
    from transformers.integrations.mxfp4 import Mxfp4GptOssExperts, Mxfp4GptOssMLP
    model = _load(checkpoint)
    for layer in model.model.layers:
        experts = Mxfp4GptOssExperts(model.config).to(DEVICE)
        experts.gate_up_proj_bias.copy_(layer.mlp.experts.gate_up_proj_bias)
        experts.down_proj_bias.copy_(layer.mlp.experts.down_proj_bias)
        layer.mlp = Mxfp4GptOssMLP(layer.mlp.router, experts)
    integration.apply(model, checkpoint=checkpoint)
    for theirs_layer, our_layer in zip(model.model.layers, ours.model.layers):
        assert type(theirs_layer.mlp) is TritonGptOssMLP
        a, b = theirs_layer.mlp.experts.state_dict(), our_layer.mlp.experts.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = _load(checkpoint)
    other.model.layers[1].mlp.experts.down_proj_bias.data[0, 0] += 1  # a wrong bias is caught
    with pytest.raises(integration.UnsupportedModelError, match="layer 1's experts \\(down_proj\\) are not the model's"):
        integration.apply(other, checkpoint=checkpoint)


@pytest.fixture
def classes():
    """transformers' gpt-oss classes patched by apply_to_classes for one test, restored after it."""
    yield integration.apply_to_classes
    integration.revert_classes()


def _hf_classes() -> dict:
    hf = transformers.models.gpt_oss.modeling_gpt_oss
    return dict(norm=hf.GptOssRMSNorm, attn=hf.GptOssPreTrainedModel.__dict__.get("get_correct_attn_implementation"),
                **{c.__name__: c.__dict__.get("from_pretrained") for c in (hf.GptOssForCausalLM, hf.GptOssModel)})


def test_class_patch_builds_models_on_our_kernels(classes, checkpoint, our_logits):
    """After apply_to_classes a plain from_pretrained builds our RMSNorm, selects our attention and swaps our MoE
    in from the directory it loads: the same ops run as after apply, and the same logits."""
    classes()
    model = _load(checkpoint, device_map=DEVICE)
    assert model.config._attn_implementation == "gpt_oss_triton"
    assert all(type(layer.mlp.experts) is TritonGptOssExperts for layer in model.model.layers)
    L = len(model.model.layers)
    out = {}
    assert _ops(lambda: out.update(logits=model(input_ids=PROMPT.to(DEVICE)).logits)) == dict(
        rmsnorm=2 * L + 1, attention=L, decode_attention=0, routing=L, moe_mlp1=L, moe_mlp2=L)
    assert torch.equal(out["logits"], our_logits)
    explicit = _load(checkpoint, device_map=DEVICE, attn_implementation="eager")  # an explicit choice still wins
    assert explicit.config._attn_implementation == "eager"


def test_class_patch_twice_is_harmless_and_reverts(classes, checkpoint):
    before = _hf_classes()
    classes()
    classes(moe=False)  # replaces the first patch: transformers' MoE, our RMSNorm and attention
    model = _load(checkpoint)
    assert type(model.model.layers[0].mlp.experts) is not TritonGptOssExperts
    assert type(model.model.norm) is TritonGptOssRMSNorm and model.config._attn_implementation == "gpt_oss_triton"
    integration.revert_classes()
    assert _hf_classes() == before
    model = _load(checkpoint)
    assert type(model.model.norm) is not TritonGptOssRMSNorm and model.config._attn_implementation != "gpt_oss_triton"


def test_class_patch_refuses_moe_without_a_local_checkpoint(classes, checkpoint):
    classes()
    with pytest.raises(integration.UnsupportedModelError, match="'openai/gpt-oss-20b' is not a local directory"):
        transformers.GptOssForCausalLM.from_pretrained("openai/gpt-oss-20b")
    with pytest.raises(integration.UnsupportedModelError, match="loaded from .*torch.float32.*apply_to_classes"):
        _load(checkpoint, torch.float32)
