"""sample_tokens (Gumbel-max with counter-based noise) against the distribution it must draw from
(kernels.reference.sample_tokens_ref), and the properties the engine relies on: greedy is torch.argmax,
a (seed, draw) pair always gives the same token whatever else is in the batch, and top-k / top-p filtering
(model/runtime/sampling.py) leaves exactly the reference's support."""
import pytest
import torch

from gpt_oss_triton.kernels.reference import sample_tokens_ref
from gpt_oss_triton.kernels.sample import _launch, sample_tokens
from gpt_oss_triton.model.runtime.sampling import _sample_tokens_torch, draw_tokens, filter_logits

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N = 4000  # draws per distribution: the total variation distance of the empirical counts is ~0.02 at this N


def _draws(fn, logits, temperature, seed=3, **kw):
    """N draws of one row: N rows with the same logits, draws 0..N-1 of one seed."""
    rows = logits.to(DEVICE).expand(N, -1)
    full = lambda v, dt: torch.full((N,), v, dtype=dt, device=DEVICE)  # noqa: E731
    return fn(rows, full(temperature, torch.float32), full(seed, torch.int64),
              torch.arange(N, device=DEVICE), **kw)


def _tv(tokens, probs):
    """Total variation distance between the draws' frequencies and probs."""
    counts = torch.bincount(tokens.cpu(), minlength=probs.numel()).float() / tokens.numel()
    return 0.5 * (counts - probs).abs().sum().item()


def _tv_bound(probs, n=N):
    """1.5x the TV expected from n exact draws (E|count_i - n p_i| ~ sqrt(2 n p_i (1 - p_i) / pi)), + 0.01."""
    return 1.5 * 0.5 * (2 * probs * (1 - probs) / (3.1416 * n)).sqrt().sum().item() + 0.01


@pytest.mark.parametrize("V", [7, 300, 1500])  # 1500: several blocks per row in the kernel
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_draws_follow_the_tempered_softmax(V, temperature, impl):
    if impl == "torch" and DEVICE == "cuda":
        pytest.skip("the torch path serves the CPU")
    logits = torch.randn(V, generator=torch.Generator().manual_seed(V)) * 4  # peaked: few likely tokens
    probs = sample_tokens_ref(logits, temperature)
    fn = sample_tokens if impl == "kernel" else _sample_tokens_torch
    tokens = _draws(fn, logits[None], temperature)
    assert _tv(tokens, probs) < _tv_bound(probs)
    assert _tv(tokens, sample_tokens_ref(logits, temperature * 2)) > _tv_bound(probs)  # the test can tell


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_is_argmax_with_ties_to_the_first(dtype):
    logits = torch.randn(5, 3000, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[1, [10, 2000]] = 50.0  # a tie across the kernel's blocks
    logits[2, [700, 701]] = 50.0  # a tie inside one block
    logits = logits.to(DEVICE)
    zeros = torch.zeros(5, dtype=torch.int64, device=DEVICE)
    tokens = sample_tokens(logits, torch.zeros(5, device=DEVICE), zeros, zeros)
    assert torch.equal(tokens, logits.float().argmax(-1)) and tokens[1] == 10 and tokens[2] == 700


@pytest.mark.parametrize("rows, split, block", [(1, 256, 64), (4, 512, 512), (64, 2048, 2048)])
def test_every_launch_shape_draws_the_same_tokens(rows, split, block):
    """The GPU's shape (a row per program, split over programs) and the interpreter's (rows per program, whole
    rows) draw the same tokens: the noise is a function of (seed, draw, v) only."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 1500, generator=g).to(DEVICE)
    logits[0, [3, 1400]] = 99.0  # a greedy tie across splits
    t = torch.tensor([0.0] + [1.0] * 8, device=DEVICE)
    seeds, draws = torch.arange(9, device=DEVICE) * 7, torch.arange(9, device=DEVICE)
    expected = _launch(logits, t, seeds, draws, 1, 2048, 2048)
    assert torch.equal(_launch(logits, t, seeds, draws, rows, split, block), expected) and expected[0] == 3


def test_a_seed_and_draw_give_the_same_token_in_any_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 500, generator=g).to(DEVICE)
    t = torch.full((6,), 1.0, device=DEVICE)
    seeds = torch.tensor([5, 5, 6, 7, 5, 9], device=DEVICE)
    draws = torch.tensor([0, 1, 0, 3, 0, 2], device=DEVICE)
    batch = sample_tokens(logits, t, seeds, draws)
    alone = torch.cat([sample_tokens(logits[i:i + 1], t[:1], seeds[i:i + 1], draws[i:i + 1]) for i in range(6)])
    assert torch.equal(batch, alone)
    assert batch[0] == sample_tokens(logits[4:5], t[:1], seeds[:1], draws[:1])  # same row, seed and draw
    many = _draws(sample_tokens, logits[:1], 1.0)
    assert len(set(many.tolist())) > 20  # distinct draws of one seed are not the same noise


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (3, 1.0), (0, 0.5), (0, 0.9), (5, 0.8), (2000, 0.95)])
def test_top_k_top_p_support_and_distribution(top_k, top_p):
    logits = torch.randn(300, generator=torch.Generator().manual_seed(top_k)) * 2
    probs = sample_tokens_ref(logits, 0.7, top_k, top_p)
    tokens = _draws(draw_tokens, logits[None], 0.7, top_k=torch.full((N,), top_k, device=DEVICE),
                    top_p=torch.full((N,), top_p, device=DEVICE))
    assert set(tokens.tolist()) <= set(probs.nonzero().flatten().tolist())
    assert _tv(tokens, probs) < _tv_bound(probs)
    kept = filter_logits(logits[None] / 0.7, torch.tensor([top_k]), torch.tensor([top_p]))[0].isfinite()
    assert torch.equal(kept, probs > 0)  # the filter keeps exactly the reference's support


def test_filter_off_keeps_everything_and_rows_are_independent():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    out = filter_logits(logits, torch.tensor([0, 2, 0]), torch.tensor([1.0, 1.0, 0.3]))
    assert torch.allclose(out[0], logits[0]) and out[1].isfinite().sum() == 2
    assert torch.equal(out[2].isfinite(), sample_tokens_ref(logits[2], 1.0, 0, 0.3) > 0)


@pytest.mark.parametrize("top_p, kept", [(0.25, 1), (0.5, 2), (0.75, 3), (0.76, 4)])
def test_top_p_at_exact_equality(top_p, kept):
    """Guards top-p's boundary: a token is kept only while the mass before it is below top_p (the smallest
    set whose mass reaches top_p survives). Four equal logits give probabilities of exactly 0.25, so the mass
    before each token is exactly 0, .25, .5, .75: top_p .5 keeps two tokens, where '>' in place of '>='
    would keep three. Checked in filter_logits and in the reference distribution."""
    logits = torch.zeros(1, 4)
    assert filter_logits(logits, torch.tensor([0]), torch.tensor([top_p]))[0].isfinite().sum() == kept
    assert (sample_tokens_ref(logits[0], 1.0, 0, top_p) > 0).sum() == kept


def test_bad_inputs_name_the_argument():
    logits = torch.zeros(2, 8, device=DEVICE)
    z = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="temperature must be"):
        sample_tokens(logits, torch.zeros(3, device=DEVICE), z, z)
    with pytest.raises(ValueError, match="seeds must be"):
        sample_tokens(logits, torch.zeros(2, device=DEVICE), z.int(), z)
    with pytest.raises(ValueError, match="logits must be"):
        sample_tokens(logits[:, ::2], torch.zeros(2, device=DEVICE), z, z)
    assert sample_tokens(logits[:0], torch.zeros(0, device=DEVICE), z[:0], z[:0]).shape == (0,)
