"""Decode attention (flash-decoding) against attention_ref: GQA, splits (merged by the last split to finish),
windows, ring buffers, sinks, rows mapped to cache slots."""
import pytest
import torch
import triton
from helpers import assert_close

from gpt_oss_triton.kernels.arrival import counters
from gpt_oss_triton.kernels.decode_attention import decode_attention, decode_attention_ref
from gpt_oss_triton.kernels.reference import attention_ref

D = 64
SM_SCALE = 0.125


def _case(positions, hq, hkv, cache_len, device, fill=0.0, sinks=None, seed=0):
    """Keys for positions 0..p per sequence, stored at slot p % cache_len (older ones overwritten)."""
    g = torch.Generator().manual_seed(seed)
    B = len(positions)
    k_all = [torch.randn(p + 1, hkv, D, generator=g).to(torch.bfloat16) for p in positions]
    v_all = [torch.randn(p + 1, hkv, D, generator=g).to(torch.bfloat16) for p in positions]
    q = torch.randn(B, hq, D, generator=g).to(torch.bfloat16)
    kc = torch.full((B, cache_len, hkv, D), fill, dtype=torch.bfloat16)
    vc = torch.full((B, cache_len, hkv, D), fill, dtype=torch.bfloat16)
    for b, p in enumerate(positions):
        for s in range(max(0, p + 1 - cache_len), p + 1):
            kc[b, s % cache_len], vc[b, s % cache_len] = k_all[b][s], v_all[b][s]
    if sinks is None:
        sinks = torch.randn(hq, generator=g) * 2
    args = dict(q=q.to(device), k_cache=kc.to(device), v_cache=vc.to(device), sinks=sinks.to(device),
                positions=torch.tensor(positions, dtype=torch.int32, device=device))
    return args, k_all, v_all


def _check(out, args, k_all, v_all, window):
    for b, p in enumerate(args["positions"].tolist()):
        ref = attention_ref(args["q"][b, None, None].cpu(), k_all[b][None], v_all[b][None], args["sinks"].cpu(),
                            sm_scale=SM_SCALE, sliding_window=window, q_start=p)[0, 0]
        assert_close(out[b], ref, name=f"sequence {b} at position {p}")


# Positions: the first token, below / at / past window 16, long enough for several splits.
@pytest.mark.parametrize("hq,hkv", [(8, 1), (4, 2)])
@pytest.mark.parametrize("window,num_splits", [(0, 0), (0, 3), (16, 2)])
def test_decode_attention(hq, hkv, window, num_splits, device):
    positions = [0, 14, 15, 16, 70]
    args, k_all, v_all = _case(positions, hq, hkv, 80, device)
    out = decode_attention(**args, sm_scale=SM_SCALE, sliding_window=window, num_splits=num_splits)
    _check(out, args, k_all, v_all, window)


@pytest.mark.parametrize("window", [8, 16])
def test_decode_attention_ring_buffer_wrapped(window, device):
    """Ring buffers of exactly the window, written far past their wrap (position 100 sits in slot 100 % W)."""
    args, k_all, v_all = _case([5, window - 1, window, 100], 8, 1, window, device)
    out = decode_attention(**args, sm_scale=SM_SCALE, sliding_window=window)
    _check(out, args, k_all, v_all, window)


def test_decode_attention_reads_only_visible_keys(device):
    """nan in every slot a query must not read: after its position, and (sliding) before its window."""
    args, k_all, v_all = _case([3, 40], 8, 1, 64, device, fill=float("nan"))
    for name in ("k_cache", "v_cache"):
        args[name][1, :40 - 8 + 1] = float("nan")
    out = decode_attention(**args, sm_scale=SM_SCALE, sliding_window=8, num_splits=2)
    _check(out, args, k_all, v_all, 8)


def test_decode_attention_extreme_sinks(device):
    sinks = torch.tensor([20.0, -1e4, 0.0, 5.0, -1e4, 20.0, -3.0, 1.0])
    args, k_all, v_all = _case([0, 33], 8, 1, 40, device, sinks=sinks)
    args["q"] = args["q"] * 4
    out = decode_attention(**args, sm_scale=SM_SCALE, num_splits=2)
    _check(out, args, k_all, v_all, 0)


@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_attention_rows_read_their_slots(num_splits, device):
    """Rows continue cache rows in any order (a compacted decode bucket); a padding row copies a real row's slot.
    The split counters are left at zero for the next launch."""
    positions = [40, 3, 25, 9]
    args, *_ = _case(positions, 8, 2, 48, device)
    slots = torch.tensor([2, 0, 3, 2], dtype=torch.int32, device=device)
    q = args["q"][[0, 1, 2, 0]]
    out = decode_attention(q, args["k_cache"], args["v_cache"], args["sinks"], args["positions"], SM_SCALE,
                           num_splits=num_splits, slots=slots)
    assert not counters(q.device, 8).any()
    expected = decode_attention_ref(q, args["k_cache"], args["v_cache"], args["sinks"], args["positions"], SM_SCALE,
                                    slots=slots)
    assert_close(out, expected)
    assert torch.equal(out[3], out[0]), "a padding row computes exactly what the row it copies does"


def test_decode_attention_split_merge_in_fp32(device):
    """Output in fp32 q (fp32 caches): the split merge and the sink are checked where bf16 would hide a 0.1% error."""
    args, k_all, v_all = _case([70, 200], 8, 1, 256, device)
    args = {k: v.float() if v.is_floating_point() else v for k, v in args.items()}
    for splits in (1, 4, 7):
        out = decode_attention(**args, sm_scale=SM_SCALE, num_splits=splits)
        _check(out, args, [k.float() for k in k_all], [v.float() for v in v_all], 0)


def test_decode_attention_rejects_bad_inputs(device):
    args, *_ = _case([3], 8, 1, 8, device)
    with pytest.raises(ValueError, match=r"positions must be int32 \[B\] \(B >= 1\)"):
        decode_attention(**{**args, "positions": args["positions"].long()}, sm_scale=SM_SCALE)
    with pytest.raises(ValueError, match="cache length 8 must be >= the sliding window 16"):
        decode_attention(**args, sm_scale=SM_SCALE, sliding_window=16)
    with pytest.raises(ValueError, match=r"k_cache must be \[>=1, L, 1, 64\]"):
        decode_attention(**{**args, "k_cache": args["k_cache"][..., :32]}, sm_scale=SM_SCALE)


@pytest.mark.parametrize("window,cache_len,lengths", [(0, 40, [1, 9, 10, 16, 17, 35]), (32, 32, [31, 33, 52])])
def test_decode_attention_many_short_splits(window, cache_len, lengths, device):
    """Splits of fewer keys than a key block (as at batch 1 on an H100, 17 of a 128-key window), some of them
    empty, on lengths either side of the key block, the split count and the window, with a merge of more than
    one chunk of splits; fp32, so a 0.1% error in the merge shows."""
    args, k_all, v_all = _case([n - 1 for n in lengths], 8, 1, cache_len, device, seed=3)
    args = {k: v.float() if v.is_floating_point() else v for k, v in args.items()}
    out = decode_attention(**args, sm_scale=SM_SCALE, sliding_window=window, num_splits=9)
    _check(out, args, [k.float() for k in k_all], [v.float() for v in v_all], window)


@pytest.mark.parametrize("window,cache_len", [(0, 1026), (0, 131072), (128, 128)])
def test_decode_attention_fills_the_sms_at_batch_1(window, cache_len):
    """gpt-oss's decode attention at batch 1 (8 KV heads, 64 query heads) on an H100's 132 SMs: every SM gets a
    program, sliding layers included, and no config's key block is longer than a split needs."""
    from gpt_oss_triton.kernels import launch_plan
    from gpt_oss_triton.kernels.decode_attention import _decode_attention_kernel
    meta = dict(device="meta")
    q = torch.empty(1, 64, D, dtype=torch.bfloat16, **meta)
    cache = torch.empty(1, cache_len, 8, D, dtype=torch.bfloat16, **meta)
    with launch_plan.record(sms=132) as launches:
        decode_attention(q, cache, cache, torch.empty(64, **meta), torch.empty(1, dtype=torch.int32, **meta),
                         SM_SCALE, window)
    (launch,) = [l for l in launches if getattr(l, "kernel", None) is not None]
    assert launch.name == _decode_attention_kernel.fn.__name__
    visible = window or cache_len
    for constexprs, _, grid in launch.candidates():
        assert grid[0] * grid[1] * grid[2] >= 132
        assert constexprs["BLOCK_N"] <= max(16, triton.next_power_of_2(triton.cdiv(visible, grid[0])))
