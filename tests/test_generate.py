"""Generation: sampling filters, determinism under a seed, stop tokens, limits checked up front."""
import pytest
import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.runtime.generate import SamplingParams, generate, sample


@pytest.fixture(scope="module")
def model():
    return GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")


def test_same_seed_same_tokens(model):
    params = SamplingParams(max_new_tokens=24, temperature=1.0, seed=1234)
    a = list(generate(model, [1, 2, 3], params))
    b = list(generate(model, [1, 2, 3], params))
    c = list(generate(model, [1, 2, 3], SamplingParams(max_new_tokens=24, temperature=1.0, seed=99)))
    assert a == b and len(a) == 24
    assert a != c


def test_greedy_equals_argmax_of_full_recompute(model):
    prompt = [5, 6, 7, 8]
    out = list(generate(model, prompt, SamplingParams(max_new_tokens=30, temperature=0.0)))
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(30):  # past the window of 16
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(prompt):]


def test_stop_token_ends_generation_and_stats(model):
    greedy = list(generate(model, [9, 10], SamplingParams(max_new_tokens=12, temperature=0.0)))
    gen = generate(model, [9, 10], SamplingParams(max_new_tokens=12, temperature=0.0), stop_tokens={greedy[4]})
    out = list(gen)
    assert out == greedy[:greedy.index(greedy[4]) + 1]
    assert gen.stats.stopped_by == "stop" and gen.stats.new_tokens == len(out) and gen.stats.prompt_tokens == 2
    gen = generate(model, [9, 10], SamplingParams(max_new_tokens=3, temperature=0.0))
    assert len(list(gen)) == 3 and gen.stats.stopped_by == "length"


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    seen = set(sample(logits, SamplingParams(top_k=2), seed=0).tolist())
    assert seen == {0, 1}
    # probs ~ [.64, .23, .09, .03, ...]: top_p 0.8 keeps tokens 0 and 1 (0.64 < 0.8 <= 0.87)
    seen = set(sample(logits, SamplingParams(top_p=0.8), seed=1).tolist())
    assert seen == {0, 1}
    assert set(sample(logits, SamplingParams(top_p=0.5), seed=2).tolist()) == {0}
    assert (sample(logits, SamplingParams(temperature=0.0)) == 0).all()
    # temperature sharpens: at 0.05 the second token (80 logits below after scaling) never shows
    assert set(sample(logits, SamplingParams(temperature=0.05), seed=3).tolist()) == {0}


def test_sampling_matches_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(20000, 1)
    counts = torch.bincount(sample(logits, SamplingParams(), seed=1), minlength=3)
    assert torch.allclose(counts / 20000, torch.tensor([0.5, 0.3, 0.2]), atol=0.02)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature must be in"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_k=-2), "top_k must be an integer"),
    (dict(max_new_tokens=0), "max_new_tokens must be"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_invalid_sampling_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_limits_are_checked_before_any_work(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, [], SamplingParams())
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 512\)"):
        generate(model, [1, 600], SamplingParams())
    with pytest.raises(ValueError, match="exceeds the model's context of 131072"):
        generate(model, [1] * 100, SamplingParams(max_new_tokens=131072))
