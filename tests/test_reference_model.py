"""The reference model against OpenAI's own code (golden outputs), and its KV cache against full recompute."""
import pytest
import torch
from safetensors.torch import load_file

from gpt_oss_triton.model import GptOss

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_file(golden_dir / "official_fp32.safetensors")


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_fp32_matches_the_official_reference(golden_dir, golden, layout):
    """README of the golden data: fp32 within ~1e-4, and the same 8 greedy tokens, also through the KV cache."""
    model = GptOss.from_pretrained(golden_dir / "tiny_seed7" / layout, dtype=torch.float32, device="cpu")
    tokens = golden["tokens"][None]
    logits = model(tokens)[0]
    assert (logits - golden["logits"]).abs().max() < 1e-4

    cache = model.new_cache(1, 64)
    step = model(tokens, cache)[0, -1]
    generated = []
    for i in range(len(golden["generated"])):
        assert (step - golden["gen_logits"][i]).abs().max() < 1e-4, f"decode step {i}"
        generated.append(int(step.argmax()))
        step = model(torch.tensor([[generated[-1]]]), cache)[0, -1]
    assert generated == golden["generated"].tolist()


def test_bf16_is_close_to_the_official_reference(golden_dir, golden):
    model = GptOss.from_pretrained(golden_dir / "tiny_seed7/hf", dtype=torch.bfloat16, device="cpu")
    diff = (model(golden["tokens"][None])[0].float() - golden["logits"]).abs()
    assert diff.mean() < 0.1 and diff.max() < 1.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_cache_decode_equals_full_recompute(dtype):
    """Prefill in uneven chunks, then one token at a time, past the sliding window (16) twice over."""
    model = GptOss.from_pretrained("tiny", dtype=dtype, device="cpu")
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 45), generator=g)
    full = model(tokens)
    cache = model.new_cache(2, 64)
    pieces = [model(tokens[:, :7], cache), model(tokens[:, 7:20], cache)]
    pieces += [model(tokens[:, t:t + 1], cache) for t in range(20, 45)]
    assert cache.length == 45
    cached = torch.cat(pieces, dim=1)
    tol = 1e-4 if dtype == torch.float32 else 0.0
    if dtype == torch.float32:
        assert (cached - full).abs().max() < tol
    else:  # bf16 matmuls of different shapes round differently: compare the decisions, loosely the values
        assert (cached.float() - full.float()).abs().mean() < 0.05
        assert (cached.argmax(-1) == full.argmax(-1)).float().mean() > 0.95


def test_batch_rows_are_independent():
    model = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    tokens = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(1))
    batched = model(tokens)
    for b in range(3):
        assert (model(tokens[b:b + 1])[0] - batched[b]).abs().max() < 1e-4


def test_sliding_window_boundary():
    """One sliding layer: position p sees tokens p-w+1..p, so token 0 reaches positions 0..w-1 and no further."""
    model = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    model.block = model.block[:1]
    assert model.block[0].attn.sliding_window == (w := model.config.sliding_window)
    tokens = torch.randint(0, 512, (1, w + 8), generator=torch.Generator().manual_seed(2))
    other = tokens.clone()
    other[0, 0] = (tokens[0, 0] + 1) % 512
    diff = (model(tokens)[0] - model(other)[0]).abs().amax(-1)
    assert (diff[:w] > 1e-3).all()
    assert (diff[w:] < 1e-5).all()  # fp32 noise only: expert GEMMs see other row counts


def test_bad_tokens_and_lengths_are_named():
    model = GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        model(torch.tensor([[1, 512]]))
    with pytest.raises(ValueError, match=r"must be \[batch, seq\]"):
        model(torch.tensor([1, 2]))
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="0 cached \\+ 9 new positions exceed the cache length 8"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.new_cache(1, model.config.max_context + 1)


def test_kept_dense_experts_follow_the_packed_weights():
    """MXFP4Weight.expert keeps small dequantized experts: what it returns must be a fresh dequantization of the
    packed tensors as they are now, after load_state_dict or an in-place change too."""
    from gpt_oss_triton.kernels.mxfp4 import mxfp4_dequantize
    from gpt_oss_triton.model.reference import MXFP4Weight

    g = torch.Generator().manual_seed(0)
    w = MXFP4Weight(2, 64, 64)

    def packed():
        return {"blocks": torch.randint(0, 256, w.blocks.shape, generator=g, dtype=torch.uint8),
                "scales": torch.randint(120, 130, w.scales.shape, generator=g, dtype=torch.uint8)}

    def fresh(e):
        return mxfp4_dequantize(w.blocks[e], w.scales[e], torch.float32)

    w.load_state_dict(packed())
    first = w.expert(1, torch.float32)
    assert torch.equal(first, fresh(1)) and w.expert(1, torch.float32) is first
    w.load_state_dict(packed())
    assert torch.equal(w.expert(1, torch.float32), fresh(1)) and not torch.equal(w.expert(1, torch.float32), first)
    w.scales.add_(1)
    assert torch.equal(w.expert(0, torch.float32), fresh(0)) and torch.equal(w.expert(1, torch.float32), fresh(1))
    assert torch.equal(w.expert(1, torch.bfloat16), mxfp4_dequantize(w.blocks[1], w.scales[1], torch.bfloat16))
