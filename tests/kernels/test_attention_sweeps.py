"""Length sweeps of the three attention paths (prefill, chunked prefill, decode) against attention_ref.

A tile's loop bounds depend on how many query tokens it holds (the length's residue mod the query tile),
on where the window's lower edge falls (at key 0 or past it, in the cache or among the new keys) and on
where that edge and the tile fall in the key-block grid. Each sweep runs one autotune config (`one_config`)
so its lengths are chosen against known tile sizes: small ones in the interpreter, where a sweep through
every residue then costs a few dozen programs, and every production config on a GPU. Windows: 0, two key
blocks (the real 128 is a multiple of every block) and one key less.
GQA groups 1, 8 and 24 (padded to 32, rows of a tile left empty).
"""
import pytest
import torch
import triton
from helpers import assert_close

from gpt_oss_triton.kernels import attention as prefill_module
from gpt_oss_triton.kernels import decode_attention as decode_module
from gpt_oss_triton.kernels._interpreter import interpreting
from gpt_oss_triton.kernels.attention import attention
from gpt_oss_triton.kernels.decode_attention import decode_attention
from gpt_oss_triton.kernels.reference import attention_ref

SM_SCALE = 0.25
GROUPS = [1, 8, 24]  # Hq / Hkv, one KV head (the grid's KV-head axis does not meet the lengths)
# fp32 (ieee dots on a GPU too): one key too many or too few is far outside fp32's 1e-4, even among the 128 of
# a real window, where bf16's 2e-2 could hide it. The loop bounds do not depend on the dtype.
DTYPE = torch.float32
D = 16 if interpreting() else 64

# Interpreter tiles per GQA group: query tiles (BLOCK_M // GP) of 4, 4 and 2 tokens against key blocks of 2,
# 4 and 4: longer than the key block (as group 1 has them on a GPU), as long, and shorter (as group 8 has).
PREFILL_SMALL = {1: {"BLOCK_M": 4, "BLOCK_N": 2}, 8: {"BLOCK_M": 32, "BLOCK_N": 4}, 24: {"BLOCK_M": 64, "BLOCK_N": 4}}
DECODE_SMALL = {"BLOCK_N": 4}


def one_config(monkeypatch, kernel, config: triton.Config) -> None:
    """Run the autotuned `kernel` with `config` only (the autotuner uses a lone config as is)."""
    monkeypatch.setattr(kernel, "configs", [config])


def _configs(kernel, small: dict) -> list:
    """The tile configs a sweep runs: `small` in the interpreter, each production config on a GPU."""
    return [triton.Config(small, num_warps=4)] if interpreting() else list(kernel.configs)


def _cases(kernel, small_by_group):
    for group in GROUPS:
        for i, config in enumerate(_configs(kernel, small_by_group[group])):
            yield pytest.param(group, config, id=f"group{group}-config{i}")


def _windows(block: int) -> list:
    return [0, 2 * block, 2 * block - 1]


def around(edge: int, tile: int, block: int) -> list:
    """Lengths whose last query runs from edge - 1 to a key block and a tile past `edge`: the last query tile
    holds each of 1..tile tokens with the edge inside it, at its start and behind it."""
    return list(range(edge, edge + max(tile, block) + tile))


def _rand(g, *shape):
    return torch.randn(*shape, generator=g).to(DTYPE)


def _check(out, cu, qs, ks, vs, sinks, starts, window, what):
    for b, (q, k, v, s) in enumerate(zip(qs, ks, vs, starts)):
        ref = attention_ref(q[None], k[None], v[None], sinks, sm_scale=SM_SCALE, sliding_window=window, q_start=s)
        assert_close(out[cu[b]:cu[b + 1]], ref[0], name=f"{what}: start {s}, length {len(q)}")


def _prefill(group, window, lens, starts, device):
    """Sequence b: keys for positions 0..starts[b] + lens[b] - 1, the first starts[b] in a cache (a ring of
    the window, or every position without one) whose slots no query may read hold nan."""
    g = torch.Generator().manual_seed(len(lens) * 1000 + window)
    B = len(lens)
    ks = [_rand(g, s + n, 1, D) for s, n in zip(starts, lens)]
    vs = [_rand(g, s + n, 1, D) for s, n in zip(starts, lens)]
    qs = [_rand(g, n, group, D) for n in lens]
    sinks = torch.randn(group, generator=g)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    args = dict(q=torch.cat(qs), k=torch.cat([k[s:] for k, s in zip(ks, starts)]),
                v=torch.cat([v[s:] for v, s in zip(vs, starts)]), sinks=sinks, cu_seqlens=cu, max_seqlen=max(lens),
                sm_scale=SM_SCALE, sliding_window=window)
    if any(starts):
        L = window or max(starts)
        kc = torch.full((B, L, 1, D), float("nan"), dtype=DTYPE)
        vc = kc.clone()
        kept = L - 1 if window else L  # slot (s - L) % L of a ring holds position s - L, out of every window
        for b, s in enumerate(starts):
            for p in range(max(0, s - kept), s):
                kc[b, p % L], vc[b, p % L] = ks[b][p], vs[b][p]
        args.update(k_cache=kc, v_cache=vc, cache_seqlens=torch.tensor(starts, dtype=torch.int32))
    out = attention(**{n: x.to(device) if isinstance(x, torch.Tensor) else x for n, x in args.items()})
    return out, cu, qs, ks, vs, sinks


@pytest.mark.parametrize("group,config", list(_cases(prefill_module._attention_kernel, PREFILL_SMALL)))
@pytest.mark.parametrize("w", [0, 1, 2])
def test_attention_sweep(group, config, w, device, monkeypatch):
    """Prefill without a cache. Guards the banded kernel's loop bounds: lengths whose last query tile holds
    each residue of the tile with the window's edge (window 0: a key-block boundary) inside it, at its start
    and behind it. A key block run unmasked that reaches one key past the window (as reported for a last tile
    of exactly 2 tokens) fails here."""
    one_config(monkeypatch, prefill_module._attention_kernel, config)
    tile, block = config.kwargs["BLOCK_M"] // triton.next_power_of_2(group), config.kwargs["BLOCK_N"]
    window = _windows(block)[w]
    lens = around(window or block, tile, block)
    out, cu, qs, ks, vs, sinks = _prefill(group, window, lens, [0] * len(lens), device)
    _check(out, cu, qs, ks, vs, sinks, [0] * len(lens), window, f"tile {tile}, key block {block}, window {window}")


@pytest.mark.parametrize("group,config", list(_cases(prefill_module._attention_kernel, PREFILL_SMALL)))
@pytest.mark.parametrize("w", [0, 1, 2])
def test_attention_chunked_prefill_sweep(group, config, w, device, monkeypatch):
    """Prefill after a cached prefix (chunked prefill), sliding layers on a ring of the window. Guards the
    cache loop and the new keys' loops: one-tile chunks of every residue after each cache length from 1
    through the window and a key block past it (the window's edge at key 0, in the cache, at its end), then
    the no-cache sweep's lengths after a prefix of a key block + 1 (the edge among the new keys, the key
    blocks not aligned to the cache). The one ring slot out of every window, and a full cache's slots past
    its length, hold nan."""
    one_config(monkeypatch, prefill_module._attention_kernel, config)
    tile, block = config.kwargs["BLOCK_M"] // triton.next_power_of_2(group), config.kwargs["BLOCK_N"]
    window = _windows(block)[w]
    short = range(1, (window or block) + block + 1)
    long = around(window or block, tile, block)
    starts = [*short, *[block + 1] * len(long)]
    lens = [*[1 + s % tile for s in short], *long]
    out, cu, qs, ks, vs, sinks = _prefill(group, window, lens, starts, device)
    _check(out, cu, qs, ks, vs, sinks, starts, window, f"tile {tile}, key block {block}, window {window}")


@pytest.mark.parametrize("group,config", list(_cases(decode_module._decode_attention_kernel,
                                                     {g: DECODE_SMALL for g in GROUPS})))
@pytest.mark.parametrize("w,num_splits", [(0, 3), (1, 2), (2, 3)])
def test_decode_attention_sweep(group, config, w, num_splits, device, monkeypatch):
    """Decode at every position from 0 through the window and a key block past it, on a ring of the window
    that wraps (window 0: through num_splits + 1 key blocks, a full cache with nan past each position).
    Guards the visible range and its split into num_splits runs of whole key blocks, empty ones included."""
    one_config(monkeypatch, decode_module._decode_attention_kernel, config)
    block = config.kwargs["BLOCK_N"]
    window = _windows(block)[w]
    positions = list(range(window + block + 1 if window else (num_splits + 1) * block + 1))
    L = window or len(positions)
    g = torch.Generator().manual_seed(window)
    ks = [_rand(g, p + 1, 1, D) for p in positions]
    vs = [_rand(g, p + 1, 1, D) for p in positions]
    q = _rand(g, len(positions), group, D)
    sinks = torch.randn(group, generator=g)
    kc = torch.full((len(positions), L, 1, D), float("nan"), dtype=DTYPE)
    vc = kc.clone()
    for b, p in enumerate(positions):
        for s in range(max(0, p + 1 - L), p + 1):
            kc[b, s % L], vc[b, s % L] = ks[b][s], vs[b][s]
    out = decode_attention(q.to(device), kc.to(device), vc.to(device), sinks.to(device),
                           torch.tensor(positions, dtype=torch.int32, device=device), SM_SCALE, window, num_splits)
    _check(out, torch.arange(len(positions) + 1), list(q[:, None]), ks, vs, sinks, positions, window,
           f"key block {block}, window {window}, {num_splits} splits")
