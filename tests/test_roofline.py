"""model/roofline.py reproduces the byte counts of ../shared/perf-notes.md and the models' active parameters."""
import pytest

from gpt_oss_triton.model import PRESETS
from gpt_oss_triton.model.roofline import decode_bytes, distinct_experts, expert_params, forward_flops, kv_bytes

GB = 1e9

# perf-notes.md, "Bytes that one decoded token must read (batch 1)", in GB.
NOTES = {
    "gpt-oss-20b": dict(attention=1.274, experts=1.269, router=0.004, unembedding=1.158, weights=3.71),
    "gpt-oss-120b": dict(attention=1.911, experts=1.904, router=0.027, unembedding=1.158, weights=5.00),
}


@pytest.mark.parametrize("preset", NOTES)
def test_batch1_weight_bytes_match_the_notes(preset):
    step = decode_bytes(PRESETS[preset])
    for part, gb in NOTES[preset].items():
        assert getattr(step, part) / GB == pytest.approx(gb, abs=0.0006 if gb < 0.1 else 0.006), part
    assert step.kv == 0 and step.total == step.weights


def test_one_expert_is_13_22_mb_at_4_25_bits():
    assert expert_params(PRESETS["gpt-oss-20b"]) * 17 / 32 / 1e6 == pytest.approx(13.22, abs=0.005)


@pytest.mark.parametrize("preset, per_position, sliding_mb", [("gpt-oss-20b", 24576, 3), ("gpt-oss-120b", 36864, 5)])
def test_kv_bytes_per_position_of_context_and_the_sliding_window(preset, per_position, sliding_mb):
    config = PRESETS[preset]
    assert kv_bytes(config, 10_001) - kv_bytes(config, 10_000) == per_position  # only full layers grow
    sliding = kv_bytes(config, 128) - 128 * per_position
    assert sliding / 1e6 == pytest.approx(sliding_mb, abs=0.4)
    assert decode_bytes(config, batch=8, context=1000).kv == 8 * kv_bytes(config, 1000)


@pytest.mark.parametrize("preset, context, tokens_per_s", [
    ("gpt-oss-20b", 0, 810), ("gpt-oss-20b", 8192, 767), ("gpt-oss-20b", 32768, 665),
    ("gpt-oss-120b", 0, 600), ("gpt-oss-120b", 8192, 565), ("gpt-oss-120b", 32768, 483)])
def test_ceilings_at_3_tb_per_s(preset, context, tokens_per_s):
    assert 3.0e12 / decode_bytes(PRESETS[preset], 1, context).total == pytest.approx(tokens_per_s, abs=1.5)


def test_batch64_touches_all_20b_experts_and_111_of_120b():
    assert distinct_experts(32, 4, 64) == pytest.approx(32, abs=0.01)
    assert distinct_experts(128, 4, 64) == pytest.approx(111, abs=0.5)
    assert distinct_experts(128, 4, 1) == pytest.approx(4)
    assert decode_bytes(PRESETS["gpt-oss-20b"], 64).weights / GB == pytest.approx(12.6, abs=0.05)
    assert decode_bytes(PRESETS["gpt-oss-120b"], 64).weights / GB == pytest.approx(56.0, abs=0.2)


@pytest.mark.parametrize("preset, active", [("gpt-oss-20b", 3.61e9), ("gpt-oss-120b", 5.13e9)])
def test_decode_flops_are_twice_the_active_parameters(preset, active):
    config = PRESETS[preset]
    attention = 4 * config.head_dim * config.num_attention_heads * config.num_hidden_layers  # one key each
    assert (forward_flops(config, 1, 1) - attention) / 2 == pytest.approx(active, rel=0.005)


def test_prefill_flops_count_causal_and_windowed_keys():
    config = PRESETS["tiny"]  # 2 full and 2 sliding (window 16) layers
    T, W = 40, config.sliding_window
    per_key = 4 * config.head_dim * config.num_attention_heads
    dense = forward_flops(config, 3, T) - 3 * T * (forward_flops(config, 1, 1) - 4 * per_key)
    keys = 2 * T * (T + 1) // 2 + 2 * (W * (W + 1) // 2 + (T - W) * W)
    assert dense == 3 * per_key * keys
