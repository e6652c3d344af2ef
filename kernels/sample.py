"""The next token of every row in one launch: Gumbel-max over the tempered logits with counter-based noise.

    token_r = argmax_v  logits[r, v] / T_r + G_r(v),    G_r(v) = -log(-log U),  U = philox(seed_r, draw_r * V + v)

Adding Gumbel noise and taking the argmax draws v with probability softmax(logits[r] / T_r)_v; T_r = 0 is
greedy (no noise: the first maximal logit, as torch.argmax). The noise depends only on the row's seed, its draw
counter and v, so a request's tokens do not depend on the rows it shares a batch with, and nothing is drawn
from a global generator. Logits that top-k / top-p dropped arrive as -inf (`filter_logits` in
model/runtime/sampling.py). On the GPU each row is split along V over programs (SPLIT logits each, so batch 1
still fills the GPU); a torch argmax over the splits' maxima finishes. The reference is the distribution itself:
`kernels.reference.sampling_probs_ref`, which the tests compare the kernel's draws against.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from ._interpreter import interpreting, wrap_triton


@triton.jit
def _sample_kernel(LOGITS, TEMPERATURE, SEED, DRAW, BEST_VAL, BEST_IDX, R, V, stride_r, n_splits,
                   ROWS: tl.constexpr, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    s = tl.program_id(1)
    row_ok = rows < R
    t = tl.load(TEMPERATURE + rows, mask=row_ok, other=0.0)[:, None]
    seed = tl.load(SEED + rows, mask=row_ok, other=0)[:, None]
    base = tl.load(DRAW + rows, mask=row_ok, other=0)[:, None] * V  # int64: draw * V passes 2^32 in a generation
    inv_t = 1.0 / tl.where(t > 0, t, 1.0)
    best = tl.full((ROWS,), float("-inf"), tl.float32)
    best_i = tl.full((ROWS,), 0, tl.int64) + s * SPLIT
    for start in range(s * SPLIT, s * SPLIT + SPLIT, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (offs < V)[None, :]
        x = tl.load(LOGITS + rows.to(tl.int64)[:, None] * stride_r + offs[None, :], mask=mask,
                    other=float("-inf")).to(tl.float32)
        u = tl.rand(seed, base + offs[None, :])
        score = tl.where(t > 0, x * inv_t - tl.log(-tl.log(u)), x)
        score = tl.where(mask, score, float("-inf"))
        m = tl.max(score, axis=1)
        i = tl.argmax(score, axis=1, tie_break_left=True)
        take = m > best  # strict: an earlier block keeps a tie, as torch.argmax does
        best_i = tl.where(take, start + i, best_i)
        best = tl.where(take, m, best)
    tl.store(BEST_VAL + rows * n_splits + s, best, mask=row_ok)
    tl.store(BEST_IDX + rows * n_splits + s, best_i, mask=row_ok)


def _check(logits, temperature, seeds, draws):
    if logits.dim() != 2 or not logits.is_floating_point() or logits.stride(-1) != 1:
        raise ValueError(f"sample_tokens: logits must be [rows, vocab] floating point with contiguous rows, got "
                         f"{list(logits.shape)} {logits.dtype} strides {logits.stride()}")
    R = logits.shape[0]
    for name, x, dtype in (("temperature", temperature, torch.float32), ("seeds", seeds, torch.int64),
                           ("draws", draws, torch.int64)):
        if tuple(x.shape) != (R,) or x.dtype != dtype or x.device != logits.device:
            raise ValueError(f"sample_tokens: {name} must be [{R}] {dtype} on {logits.device}, got "
                             f"{list(x.shape)} {x.dtype} on {x.device}")


@triton_op("gpt_oss_triton::sample_tokens", mutates_args=())
def sample_tokens(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor,
                  draws: torch.Tensor) -> torch.Tensor:
    """logits [R, V]; temperature [R] fp32 (0: greedy); seeds, draws [R] int64 -> tokens [R] int64."""
    _check(logits, temperature, seeds, draws)
    R, V = logits.shape
    if R == 0 or V == 0:
        return torch.zeros(R, dtype=torch.int64, device=logits.device)
    return _launch(logits, temperature, seeds, draws, *launch_shape(V, interpreting()))


def launch_shape(V: int, interpreted: bool) -> tuple[int, int, int]:
    """(rows per program, split, block) for rows of V logits: on the GPU a row per program, split over programs;
    the interpreter pays per program and vectorises within one, so there many whole rows per program."""
    if interpreted:
        rows, split = 64, triton.next_power_of_2(V)
        return rows, split, min(split, max(1, (1 << 17) // rows))
    return 1, min(8192, triton.next_power_of_2(V)), min(1024, triton.next_power_of_2(V))


def _launch(logits, temperature, seeds, draws, rows: int, split: int, block: int) -> torch.Tensor:
    """ROWS rows per program, each row's V logits over programs of `split` (a multiple of `block`)."""
    R, V = logits.shape
    n_splits = triton.cdiv(V, split)
    best_val = torch.empty(R, n_splits, dtype=torch.float32, device=logits.device)
    best_idx = torch.empty(R, n_splits, dtype=torch.int64, device=logits.device)
    wrap_triton(_sample_kernel)[(triton.cdiv(R, rows), n_splits)](
        logits, temperature, seeds, draws, best_val, best_idx, R, V, logits.stride(0), n_splits,
        ROWS=rows, SPLIT=split, BLOCK=block, num_warps=4)
    return best_idx.gather(1, best_val.argmax(dim=1, keepdim=True)).squeeze(1)
