"""The memory budget agrees with the parameter counts, the bytes on disk and the spec's KV figures."""
import pytest
import torch

from gpt_oss_triton.model import PRESETS
from gpt_oss_triton.model.budget import (CARD_RESERVE, CARDS, card_contexts, check_fits, free_bytes, max_batch,
                                        max_context, memory_budget, weight_bytes)
from gpt_oss_triton.model.params import count_parameters
from gpt_oss_triton.model.reference import Transformer

# spec.md: bytes on disk (= the HF index total_size) and KV bytes per token of context.
DISK = {"gpt-oss-20b": 13_761_264_768, "gpt-oss-120b": 65_248_815_744}
KV_PER_TOKEN = {"gpt-oss-20b": 24_576, "gpt-oss-120b": 36_864}


@pytest.mark.parametrize("preset", sorted(DISK))
def test_weights_are_the_bytes_on_disk(preset):
    config = PRESETS[preset]
    assert weight_bytes(config) == DISK[preset]
    model = Transformer(config, device="meta")
    stored = sum(t.numel() * (1 if t.dtype == torch.uint8 else 2) for t in model.state_dict().values())
    assert weight_bytes(config) == stored
    # Experts at 4.25 bits (17 bytes per 32 weights), everything else bf16.
    total, _ = count_parameters(model)
    experts = sum(2 * t.numel() for n, t in model.state_dict().items() if n.endswith(".blocks"))
    assert weight_bytes(config) == 2 * (total - experts) + experts * 17 // 32


@pytest.mark.parametrize("preset", sorted(DISK))
def test_kv_cache_per_token_and_sliding_ring(preset):
    config = PRESETS[preset]
    b = memory_budget(config, batch=1, context=131072)
    assert b.kv_per_token == KV_PER_TOKEN[preset]
    ring = (config.num_hidden_layers // 2) * 2 * 8 * 64 * 2 * 128
    assert b.kv_cache == KV_PER_TOKEN[preset] * 131072 + ring
    assert memory_budget(config, batch=4, context=8192).kv_cache == 4 * memory_budget(config, 1, 8192).kv_cache


def test_the_models_fit_their_gpus():
    """20b in 16 GB and 120b on one 80 GB GPU, with room for a useful KV cache."""
    b20 = memory_budget(PRESETS["gpt-oss-20b"], batch=1, context=32768)
    assert b20.total < 16e9
    assert max_batch(PRESETS["gpt-oss-20b"], 8192, 16e9) >= 4
    b120 = memory_budget(PRESETS["gpt-oss-120b"], batch=1, context=131072)
    assert b120.total < 80e9
    assert max_batch(PRESETS["gpt-oss-120b"], 131072, 80e9) >= 2
    assert max_batch(PRESETS["gpt-oss-120b"], 131072, 60e9) == 0
    assert "weights 65.25 GB" in str(b120)


def test_which_context_fits_a_consumer_card():
    """20b on 16 and 24 GB cards (README): batch 1 at 81,846 positions on 16 GB, the whole 131,072 on 24 GB; each
    figure is the edge of the budget (one position more does not fit)."""
    config = PRESETS["gpt-oss-20b"]
    fits = card_contexts(config)
    assert fits == {("16 GB", 1): 81846, ("16 GB", 4): 20337, ("24 GB", 1): 131072, ("24 GB", 4): 107718}
    for (card, batch), context in fits.items():
        room = CARDS[card] - CARD_RESERVE
        assert memory_budget(config, batch, context).total <= room
        assert context == config.max_context or memory_budget(config, batch, context + 1).total > room
    assert max_context(config, 1, weight_bytes(config)) == 0


def test_limits():
    with pytest.raises(ValueError, match="context 200000 exceeds"):
        memory_budget(PRESETS["gpt-oss-20b"], 1, 200_000)
    with pytest.raises(ValueError, match="must be >= 1"):
        memory_budget(PRESETS["gpt-oss-20b"], 0, 10)


def test_a_batch_that_does_not_fit_fails_before_allocating():
    config = PRESETS["gpt-oss-20b"]
    need = memory_budget(config, 8, 8192)
    assert check_fits(config, 8, 8192, free=None) == need  # off CUDA nothing is checked
    assert check_fits(config, 8, 8192, free=need.total - need.weights) == need
    fits = max_batch(config, 8192, 1e9 + need.weights)
    with pytest.raises(ValueError, match=rf"batch 8 at 8192 tokens needs .* only 1.00 GB are free: at most batch "
                                         rf"{fits} fits"):
        check_fits(config, 8, 8192, free=int(1e9))
    assert free_bytes("cpu") is None


@pytest.mark.gpu
@pytest.mark.parametrize("preset, batch, context", [("tiny", 4, 512), ("gpt-oss-20b", 2, 4096)])
def test_gpu_memory_stays_within_the_budget(preset, batch, context):
    """Weights as counted, and a whole engine run (full prefill chunks, CUDA-graph decode) within the budget."""
    from gpt_oss_triton.model import GptOss
    from gpt_oss_triton.model.runtime.engine import Engine
    from gpt_oss_triton.model.runtime.sampling import SamplingParams

    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    model = GptOss.from_pretrained(preset, device="cuda")
    config = model.config
    weights = torch.cuda.memory_allocated() - base
    rope = config.max_context * config.head_dim * 4  # the model's fp32 cos/sin table, built on first use
    assert weight_bytes(config) <= weights <= weight_bytes(config) + rope + (1 << 20)
    torch.cuda.reset_peak_memory_stats()
    budget = memory_budget(config, batch, context)
    engine = Engine(model, max_batch=batch, max_len=context)
    g = torch.Generator().manual_seed(0)
    for _ in range(batch):
        engine.submit(torch.randint(0, config.vocab_size, (context - 8,), generator=g).tolist(),
                      SamplingParams(max_new_tokens=8, temperature=0.0))
    engine.run()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= budget.total, f"peak {peak / 1e9:.3f} GB over the budget: {budget}"
