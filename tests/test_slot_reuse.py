"""A request's tokens do not depend on what its engine slot held before: after every kind of request (logit
bias, penalties, a constraint, logprobs, top-k, plain sampling, greedy), beside a batch mate that keeps a bias,
penalties, filters and a constraint the whole time, each request draws exactly what it draws alone on a fresh engine.
The model is a stand-in whose logits are a fixed random function of a row's whole context, so the bias rows,
counts, draw counters, masks and cache rows that a slot must reset all show in the tokens."""
from types import SimpleNamespace

import torch

from gpt_oss_triton.model.runtime.engine import Engine
from gpt_oss_triton.model.runtime.sampling import SamplingParams, SlotSampler, fill_masks
from scripted_model import Forced

V = 64


class ContextModel:
    """logits(context) = 3 * randn(V) seeded by the context's ids: any stale state changes them."""

    def __init__(self):
        self.config = SimpleNamespace(vocab_size=V, max_context=128)
        self.embedding = SimpleNamespace(weight=torch.zeros(1))

    def new_cache(self, batch: int, max_len: int):
        return _Seqs(batch)

    def forward_packed(self, tokens: torch.Tensor, n_new: list[int], cache) -> torch.Tensor:
        logits = torch.zeros(len(n_new), V)
        fed = iter(tokens.tolist())
        for b, n in enumerate(n_new):
            if n:
                cache.seq[b] += [next(fed) for _ in range(n)]
                logits[b] = 3 * torch.randn(V, generator=torch.Generator().manual_seed(hash(tuple(cache.seq[b]))))
        return logits


class _Seqs:
    def __init__(self, batch: int):
        self.seq = [[] for _ in range(batch)]

    def reset(self, slot: int) -> None:
        self.seq[slot] = []


def _requests():
    """(prompt, params, constraint maker) in submission order; the second is the long-lived batch mate (its
    filters make every call filter, so a slot's stale top-k or top-p would apply)."""
    return [
        ([1, 2, 3], SamplingParams(max_new_tokens=3, temperature=1.0, seed=1, logit_bias={5: 15.0}), None),
        ([4, 5], SamplingParams(max_new_tokens=30, temperature=0.0, top_k=40, top_p=0.95, logit_bias={6: 2.0},
                                presence_penalty=1.5, frequency_penalty=0.5), lambda: Forced([6, 7] * 4, V)),
        ([1, 2, 3], SamplingParams(max_new_tokens=3, temperature=1.0, seed=1), None),  # r0's seed, no bias
        ([7], SamplingParams(max_new_tokens=4, temperature=0.0, presence_penalty=2.0), None),
        ([7], SamplingParams(max_new_tokens=3, temperature=0.0), lambda: Forced([9, 9, 9], V)),
        ([8, 9], SamplingParams(max_new_tokens=3, temperature=0.7, seed=4, top_k=3, logprobs=2), None),
        ([8, 9], SamplingParams(max_new_tokens=3, temperature=0.0, logprobs=0), None),
        ([7], SamplingParams(max_new_tokens=4, temperature=0.0, frequency_penalty=1.0), None),
        ([1, 2, 3], SamplingParams(max_new_tokens=3, temperature=3.0, seed=2), None),  # after top-k: all ids likely
    ]


def _run(engine, prompt, params, make):
    return engine.submit(prompt, params, constraint=make() if make else None)


def test_each_request_draws_what_it_draws_alone_whatever_its_slot_held():
    engine = Engine(ContextModel(), max_batch=2, max_len=64)
    reqs = [_run(engine, *r) for r in _requests()]
    engine.run()
    assert reqs[1].slot is None and len(reqs[1].tokens) == 30
    # The others took turns in slot 0, a token a step, beside it: fewer tokens in all than its 30.
    assert sum(len(r.tokens) for r in reqs if r is not reqs[1]) < 30
    for i, (req, spec) in enumerate(zip(reqs, _requests())):
        alone = Engine(ContextModel(), max_batch=2, max_len=64)
        expected = _run(alone, *spec)
        alone.run()
        assert req.tokens == expected.tokens, f"request {i}"
        assert [lp.top for lp in req.logprobs] == [lp.top for lp in expected.logprobs], f"request {i}"
    assert reqs[0].tokens == [5, 5, 5] != reqs[2].tokens  # the bias shows, so a leftover would too


def test_a_reused_bias_row_is_cleared_while_a_batch_mate_keeps_its_bias():
    logits = torch.zeros(2, V)
    logits[:, 2] = 1.0
    rows = torch.arange(2)
    sampler = SlotSampler(2, "cpu", V)
    sampler.assign(0, SamplingParams(temperature=0.0, logit_bias={5: 10.0}), 0)
    sampler.assign(1, SamplingParams(temperature=0.0, logit_bias={7: 10.0}), 0)
    assert sampler(logits, rows, [0, 1]).tokens.tolist() == [5, 7]
    sampler.assign(0, SamplingParams(temperature=0.0), 0)
    assert sampler(logits, rows, [0, 1]).tokens.tolist() == [2, 7]
    sampler.assign(0, SamplingParams(temperature=0.0, logit_bias={9: 10.0}), 0)  # a new bias, not both
    sampler.assign(1, SamplingParams(temperature=0.0, logit_bias={5: -10.0}), 0)
    assert sampler(logits, rows, [0, 1]).tokens.tolist() == [9, 2]


def test_a_reused_slot_counts_and_draws_from_zero():
    logits = torch.zeros(1, V)
    logits[0, 8] = 1.0
    rows = torch.arange(1)
    sampler = SlotSampler(1, "cpu", V)
    sampler.assign(0, SamplingParams(temperature=0.0, presence_penalty=0.1), 0)
    assert [sampler(logits, rows, [0]).tokens.item() for _ in range(3)] == [8, 8, 8]  # 1.0 - 0.1 still wins
    sampler.assign(0, SamplingParams(temperature=0.0, presence_penalty=1.5), 0)
    assert [sampler(logits, rows, [0]).tokens.item() for _ in range(2)] == [8, 0]  # 8 fresh, then penalised
    flat = torch.zeros(1, V)
    params = SamplingParams(temperature=1.0)
    sampler.assign(0, params, seed=5)
    first = [sampler(flat, rows, [0]).tokens.item() for _ in range(6)]
    sampler.assign(0, params, seed=5)
    assert [sampler(flat, rows, [0]).tokens.item() for _ in range(6)] == first
    assert len(set(first)) > 1


def test_every_row_gets_its_own_mask_or_none():
    """A free row where a constrained row was on the last call: all ids allowed, not the old mask."""
    out = torch.zeros(3, (V + 31) // 32, dtype=torch.int32)
    fill_masks([Forced([3], V), None, Forced([40], V)], out)
    fill_masks([None, Forced([40], V), None], out)
    assert (out[0] == -1).all() and (out[2] == -1).all()
    assert out[1].tolist() == [0, 1 << 8]
