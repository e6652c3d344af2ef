"""The decode step the engine captures: traced by torch.compile with no graph break, run on the active rows only
(compacted into buckets, padding that leaves no trace), replayed from a CUDA graph bit for bit like eager with
the sampler inside, and the engine's static buffers kept right as rows join and leave."""
import pytest
import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.runtime.decode_graph import DecodeGraph, buckets
from gpt_oss_triton.model.runtime.engine import Engine
from gpt_oss_triton.model.runtime.sampling import SamplingParams, SlotSampler
from scripted_model import Forced

torch.set_grad_enabled(False)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model():
    return GptOss.from_pretrained("tiny", backend="triton", device=DEVICE)


def _prefilled_cache(model, lengths):
    """A cache whose row b holds a random prompt of lengths[b] tokens."""
    cache = model.new_cache(len(lengths), 40)
    g = torch.Generator().manual_seed(1)
    for b, n in enumerate(lengths):
        n_new = [0] * len(lengths)
        n_new[b] = n
        model.forward_packed(torch.randint(0, 512, (n,), generator=g).to(DEVICE), n_new, cache)
    return cache


def _copy(cache):
    other = object.__new__(type(cache))
    other.__dict__.update(cache.__dict__)
    other.k, other.v = [t.clone() for t in cache.k], [t.clone() for t in cache.v]
    other.lengths = cache.lengths.clone()
    return other


def test_decode_step_compiles_without_graph_breaks(model):
    """fullgraph=True fails on any graph break, host sync (.item(), .tolist()) or data-dependent shape.
    In the interpreter only dynamo's tracing can run (the kernels are not compilable there); on a GPU inductor."""
    cache = _prefilled_cache(model, [3, 18])  # row 1 past the window of 16: its ring has wrapped
    other = _copy(cache)
    tokens = torch.tensor([5, 9], device=DEVICE)
    active = torch.tensor([1, 0], dtype=torch.int32, device=DEVICE)
    eager = model.decode_step(tokens, active, cache)
    compiled = torch.compile(model.decode_step, fullgraph=True, backend="eager" if DEVICE == "cpu" else "inductor")
    out = compiled(tokens, active, other)
    assert other.lengths.tolist() == cache.lengths.tolist() == [4, 18]  # only the active row advanced
    torch.testing.assert_close(out[0].float(), eager[0].float(), atol=0.05 if DEVICE == "cuda" else 0, rtol=0)
    slots = torch.tensor([1, 1], dtype=torch.int32, device=DEVICE)  # a bucket of 2: row 1 pads row 0
    out = compiled(tokens[[1, 1]], active, other, slots)
    assert other.lengths.tolist() == [4, 19]


def test_step_runs_only_the_active_rows(model):
    """Three of four slots decode in the bucket of 4 (one padding row), then one alone in the bucket of 1: the
    stale slot's KV is never read (NaN there would spread), padding leaves no trace, and every row's logits
    equal a step of that row alone."""
    cache = _prefilled_cache(model, [3, 18, 7, 5])
    for layer in range(len(cache.k)):
        cache.k[layer][1], cache.v[layer][1] = float("nan"), float("nan")  # slot 1 has left
    alone = []
    for b in (0, 2, 3):
        c = _copy(cache)
        slot = torch.tensor([b], dtype=torch.int32, device=DEVICE)
        alone.append(model.decode_step(torch.tensor([b + 5], device=DEVICE), torch.ones_like(slot), c, slot)[0])
    slots = torch.tensor([0, 2, 3, 0], dtype=torch.int32, device=DEVICE)
    active = torch.tensor([1, 1, 1, 0], dtype=torch.int32, device=DEVICE)
    before = _copy(cache)
    logits = model.decode_step(torch.tensor([5, 7, 8, 5], device=DEVICE), active, cache, slots)
    assert cache.lengths.tolist() == [4, 18, 8, 6]
    for i, expected in enumerate(alone):
        assert torch.equal(logits[i], expected), f"row {i}"
    assert torch.equal(logits[3], logits[0]), "the padding row computes what the row it copies computes"
    for layer in range(len(cache.k)):  # only the real rows' new positions were written
        for b, pos in ((0, 3), (2, 7), (3, 5)):
            slot = pos % cache.k[layer].shape[1]
            before.k[layer][b, slot] = cache.k[layer][b, slot]
        assert torch.equal(before.k[layer].nan_to_num(1.0), cache.k[layer].nan_to_num(1.0)), f"layer {layer}"


def test_buckets():
    assert buckets(1) == [1] and buckets(8) == [1, 2, 4, 8] and buckets(6) == [1, 2, 4, 6]


def test_capture_needs_a_cuda_cache(model):
    if DEVICE == "cuda":
        pytest.skip("a CUDA cache can be captured")
    with pytest.raises(ValueError, match="CUDA-graph capture needs a CUDA cache"):
        DecodeGraph(model, model.new_cache(1, 8), SlotSampler(1, DEVICE), capture=True)


def test_rows_join_and_leave_the_decode_buffers(model, monkeypatch):
    """Rows leave and join between decode steps, so the graph's rows change bucket and its token buffer must
    follow (a joining row's first token comes from a mixed prefill step), and the lookahead step launched
    before a request ends must drop its token. Same tokens as the engine's packed decode path (no DecodeGraph,
    no lookahead), which runs the same kernels; with sampling, greedy and sampled rows (filtered or not) share
    steps, so the in-graph draws must advance each slot's counter as the packed path does. Each decode step
    runs only its rows: buckets of 2 while both decode, 1 once one is left."""
    # one greedy row beside sampled ones (an all-greedy run took another minute of CI and tests nothing more)
    params = [SamplingParams(max_new_tokens=n, temperature=t, top_k=k, seed=s)
              for n, t, k, s in zip((2, 5, 2), (0.0, 0.8, 1.0), (0, 20, 0), (1, 2, 3))]
    rows_per_step = []
    decode_step = model.decode_step

    def spy(tokens, active, cache, slots=None):
        rows_per_step.append(tokens.shape[0])
        return decode_step(tokens, active, cache, slots)

    monkeypatch.setattr(model, "decode_step", spy)

    def run(use_graph):
        engine = Engine(model, max_batch=2, max_len=24, lookahead=use_graph)
        if not use_graph:
            engine.decoder = None
        reqs = [engine.submit([1, 2, 3], params[0]), engine.submit(list(range(10, 20)), params[1])]
        for _ in range(3):  # prefill both; decode both (the first ends); decode the second alone
            engine.step()
        reqs.append(engine.submit([7, 8], params[2]))  # joins the freed slot: prefills beside a decode
        engine.run()
        return [r.tokens for r in reqs], engine.steps

    (with_graph, steps), (without, _) = run(True), run(False)
    assert with_graph == without and [len(t) for t in with_graph] == [2, 5, 2]
    assert steps == 5
    assert 2 in rows_per_step and 1 in rows_per_step and max(rows_per_step) == 2


def test_a_constrained_request_is_never_decoded_ahead(model):
    """Its mask needs the token before, so a lookahead step would sample it unmasked: forced ids the model
    would not pick must come out exactly with the DecodeGraph and the lookahead on."""
    engine = Engine(model, max_batch=1, max_len=12, lookahead=True)
    forced = Forced([3, 1, 4], model.config.vocab_size)
    req = engine.submit([1, 2, 3], SamplingParams(max_new_tokens=4, temperature=0.0), constraint=forced)
    engine.run()
    assert req.tokens[:3] == [3, 1, 4] and forced.seen == req.tokens


@pytest.mark.gpu
def test_cuda_graph_replay_matches_eager(model):
    """Replays (sampler inside) equal eager steps bit for bit as rows leave, join and reset, over buckets 1, 2, 4,
    with greedy and sampling rows in one step."""
    eager_cache = _prefilled_cache(model, [5, 17, 1, 9])
    graph_cache = _copy(eager_cache)
    decoders = []
    for cache, capture in ((eager_cache, False), (graph_cache, True)):
        sampler = SlotSampler(4, DEVICE)
        for b in range(4):
            sampler.assign(b, SamplingParams(temperature=0.0 if b % 2 else 0.9, top_k=0 if b < 2 else 40), seed=b)
        decoder = DecodeGraph(model, cache, sampler, capture=capture)
        decoder.tokens[:4] = torch.tensor([3, 1, 4, 1])
        decoders.append(decoder)
    for step, slots in enumerate([[0, 1, 2, 3], [0, 2, 3], [2], [2, 3], [3, 0, 1], [1]]):
        if step == 3:
            eager_cache.reset(0)
            graph_cache.reset(0)
        expected, got = (d(slots) for d in decoders)
        assert torch.equal(got, expected), f"step {step}"
        assert torch.equal(graph_cache.lengths, eager_cache.lengths)
        assert torch.equal(decoders[1].tokens[:4], decoders[0].tokens[:4])
    assert len(decoders[1]._graphs) >= 3


@pytest.mark.gpu
def test_engine_tokens_with_and_without_cuda_graph(model):
    prompts = [[1, 2, 3], list(range(10, 30)), [7]]
    params = SamplingParams(max_new_tokens=24, temperature=0.8, top_k=50, seed=3)

    def run(cuda_graph):  # the graph with the lookahead (the default on a GPU) against neither
        engine = Engine(model, max_batch=4, max_len=64, cuda_graph=cuda_graph, lookahead=cuda_graph)
        reqs = [engine.submit(p, params) for p in prompts]
        engine.run()
        return [r.tokens for r in reqs]

    assert run(True) == run(False)
