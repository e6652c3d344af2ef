"""The decode step the engine captures: traced by torch.compile with no graph break, replayed from a CUDA graph
bit for bit like eager, and the engine's static buffers kept right as rows join and leave."""
import pytest
import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.runtime.decode_graph import DecodeGraph
from gpt_oss_triton.model.runtime.engine import Engine
from gpt_oss_triton.model.runtime.sampling import SamplingParams
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


def test_capture_needs_a_cuda_cache(model):
    if DEVICE == "cuda":
        pytest.skip("a CUDA cache can be captured")
    with pytest.raises(ValueError, match="CUDA-graph capture needs a CUDA cache"):
        DecodeGraph(model, model.new_cache(1, 8), capture=True)


def test_rows_join_and_leave_the_decode_buffers(model):
    """Rows leave and join between decode steps, so the graph's active rows change and its token buffer must
    follow (a joining row's first token comes from a mixed prefill step), and the lookahead step launched
    before a request ends must drop its token. Same tokens as the engine's packed decode path (no DecodeGraph,
    no lookahead), which runs the same kernels."""
    greedy = [SamplingParams(max_new_tokens=n, temperature=0.0) for n in (2, 5, 2)]

    def run(use_graph):
        engine = Engine(model, max_batch=2, max_len=24, lookahead=use_graph)
        if not use_graph:
            engine.decoder = None
        reqs = [engine.submit([1, 2, 3], greedy[0]), engine.submit(list(range(10, 20)), greedy[1])]
        for _ in range(3):  # prefill both; decode both (the first ends); decode the second alone
            engine.step()
        reqs.append(engine.submit([7, 8], greedy[2]))  # joins the freed slot: prefills beside a decode
        engine.run()
        return [r.tokens for r in reqs], engine.steps

    (with_graph, steps), (without, _) = run(True), run(False)
    assert with_graph == without and [len(t) for t in with_graph] == [2, 5, 2]
    assert steps == 5


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
    """Replays equal eager decode steps bit for bit, through a row reset and an inactive row."""
    eager_cache = _prefilled_cache(model, [5, 17, 1])
    graph_cache = _copy(eager_cache)
    decoder = DecodeGraph(model, graph_cache)
    assert decoder.capture
    g = torch.Generator().manual_seed(2)
    for step in range(6):
        tokens = torch.randint(0, 512, (3,), generator=g).to(DEVICE)
        active = torch.tensor([1, int(step % 2 == 0), 1], dtype=torch.int32, device=DEVICE)
        if step == 3:
            eager_cache.reset(2)
            graph_cache.reset(2)
        decoder.tokens.copy_(tokens)
        decoder.active.copy_(active)
        expected = model.decode_step(tokens, active, eager_cache)
        got = decoder()
        rows = active.bool()
        assert torch.equal(got[rows], expected[rows]), f"step {step}"
        assert torch.equal(graph_cache.lengths, eager_cache.lengths)
    assert decoder.graph is not None


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
