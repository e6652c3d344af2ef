"""The engine's sampler (SlotSampler) against a plain-torch reference of the distribution it must draw from:
logit bias, presence and frequency penalties, constraint masks, temperature and top-k / top-p, in OpenAI's
order; the logprobs it reports against that distribution in fp32; and the greedy limits of tiny temperature
and top_p."""
import math

import pytest
import torch

from gpt_oss_triton.kernels.reference import sample_tokens_ref
from gpt_oss_triton.model.runtime.sampling import (SamplingParams, SlotSampler, draw_tokens, pack_bits, sample,
                                                   unpack_bits)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = 2000  # rows drawn at once, each its own seed: the empirical distribution's TV distance is ~0.03
V = 40


def next_token_probs_ref(logits, params: SamplingParams, drawn=(), allowed=None, exempt=()):
    """The distribution of a request's next token, from OpenAI's definitions: logits + bias, minus
    frequency_penalty * count + presence_penalty * (count > 0) over the ids drawn before (exempt ids not
    counted), -inf outside `allowed`, then temperature (0: greedy), top-k and top-p as sample_tokens_ref."""
    z = logits.double().clone()
    for t, b in params.logit_bias:
        z[t] += b
    counts = torch.zeros_like(z)
    for t in drawn:
        if t not in exempt:
            counts[t] += 1
    z -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0).double()
    if allowed is not None:
        z[~allowed] = float("-inf")
    return sample_tokens_ref(z.float(), 0.0 if params.greedy else params.temperature, params.top_k, params.top_p)


def _tv(tokens, probs):
    counts = torch.bincount(tokens.cpu(), minlength=probs.numel()).float() / tokens.numel()
    return 0.5 * (counts - probs).abs().sum().item()


def _tv_bound(probs, n=N):
    """1.5x the TV expected from n exact draws (E|count_i - n p_i| ~ sqrt(2 n p_i (1 - p_i) / pi)), + 0.01."""
    return 1.5 * 0.5 * (2 * probs * (1 - probs) / (math.pi * n)).sqrt().sum().item() + 0.01


def _bits(allowed_ids, rows):
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[allowed_ids] = True
    return pack_bits(allowed, (V + 31) // 32).expand(rows, -1).contiguous(), allowed


def _sampler(params, exempt=(), rows=N):
    sampler = SlotSampler(rows, DEVICE, V, exempt=exempt)
    for b in range(rows):
        sampler.assign(b, params, seed=1000 + b)
    return sampler, torch.arange(rows, device=DEVICE), list(range(rows))


def _force(sampler, rows, slots, token):
    """One draw of `token` for every row (a constraint allowing only it), as the engine would make it."""
    bits, _ = _bits([token], len(slots))
    out = sampler(torch.zeros(len(slots), V, device=DEVICE), rows, slots, bits)
    assert (out.tokens == token).all()


CASES = {  # (params, ids drawn before, a constraint's allowed ids or None)
    "bias": (SamplingParams(temperature=1.0, logit_bias={3: 2.5, 5: -1.5, 7: -100.0}), [], None),
    "penalties": (SamplingParams(temperature=0.8, frequency_penalty=1.5, presence_penalty=-0.5), [5, 5, 6], None),
    "all": (SamplingParams(temperature=0.7, top_p=0.9, top_k=12, presence_penalty=0.5, frequency_penalty=0.7,
                           logit_bias={5: 3.0, 6: -2.0}, logprobs=5), [5, 6, 9], [i for i in range(V) if i % 3 != 1]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_draws_follow_the_reference_distribution(case):
    params, drawn, allowed_ids = CASES[case]
    logits = torch.randn(V, generator=torch.Generator().manual_seed(7)) * 1.5
    logits[[5, 6]] = logits.max() + 0.5  # the penalised ids are among the likely ones, so the penalty shows
    sampler, rows, slots = _sampler(params, exempt={9})
    for token in drawn:
        _force(sampler, rows, slots, token)
    bits, allowed = _bits(allowed_ids, N) if allowed_ids else (None, None)
    out = sampler(logits.expand(N, -1).to(DEVICE), rows, slots, bits)
    probs = next_token_probs_ref(logits, params, drawn, allowed, exempt={9})
    assert set(out.tokens.tolist()) <= set(probs.nonzero().flatten().tolist())
    assert _tv(out.tokens, probs) < _tv_bound(probs)
    plain = next_token_probs_ref(logits, SamplingParams(temperature=params.temperature, top_p=params.top_p,
                                                        top_k=params.top_k), allowed=allowed)
    assert _tv(out.tokens, plain) > _tv_bound(probs)  # the test can tell the shifts from none


def test_penalties_count_each_draw_but_the_exempt_ids():
    """Greedy rows under penalties: each step's argmax matches the reference's over the ids drawn so far."""
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(8))
    logits[:, 9] = 4.0  # exempt: never penalised, so it wins every step
    logits[1, 9] = logits[2, 9] = -9.0
    params = [SamplingParams(temperature=0.0, frequency_penalty=0.6, presence_penalty=0.4),
              SamplingParams(temperature=0.0, frequency_penalty=1.9), SamplingParams(temperature=0.0)]
    sampler = SlotSampler(3, DEVICE, V, exempt={9})
    for b, p in enumerate(params):
        sampler.assign(b, p, seed=0)
    drawn = [[], [], []]
    for _ in range(12):
        out = sampler(logits.to(DEVICE), torch.arange(3, device=DEVICE), [0, 1, 2]).tokens.tolist()
        for b in range(3):
            assert out[b] == next_token_probs_ref(logits[b], params[b], drawn[b], exempt={9}).argmax().item()
            drawn[b].append(out[b])
    assert set(drawn[0]) == {9} and len(set(drawn[1])) > 3 and len(set(drawn[2])) == 1


def test_logprobs_are_the_sampled_distribution_in_fp32():
    params = CASES["all"][0]
    logits = torch.randn(V, generator=torch.Generator().manual_seed(3)) * 2
    sampler, rows, slots = _sampler(params, rows=8)
    for token in (5, 2, 2):
        _force(sampler, rows, slots, token)
    bits, allowed = _bits(list(range(0, V, 2)) + [5], 8)
    out = sampler(logits.expand(8, -1).to(DEVICE), rows, slots, bits)
    probs = next_token_probs_ref(logits, params, [5, 2, 2], allowed)
    expected = probs.log()
    for r in range(8):
        got = out.logprobs(r, params.logprobs)
        token = out.tokens[r].item()
        assert probs[token] > 0
        assert got.logprob == pytest.approx(expected[token].item(), abs=1e-5)
        ids = [i for i, _ in got.top]
        assert ids == expected.topk(params.logprobs).indices.tolist()
        assert [lp for _, lp in got.top] == pytest.approx(expected[ids].tolist(), abs=1e-5)
    assert out.tokens.unique().numel() > 1  # rows drew with their own seeds


def test_greedy_logprobs_are_at_temperature_one():
    logits = torch.randn(V, generator=torch.Generator().manual_seed(4))
    params = SamplingParams(temperature=0.0, logprobs=2, logit_bias={1: 1.0})
    sampler, rows, slots = _sampler(params, rows=2)
    out = sampler(logits.expand(2, -1).to(DEVICE), rows, slots)
    z = logits.clone()
    z[1] += 1.0
    assert out.tokens.tolist() == [z.argmax().item()] * 2
    assert out.logprobs(0, 2).logprob == pytest.approx(z.log_softmax(-1).max().item(), abs=1e-5)


def test_rows_without_extras_are_untouched_by_their_batch_mates():
    """A plain row sharing a call with biased, penalised and constrained rows draws what it draws alone."""
    logits = torch.randn(2, V, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    plain = SamplingParams(temperature=1.0)
    sampler = SlotSampler(2, DEVICE, V)
    sampler.assign(0, SamplingParams(temperature=1.0, logit_bias={4: 50.0}, frequency_penalty=2.0, logprobs=1), 1)
    sampler.assign(1, plain, seed=2)
    bits = torch.stack([_bits([4], 1)[0][0], torch.full(((V + 31) // 32,), -1, dtype=torch.int32)])
    together = [sampler(logits, torch.arange(2, device=DEVICE), [0, 1], bits).tokens[1].item() for _ in range(6)]
    alone = SlotSampler(1, DEVICE, V)
    alone.assign(0, plain, seed=2)
    single = [alone(logits[1:], torch.arange(1, device=DEVICE), [0]).tokens[0].item() for _ in range(6)]
    assert together == single


def test_a_slot_forgets_the_last_requests_bias_and_counts():
    logits = torch.zeros(1, V, device=DEVICE)
    logits[0, 8] = 1.0
    sampler = SlotSampler(1, DEVICE, V)
    rows = torch.arange(1, device=DEVICE)
    sampler.assign(0, SamplingParams(temperature=0.0, logit_bias={3: 10.0}, presence_penalty=2.0), 0)
    assert sampler(logits, rows, [0]).tokens.item() == 3
    sampler.assign(0, SamplingParams(temperature=0.0, presence_penalty=0.5), 0)  # no bias; counts restart
    assert sampler(logits, rows, [0]).tokens.item() == 8  # not 3: the bias went with its request
    assert sampler(logits, rows, [0]).tokens.item() == 8  # 8 drawn once: 1.0 - 0.5 still beats 0


@pytest.mark.parametrize("params", [SamplingParams(temperature=1e-39), SamplingParams(temperature=1e-30),
                                    SamplingParams(top_p=1e-46), SamplingParams(temperature=2.0, top_p=1e-46),
                                    SamplingParams(temperature=1e-39, top_p=1e-46, logprobs=1)],
                         ids=["T1e-39", "T1e-30", "p1e-46", "T2-p1e-46", "both-logprobs"])
def test_tiny_temperature_and_top_p_are_the_greedy_limit(params):
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(6)).to(DEVICE) * 3
    logits[0, 0] = -50.0  # token 0 is the one an overflow used to give
    greedy = logits.argmax(dim=-1)
    sampler, rows, slots = _sampler(params, rows=6)
    for _ in range(3):
        assert torch.equal(sampler(logits, rows, slots).tokens, greedy)
    assert torch.equal(sample(logits, params, seed=3), greedy)
    t = torch.full((6,), params.temperature, device=DEVICE)
    seeds = torch.arange(6, device=DEVICE)
    top_p = torch.full((6,), params.top_p, device=DEVICE)
    assert torch.equal(draw_tokens(logits, t, seeds, seeds, top_p=top_p), greedy)


def test_parameters_out_of_range_name_the_field():
    for kw, field in [({"presence_penalty": 2.5}, "presence_penalty"), ({"frequency_penalty": -3}, "frequency_penalty"),
                      ({"logit_bias": {5: 101}}, "logit_bias"), ({"logit_bias": {-1: 1}}, "logit_bias"),
                      ({"logit_bias": {"x": 1}}, "logit_bias"), ({"logprobs": 21}, "logprobs"),
                      ({"logprobs": True}, "logprobs")]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kw)
    assert SamplingParams(logit_bias={"7": 1, 2: -1.5}).logit_bias == ((2, -1.5), (7, 1.0))
    assert SamplingParams(temperature=1e-6).greedy and not SamplingParams(temperature=1e-5).greedy


def test_bits_round_trip_every_position():
    allowed = torch.rand(3 * 32 + 5, generator=torch.Generator().manual_seed(0)) > 0.5
    allowed[31] = allowed[63] = True  # the sign bit of a word
    bits = pack_bits(allowed, 4)
    assert torch.equal(unpack_bits(bits[None], allowed.numel())[0], allowed)
    assert not unpack_bits(bits[None], 128)[0, allowed.numel():].any()  # ids past the mask: not allowed
    assert unpack_bits(pack_bits(None, 2)[None], 50).all()
