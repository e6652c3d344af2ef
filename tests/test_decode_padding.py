"""Padding rows of the decode graph's buckets leave no trace: over steps whose rows change bucket (3 rows in the
bucket of 4, 1 in the bucket of 1, ...), every real row's cache length and draw counter advance by exactly one
a step, its token is the draw of its own (seed, draw counter), and the padding's token goes to the spare entry.
A stand-in model (decode_step only) makes the logits a fixed function of (slot, position, token); capture off,
so the graph's step runs eagerly, with the sampler inside, as it would be recorded."""
import torch

from gpt_oss_triton.model.runtime.decode_graph import DecodeGraph
from gpt_oss_triton.model.runtime.sampling import SamplingParams, SlotSampler, draw_tokens

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
V, SLOTS = 48, 5


def _logits(slot: int, position: int, token: int) -> torch.Tensor:
    return torch.randn(V, generator=torch.Generator().manual_seed(slot * 100_003 + position * 1009 + token))


class StepModel:
    def decode_step(self, tokens, active, cache, slots):
        rows = list(zip(slots.tolist(), cache.lengths[slots.long()].tolist(), tokens.tolist()))
        cache.lengths.index_add_(0, slots.long(), active.to(cache.lengths.dtype))
        return torch.stack([_logits(*row) for row in rows]).to(tokens.device)


class Lengths:
    def __init__(self, n: int):
        self.batch_size, self.lengths = n, torch.zeros(n, dtype=torch.int32, device=DEVICE)


def test_padding_rows_do_not_advance_the_rows_they_copy():
    cache, sampler = Lengths(SLOTS), SlotSampler(SLOTS, DEVICE, V)
    temperatures = [1.0, 0.0, 0.8, 1.0, 1.3]
    for b, t in enumerate(temperatures):
        sampler.assign(b, SamplingParams(temperature=t, top_k=8 if b == 3 else 0), seed=10 + b)
    graph = DecodeGraph(StepModel(), cache, sampler, capture=False)
    graph.tokens[:SLOTS] = torch.tensor([3, 1, 4, 1, 5])
    spare = graph.tokens[SLOTS].item()
    steps = [[0, 2, 1], [2], [1, 0, 3], [4, 0], [3, 0, 2, 4, 1], [0, 2, 4]]  # buckets 4, 1, 4, 2, 5, 4
    counts = [0] * SLOTS
    for slots in steps:
        before = graph.tokens[:SLOTS].tolist()
        expected = []
        for b in slots:
            logits = _logits(b, counts[b], before[b])[None].to(DEVICE)
            if b == 3:  # top-k 8: what the filtered draw keeps
                logits = logits.masked_fill(logits < logits.topk(8).values[:, -1:], float("-inf"))
            t = torch.tensor([temperatures[b]], device=DEVICE)
            seed, draw = torch.tensor([10 + b], device=DEVICE), torch.tensor([counts[b]], device=DEVICE)
            expected.append(draw_tokens(logits, t, seed, draw).item())
        got = graph(slots).tolist()
        assert got == expected, slots
        for b in slots:
            counts[b] += 1
        assert cache.lengths.tolist() == counts, slots
        assert sampler.draws.tolist() == counts, slots
        assert [graph.tokens[b].item() for b in slots] == expected
        assert all(graph.tokens[b].item() == before[b] for b in range(SLOTS) if b not in slots)
        if len(slots) < graph.bucket(len(slots)):
            spare = expected[0]  # the padding copies the first row: same draw, written to the spare entry
        assert graph.tokens[SLOTS].item() == spare
