"""Prefill attention kernel against attention_ref: GQA, windows, sinks, variable lengths, cached prefixes."""
import pytest
import torch
from helpers import assert_close

from gpt_oss_triton.kernels.attention import attention
from gpt_oss_triton.kernels.reference import attention_ref

D = 64
SM_SCALE = 0.125


def _case(lens, starts, hq, hkv, device, cache_len=None, poison=False, sinks=None, seed=0):
    """Random keys for positions 0..start+len-1 per sequence, packed new tokens, and (if starts) a cache."""
    g = torch.Generator().manual_seed(seed)
    B, total = len(lens), [s + n for s, n in zip(starts, lens)]
    k_all = [torch.randn(t, hkv, D, generator=g).to(torch.bfloat16) for t in total]
    v_all = [torch.randn(t, hkv, D, generator=g).to(torch.bfloat16) for t in total]
    qs = [torch.randn(n, hq, D, generator=g).to(torch.bfloat16) for n in lens]
    if sinks is None:
        sinks = torch.randn(hq, generator=g) * 2
    pack = lambda xs: torch.cat(xs).to(device)
    args = dict(q=pack(qs), k=pack([k[s:] for k, s in zip(k_all, starts)]),
                v=pack([v[s:] for v, s in zip(v_all, starts)]), sinks=sinks.to(device),
                cu_seqlens=torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device),
                max_seqlen=max(lens))
    if any(starts):
        L = cache_len or max(starts)
        fill = float("nan") if poison else 0.0
        kc = torch.full((B, L, hkv, D), fill, dtype=torch.bfloat16)
        vc = torch.full((B, L, hkv, D), fill, dtype=torch.bfloat16)
        for b, s in enumerate(starts):
            for p in range(max(0, s - L), s):
                kc[b, p % L], vc[b, p % L] = k_all[b][p], v_all[b][p]
        args.update(k_cache=kc.to(device), v_cache=vc.to(device),
                    cache_seqlens=torch.tensor(starts, dtype=torch.int32, device=device))
    return args, qs, k_all, v_all


def _check(out, args, qs, k_all, v_all, starts, window):
    cu = args["cu_seqlens"].tolist()
    for b, (q, k, v, s) in enumerate(zip(qs, k_all, v_all, starts)):
        ref = attention_ref(q[None], k[None], v[None], args["sinks"].cpu(), sm_scale=SM_SCALE,
                            sliding_window=window, q_start=s)[0]
        assert_close(out[cu[b]:cu[b + 1]], ref, name=f"sequence {b} (start {s}, len {len(q)})")


# Lengths below, at and just past window 16, and one not a multiple of any block; packed in one batch.
@pytest.mark.parametrize("hq,hkv", [(8, 1), (4, 2)])
@pytest.mark.parametrize("window", [0, 8, 16])
def test_attention_varlen(hq, hkv, window, device):
    lens = [7, 16, 17, 37]
    args, qs, k_all, v_all = _case(lens, [0] * 4, hq, hkv, device)
    out = attention(**args, sm_scale=SM_SCALE, sliding_window=window)
    _check(out, args, qs, k_all, v_all, [0] * 4, window)


def test_attention_last_tile_of_two_tokens(device):
    """Issue 13's report, in the default tiles: window 16, GQA group 8 and lengths 18, 26, 42, whose last
    query tile holds exactly 2 tokens (tiles of 8 in the interpreter). Guards the banded loops against an
    unmasked key block reaching one key past the window (test_attention_sweeps.py sweeps the whole class)."""
    lens = [18, 26, 42]
    args, qs, k_all, v_all = _case(lens, [0] * 3, 8, 1, device)
    out = attention(**args, sm_scale=SM_SCALE, sliding_window=16)
    _check(out, args, qs, k_all, v_all, [0] * 3, 16)


def test_attention_extreme_sinks(device):
    sinks = torch.tensor([20.0, -1e4, 0.0, 5.0, -1e4, 20.0, -3.0, 1.0])
    args, qs, k_all, v_all = _case([29], [0], 8, 1, device, sinks=sinks)
    args["q"] = args["q"] * 4  # scores of the order of the sinks
    qs = [qs[0] * 4]
    out = attention(**args, sm_scale=SM_SCALE, sliding_window=8)
    _check(out, args, qs, k_all, v_all, [0], 8)


# Cached prefixes: a full-length cache whose slots outside every window hold nan (a kernel that visits a
# key block outside the band turns the output into nan), and ring buffers of exactly the window.
@pytest.mark.parametrize("window,cache_len,poison", [(0, None, False), (8, None, True), (16, 16, False),
                                                     (8, 8, False)])
def test_attention_chunked_prefill(window, cache_len, poison, device):
    lens, starts = [20, 7, 5], [30, 3, 17]
    args, qs, k_all, v_all = _case(lens, starts, 8, 1, device, cache_len=cache_len, poison=poison)
    if poison:  # positions no query of the chunk can see
        for b, s in enumerate(starts):
            args["k_cache"][b, :max(0, s - window + 1)] = float("nan")
            args["v_cache"][b, :max(0, s - window + 1)] = float("nan")
    out = attention(**args, sm_scale=SM_SCALE, sliding_window=window)
    _check(out, args, qs, k_all, v_all, starts, window)


def test_attention_empty_sequence_in_batch(device):
    args, qs, k_all, v_all = _case([5, 0, 9], [0, 0, 0], 4, 2, device)
    out = attention(**args, sm_scale=SM_SCALE, sliding_window=0)
    _check(out, args, qs, k_all, v_all, [0, 0, 0], 0)


def test_attention_rejects_bad_inputs(device):
    args, *_ = _case([4], [0], 8, 1, device)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        attention(**{**args, "k": torch.zeros(4, 3, D, dtype=torch.bfloat16, device=device),
                     "v": torch.zeros(4, 3, D, dtype=torch.bfloat16, device=device)}, sm_scale=SM_SCALE)
    with pytest.raises(ValueError, match="cu_seqlens must be int32"):
        attention(**{**args, "cu_seqlens": args["cu_seqlens"].long()}, sm_scale=SM_SCALE)
    with pytest.raises(ValueError, match=r"sinks must be a float \[Hq\] = \[8\]"):
        attention(**{**args, "sinks": torch.zeros(4, device=device)}, sm_scale=SM_SCALE)
    kc = torch.zeros(1, 4, 1, D, dtype=torch.bfloat16, device=device)
    with pytest.raises(ValueError, match="cache length 4 must be >= the sliding window 8"):
        attention(**args, sm_scale=SM_SCALE, sliding_window=8, k_cache=kc, v_cache=kc,
                  cache_seqlens=torch.zeros(1, dtype=torch.int32, device=device))
