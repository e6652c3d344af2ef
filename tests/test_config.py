import pytest

from gpt_oss_triton.model import GptOssConfig, PRESETS
from gpt_oss_triton.model.params import count_parameters
from gpt_oss_triton.model.reference import Transformer

# The model card's figures (spec.md): exact totals from the shapes, and the active count per token.
COUNTS = {"gpt-oss-20b": (20_914_757_184, 3_608_307_264), "gpt-oss-120b": (116_829_156_672, 5_132_849_472)}


@pytest.mark.parametrize("preset", sorted(COUNTS))
def test_parameter_counts_on_meta(preset):
    model = Transformer(PRESETS[preset], device="meta")
    total, active = count_parameters(model)
    want_total, want_active = COUNTS[preset]
    assert total == want_total
    assert active == want_active
    # The card's rounded figures, within 1%.
    card = {"gpt-oss-20b": (20.9e9, 3.6e9), "gpt-oss-120b": (116.8e9, 5.1e9)}[preset]
    assert abs(total / card[0] - 1) < 0.01 and abs(active / card[1] - 1) < 0.01


def test_presets_are_the_released_shapes():
    c = PRESETS["gpt-oss-120b"]
    assert (c.num_hidden_layers, c.num_experts, c.experts_per_token) == (36, 128, 4)
    assert (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (
        2880, 2880, 64, 8, 64)
    assert c.layer_types[:3] == ("sliding_attention", "full_attention", "sliding_attention")
    tiny = PRESETS["tiny"]
    assert tiny.head_dim == 64 and tiny.num_attention_heads // tiny.num_key_value_heads > 1
    assert tiny.sliding_window < 32 and tiny.vocab_size >= 277


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_both_layouts_config_json(golden_dir, layout):
    c = GptOssConfig.from_json(golden_dir / "tiny_seed7" / layout / "config.json")
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.num_experts, c.sliding_window) == (
        128, 4, 2, 8, 8)
    assert c.layer_types == ("sliding_attention", "full_attention") * 2
    assert (c.rope_scaling_factor, c.rope_ntk_alpha, c.rope_ntk_beta, c.initial_context_length) == (32, 1, 32, 4096)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trips_through_both_layouts(preset):
    c = PRESETS[preset]
    assert GptOssConfig.from_dict(c.to_hf_dict()) == c
    assert GptOssConfig.from_dict(c.to_original_dict()) == c


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_hf_config_token_ids_are_in_the_vocabulary(preset):
    """The released ids (eos <|return|> 200002, pad <|endoftext|> 199999) where the vocabulary holds them, null
    where a small one does not: other implementations reject a pad id past the embedding."""
    c = PRESETS[preset]
    d = c.to_hf_dict()
    expected = (200002, 199999) if c.vocab_size > 200002 else (None, None)
    assert (d["eos_token_id"], d["pad_token_id"]) == expected


@pytest.mark.parametrize("change, message", [
    (dict(num_attention_heads=6, num_key_value_heads=4), "not a multiple of num_key_value_heads"),
    (dict(hidden_size=100), "multiples of the MXFP4 block"),
    (dict(experts_per_token=9), "experts_per_token 9"),
    (dict(layer_types=("sliding_attention",)), "layer_types has 1 entries for 4 layers"),
])
def test_invalid_config_is_named(change, message):
    d = PRESETS["tiny"].to_original_dict() | change
    with pytest.raises(ValueError, match=message):
        GptOssConfig.from_dict(d)


def test_missing_key_names_the_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"num_experts": 8}')
    with pytest.raises(ValueError, match=f"{p}.*missing key"):
        GptOssConfig.from_json(p)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'gpt-oss-7b'"):
        GptOssConfig.preset("gpt-oss-7b")
