"""The engine's continuous batching: batched, queued, joined, chunked and cancelled requests give the
same tokens as each prompt alone."""
import pytest
import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.runtime.engine import Engine
from gpt_oss_triton.model.runtime.generate import generate
from gpt_oss_triton.model.runtime.sampling import SamplingParams
from scripted_model import Forced

PROMPTS = [[1, 2, 3], list(range(10, 30)), [7], list(range(40, 49))]


@pytest.fixture(scope="module")
def model():
    return GptOss.from_pretrained("tiny", dtype=torch.float32, device="cpu")


def _alone(model, prompt, params):
    return list(generate(model, prompt, params))


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=20, temperature=0.0),
                                    SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=5)])
def test_variable_length_batch_equals_each_prompt_alone(model, params):
    engine = Engine(model, max_batch=4, max_len=64)
    reqs = [engine.submit(p, params) for p in PROMPTS]
    engine.run()
    for p, r in zip(PROMPTS, reqs):
        assert r.tokens == _alone(model, p, params)
        assert r.stats.stopped_by == "length"
    assert engine.steps == 20  # all four decoded together: one forward per new token, not per request


def test_queue_join_and_chunked_prefill(model):
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    engine = Engine(model, max_batch=2, max_len=64, prefill_chunk=4)
    first = [engine.submit(p, params) for p in PROMPTS[:3]]  # three requests, two slots: one waits
    for _ in range(5):
        engine.step()
    assert first[2].slot is None and not first[2].tokens
    late = engine.submit(PROMPTS[3], params)  # joins once a slot frees
    engine.run()
    for p, r in zip(PROMPTS, first + [late]):
        assert r.tokens == _alone(model, p, params), p


def test_prefill_chunk_bounds_the_tokens_of_a_step(model, monkeypatch):
    """prefill_chunk caps a step's prompt tokens over all requests (the memory budget counts on it)."""
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    engine = Engine(model, max_batch=3, max_len=64, prefill_chunk=5)
    steps, forward = [], model.forward_packed

    def spy(tokens, n_new, cache):
        steps.append(list(n_new))
        return forward(tokens, n_new, cache)

    monkeypatch.setattr(model, "forward_packed", spy)
    reqs = [engine.submit(p, params) for p in PROMPTS[:3]]  # 3, 20 and 1 prompt tokens
    engine.run()
    assert steps[:3] == [[3, 2, 0], [1, 5, 0], [1, 5, 0]]  # slot 0 decodes beside the chunks of slot 1
    assert max(sum(n) for n in steps) <= 5 + 3
    for p, r in zip(PROMPTS, reqs):
        assert r.tokens == _alone(model, p, params), p


def test_stop_tokens_cancel_and_callbacks(model):
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    greedy = _alone(model, PROMPTS[1], params)
    engine = Engine(model, max_batch=2, max_len=64)
    seen = []
    stopped = engine.submit(PROMPTS[1], params, stop_tokens={greedy[3]}, on_token=lambda r, t: seen.append(t))
    cancelled = engine.submit(PROMPTS[0], params)
    engine.step()
    engine.step()
    cancelled.cancel()
    engine.run()
    assert stopped.tokens == greedy[:greedy.index(greedy[3]) + 1] and stopped.stats.stopped_by == "stop"
    assert seen == stopped.tokens + [None]
    assert cancelled.stats.stopped_by == "cancelled" and len(cancelled.tokens) == 2
    assert engine.slots == [None, None] and not engine.busy


def test_a_request_cancelled_while_waiting_gives_its_slot_to_the_next(model):
    params = SamplingParams(max_new_tokens=2, temperature=0.0)
    engine = Engine(model, max_batch=1, max_len=64)
    engine.submit(PROMPTS[0], params)
    seen = []
    dropped = engine.submit(PROMPTS[1], params, on_token=lambda r, t: seen.append(t))
    after = engine.submit(PROMPTS[2], params)
    dropped.cancel()
    engine.step()
    engine.step()  # the first request's two tokens: its slot frees
    engine.step()  # skips the cancelled one: the next prefills at once
    assert len(after.tokens) == 1
    assert dropped.stats.stopped_by == "cancelled" and not dropped.tokens and seen == [None]


def test_finished_and_cancelled_requests_hold_no_slot(model):
    """Guards the slot bookkeeping: a request that ended (by length, by a stop token, cancelled while running
    or while waiting) has slot None, so nothing can free its old slot again once another request holds it
    (a double free), and every slot is free at the end."""
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    engine = Engine(model, max_batch=2, max_len=64)
    by_length = engine.submit(PROMPTS[0], params)
    by_stop = engine.submit(PROMPTS[1], params, stop_tokens=range(model.config.vocab_size))  # stops at once
    running = engine.submit(PROMPTS[2], params)
    waiting = engine.submit(PROMPTS[3], params)
    engine.step()  # by_stop stops on its first token: its slot goes to `running`
    assert by_stop.stats.stopped_by == "stop" and by_stop.slot is None
    engine.step()
    assert running.slot == 1 and waiting.slot is None
    running.cancel()
    waiting.cancel()
    engine.run()
    assert [r.stats.stopped_by for r in (by_length, running, waiting)] == ["length", "cancelled", "cancelled"]
    assert [r.slot for r in (by_length, by_stop, running, waiting)] == [None] * 4
    assert engine.slots == [None, None] and not engine.busy


def test_limits(model):
    engine = Engine(model, max_batch=1, max_len=16)
    with pytest.raises(ValueError, match="exceeds the engine's max length of 16"):
        engine.submit(list(range(10)), SamplingParams(max_new_tokens=7))
    with pytest.raises(ValueError, match="max_len 200000 exceeds the model's context"):
        Engine(model, max_len=200_000)


def _least_likely(model, prompt, k):
    """The k ids the model finds least likely after `prompt`: greedy would never pick them."""
    logits = model(torch.tensor([prompt]))[0, -1]
    return logits.argsort()[:k].tolist()


@pytest.mark.parametrize("params", [SamplingParams(max_new_tokens=6, temperature=0.0),
                                    SamplingParams(max_new_tokens=6, temperature=1.0, top_k=50, seed=3)])
def test_constraint_forces_tokens_and_leaves_other_rows_alone(model, params):
    forced = _least_likely(model, PROMPTS[1], 4)
    engine = Engine(model, max_batch=2, max_len=64)
    constraint = Forced(forced, model.config.vocab_size)
    constrained = engine.submit(PROMPTS[1], params, constraint=constraint)
    free = engine.submit(PROMPTS[0], params)
    engine.run()
    assert constrained.tokens[:4] == forced  # ids the model would never pick (top-k 50 would cut them)
    assert constraint.seen == constrained.tokens  # advanced with every token, the free ones after too
    assert free.tokens == _alone(model, PROMPTS[0], params)  # its batch mate's mask did not touch its row


def test_constraint_may_allow_several_ids_and_short_masks(model):
    class AnyOf:
        def __init__(self, ids):
            self.ids = ids

        def allowed_tokens(self):
            mask = torch.zeros(max(self.ids) + 1, dtype=torch.bool)  # ids past its end are ruled out
            mask[self.ids] = True
            return mask

        def advance(self, token):
            pass

    ids = _least_likely(model, PROMPTS[2], 3)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=1)
    engine = Engine(model, max_batch=1, max_len=64)
    req = engine.submit(PROMPTS[2], params, constraint=AnyOf(ids))
    engine.run()
    assert set(req.tokens) <= set(ids) and len(req.tokens) == 8
