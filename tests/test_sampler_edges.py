"""The sampler where one-line bugs hide: presence penalty with counts above 1 (seen through the logprobs, which
are the processed logits), the independence of one seed's successive draws and of neighbouring seeds, and
ties broken across blocks and splits at the GPU's launch shape (run here in Triton's interpreter)."""
import math

import pytest
import torch

from gpt_oss_triton.kernels.sample import _launch, launch_shape, sample_tokens
from gpt_oss_triton.model.runtime.sampling import SamplingParams, SlotSampler, _sample_tokens_torch, pack_bits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
V = 16


def _one(token: int) -> torch.Tensor:
    """Bits allowing only `token` (a constraint's mask), for one row."""
    allowed = torch.zeros(V, dtype=torch.bool)
    allowed[token] = True
    return pack_bits(allowed, 1)[None]


def test_presence_counts_once_and_frequency_every_time():
    """z = logits - frequency * count - presence * (count > 0), exempt ids not counted: after drawing id 3
    three times, id 5 once and the exempt id 9 twice, the logprobs of flat logits show exactly those shifts."""
    rows = torch.arange(2, device=DEVICE)
    sampler = SlotSampler(2, DEVICE, V, exempt={9})
    sampler.assign(0, SamplingParams(temperature=0.0, presence_penalty=0.7, frequency_penalty=0.3, logprobs=V), 0)
    sampler.assign(1, SamplingParams(temperature=0.0, presence_penalty=-1.5, logprobs=V), 0)
    for token in (3, 3, 5, 9, 3, 9):
        out = sampler(torch.zeros(2, V, device=DEVICE), rows, [0, 1], _one(token).expand(2, -1))
        assert out.tokens.tolist() == [token, token]
    out = sampler(torch.zeros(2, V, device=DEVICE), rows, [0, 1])
    expected = torch.zeros(2, V, dtype=torch.float64)
    expected[0, 3], expected[0, 5] = -(0.3 * 3 + 0.7), -(0.3 + 0.7)
    expected[1, 3] = expected[1, 5] = 1.5
    expected = expected.log_softmax(-1)
    for r in range(2):
        got = dict(out.logprobs(r, V).top)
        assert [got[i] for i in range(V)] == pytest.approx(expected[r].tolist(), abs=1e-5), f"row {r}"
    assert out.tokens.tolist() == [0, 3]  # greedy: the first of the unpenalised ids; the rewarded id


def _pair_tv(tokens: list[int], v: int) -> float:
    """TV distance of the successive pairs (t_d, t_{d+1}) from uniform over v * v."""
    counts = torch.zeros(v * v)
    for a, b in zip(tokens, tokens[1:]):
        counts[a * v + b] += 1
    return 0.5 * (counts / counts.sum() - 1 / v ** 2).abs().sum().item()


def _pair_bound(n: int, v: int) -> float:
    p = 1 / v ** 2  # 1.5x the TV of n exact draws, + 0.01 (as tests/kernels/test_sample.py)
    return 1.5 * 0.5 * v ** 2 * math.sqrt(2 * p * (1 - p) / (math.pi * n)) + 0.01


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_successive_draws_of_one_seed_are_independent(impl):
    """Flat logits: draw d's token says nothing about draw d + 1's (noise that shifted by one id per draw
    would make t_{d+1} = t_d - 1), nor does seed s's draw d + 1 repeat seed s + 1's draw d."""
    if impl == "torch" and DEVICE == "cuda":
        pytest.skip("the torch path serves the CPU")
    fn = sample_tokens if impl == "kernel" else _sample_tokens_torch
    n, v = 512, 8  # ~8 successive pairs in each of the v * v cells
    logits = torch.zeros(n, v, device=DEVICE)
    ones = torch.ones(n, device=DEVICE)
    draws = torch.arange(n, device=DEVICE)
    tokens = fn(logits, ones, torch.full((n,), 12345, device=DEVICE), draws).tolist()
    assert _pair_tv(tokens, v) < _pair_bound(n - 1, v)
    shifted = sum((b - a) % v == v - 1 for a, b in zip(tokens, tokens[1:])) / (n - 1)
    assert shifted < 2 / v
    seeds = torch.arange(n, device=DEVICE) + 7
    here = fn(logits, ones, seeds, draws + 1)
    beside = fn(logits, ones, seeds + 1, draws)
    assert (here == beside).float().mean().item() < 2 / v


def _gpu_launch(logits, temperature, seeds, draws):
    return _launch(logits, temperature, seeds, draws, *launch_shape(logits.shape[1], interpreted=False))


def test_the_gpu_launch_shape():
    assert launch_shape(3000, interpreted=False) == (1, 4096, 1024)
    assert launch_shape(201088, interpreted=False) == (1, 8192, 1024)
    assert launch_shape(7, interpreted=False) == (1, 8, 8)


@pytest.mark.parametrize("V, ties, variants", [(3000, [[10, 1500, 2999], [1023, 1024]], 3),  # across blocks
                                               (8200, [[100, 8199], [8191, 8192]], 1)])  # across splits of 8192
def test_greedy_ties_go_to_the_first_at_the_gpu_launch_shape(V, ties, variants):
    """Per row: a tie among `ties[r]`; with variants 3, then the last of them alone at the top, then all but
    the first with every id before them masked to -inf (as top-k or a constraint leaves them)."""
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(variants * len(ties), V, generator=g)
    expected = []
    for r, tie in enumerate(ties):
        logits[variants * r, tie] = 50.0
        expected.append(tie[0])
        if variants == 3:
            logits[3 * r + 1, tie[-1]] = 50.0
            logits[3 * r + 2, :tie[1]] = float("-inf")
            logits[3 * r + 2, tie[1:]] = 50.0
            expected += [tie[-1], tie[1]]
    zeros = torch.zeros(len(expected), dtype=torch.int64, device=DEVICE)
    tokens = _gpu_launch(logits.to(DEVICE), torch.zeros(len(expected), device=DEVICE), zeros, zeros)
    assert tokens.tolist() == expected


def test_the_gpu_launch_shape_draws_what_the_interpreters_does():
    """Same (seed, draw) noise per id whatever the shape: sampled rows draw the same tokens."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 3000, generator=g) * 0.1).to(DEVICE)  # flat-ish: the draw spreads over many ids
    t = torch.tensor([1.0, 0.5, 2.0, 1.0], device=DEVICE)
    seeds, draws = torch.tensor([3, 3, 8, 9], device=DEVICE), torch.tensor([0, 1, 5, 70000], device=DEVICE)
    expected = _launch(logits, t, seeds, draws, *launch_shape(logits.shape[1], interpreted=True))
    assert torch.equal(_gpu_launch(logits, t, seeds, draws), expected)
    assert len(set(expected.tolist())) == 4


@pytest.mark.parametrize("interpreted", [True, False])
def test_a_row_reads_only_its_own_logits(interpreted):
    """Past a row's V logits lie the next row's (or a wider buffer's padding): a huge value there is never
    drawn, greedy or sampled, at either launch shape."""
    g = torch.Generator().manual_seed(2)
    padded = torch.randn(4, 301, generator=g)
    padded[:, 300] = 1e4  # beyond each row of the strided view
    padded[1:, 0] = 1e4  # the first logit of rows 1..3: just past rows 0..2 of the contiguous one
    t = torch.tensor([0.0, 1.0, 0.0, 1.0], device=DEVICE)
    seeds = draws = torch.arange(4, device=DEVICE)
    for logits in (padded[:, :300].to(DEVICE), padded[:, :300].contiguous().to(DEVICE)):
        tokens = _launch(logits, t, seeds, draws, *launch_shape(300, interpreted))
        assert (tokens < 300).all() and tokens[0] == logits[0].argmax() and tokens[2] == logits[2].argmax()
