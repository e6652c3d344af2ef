"""The shard plan, the loader reading only a rank's slices (by the bytes it copies and the pages it maps), and the
per-rank memory budget: all in one process, a rank at a time."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch

from gpt_oss_triton.loader import expected_tensors, load, make_checkpoint
from gpt_oss_triton.model import PRESETS
from gpt_oss_triton.model.budget import check_layout, fit_table, memory_budget, weight_bytes
from gpt_oss_triton.model.parallel import ShardPlan

TINY = PRESETS["tiny"]


@pytest.mark.parametrize("preset,ranks", [("tiny", 2), ("tiny", 4), ("tiny", 8), ("gpt-oss-120b", 8)])
def test_slices_tile_every_tensor(preset, ranks):
    """Across the ranks each sliced tensor is covered once (KV heads: once per replica), replicated ones whole."""
    config = PRESETS[preset]
    plans = [ShardPlan(config, r, ranks) for r in range(ranks)]
    replicas = max(1, ranks // config.num_key_value_heads)
    for name, (shape, _) in expected_tensors(config).items():
        cuts = [p.slices().get(name) for p in plans]
        if all(c is None for c in cuts):
            assert "norm" in name or "gate" in name, f"{name} is replicated"
            continue
        if name.endswith("attn.out.bias"):  # rank 0 adds it; the others hold zeros
            assert cuts[0] is None and all(c.zeros for c in cuts[1:])
            continue
        dim = cuts[0].dim
        hits = torch.zeros(shape[dim], dtype=torch.int64)
        for c in cuts:
            for a, b in c.ranges:
                hits[a:b] += 1
        if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            q_rows = config.num_attention_heads * config.head_dim
            assert hits[:q_rows].eq(1).all() and hits[q_rows:].eq(replicas).all(), name
        else:
            assert hits.eq(1).all(), name


def test_query_heads_read_their_own_kv_head_when_kv_heads_are_replicated():
    group = TINY.num_attention_heads // TINY.num_key_value_heads  # 4 query heads per KV head
    for ranks in (1, 2, 4, 8):
        for r in range(ranks):
            p = ShardPlan(TINY, r, ranks)
            (q0, q1), (k0, k1) = p.q_heads, p.kv_heads
            assert {h // group for h in range(q0, q1)} <= set(range(k0, k1)), (ranks, r)
            assert (q1 - q0) % (k1 - k0) == 0


def test_layouts_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="3 ranks do not divide the 8 query heads"):
        ShardPlan(TINY, 0, 3)
    with pytest.raises(ValueError, match="16 ranks do not divide the 8 query heads"):
        ShardPlan(TINY, 0, 16)
    odd = dataclasses.replace(TINY, num_key_value_heads=4, num_attention_heads=12, num_experts=12)
    with pytest.raises(ValueError, match="neither divide the 4 KV heads nor are a multiple"):
        ShardPlan(odd, 0, 6)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        ShardPlan(TINY, 2, 2)


def _local_bytes(config, plan) -> int:
    slices, shapes = plan.slices(), plan.shapes()
    return sum(math.prod(shapes[n]) * d.itemsize for n, (_, d) in expected_tensors(config).items()
               if not (n in slices and slices[n].zeros))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel_ckpt")
    return {"hf": make_checkpoint(root / "hf", TINY, layout="hf", seed=1, shard_bytes=1 << 20),  # q, k, v in shards
            "original": make_checkpoint(root / "original", TINY, layout="original", seed=1)}


@pytest.mark.parametrize("layout", ["hf", "original"])
@pytest.mark.parametrize("ranks", [2, 4])
def test_each_rank_reads_its_slices_and_nothing_else(checkpoints, layout, ranks):
    whole = load(checkpoints[layout])
    assert whole.bytes_read == sum(math.prod(s) * d.itemsize for s, d in expected_tensors(TINY).values())
    for r in range(ranks):
        plan = ShardPlan(TINY, r, ranks)
        mine = load(checkpoints[layout], select=lambda config: ShardPlan(config, r, ranks).slices())
        assert mine.bytes_read == _local_bytes(TINY, plan)
        assert mine.bytes_read < whole.bytes_read * (0.6 if ranks == 2 else 0.35)
        slices = plan.slices()
        for name, t in mine.tensors.items():
            want = slices[name].take(whole.tensors[name]) if name in slices else whole.tensors[name]
            assert torch.equal(t, want), name


def _present_pages(path: Path) -> set[int]:
    """File offsets of the pages of `path` this process has mapped in (/proc/self/maps + pagemap's present bit)."""
    page, present = 4096, set()
    with open("/proc/self/pagemap", "rb") as pagemap:
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or fields[5] != str(path):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            offset = int(fields[2], 16)
            pagemap.seek(lo // page * 8)
            entries = pagemap.read((hi - lo) // page * 8)
            for i in range(0, len(entries), 8):
                if int.from_bytes(entries[i:i + 8], "little") >> 63:
                    present.add(offset + i // 8 * page)
    return present


def _read_ranges(path: Path, plan: ShardPlan) -> list[tuple[int, int]]:
    """The byte ranges of the file that rank `plan.rank` must read: its row runs (a column slice: the whole
    tensor, whose rows it reads a part of each)."""
    from gpt_oss_triton.loader import SafetensorsFile

    infos, slices, out = SafetensorsFile(path).infos, plan.slices(), []
    for name, info in infos.items():
        cut = slices.get(name)
        if cut is None or cut.dim != 0:
            out.append((info.start, info.end))
        elif not cut.zeros:
            row = (info.end - info.start) // info.shape[0]
            out += [(info.start + a * row, info.start + b * row) for a, b in cut.ranges]
    return out


@pytest.mark.skipif(not Path("/proc/self/pagemap").exists(), reason="needs Linux's /proc/self/pagemap")
def test_each_rank_maps_only_its_pages(tmp_path):
    """A rank that loads and reads its share has mapped no page of the file that is not near a byte it reads.
    'Near': the kernel maps a whole page-cache folio (up to 2 MB) around a fault, so the experts are made large
    next to that (8 MB per rank), and most of the file must stay unmapped."""
    config = dataclasses.replace(TINY, num_hidden_layers=1, layer_types=(), hidden_size=1024, intermediate_size=4096)
    path = make_checkpoint(tmp_path / "big", config, layout="original", seed=2) / "model.safetensors"
    ranks, rank, folio = 4, 1, 2 << 20
    plan = ShardPlan(config, rank, ranks)
    ckpt = load(path.parent, select=lambda c: ShardPlan(c, rank, ranks).slices())
    for t in ckpt.tensors.values():  # read every byte of the share, as moving it to a GPU would
        t.float().sum()
    present = _present_pages(path)
    near = [(a // folio * folio - folio, -(-b // folio) * folio + folio) for a, b in _read_ranges(path, plan)]
    stray = sorted(p for p in present if not any(a <= p < b for a, b in near))
    assert not stray, f"rank {rank} mapped {len(stray)} pages far from its slices, first at byte {stray[0]}"
    assert len(present) * 4096 >= _local_bytes(config, plan) * 0.9
    assert len(present) * 4096 < path.stat().st_size / 2


def test_budget_per_rank():
    c = PRESETS["gpt-oss-120b"]
    whole = weight_bytes(c)
    # Norms and router replicated; the out bias held by every rank (as zeros beside rank 0's).
    replicated = sum(math.prod(s) * 2 for n, (s, _) in expected_tensors(c).items()
                     if "norm" in n or ".gate." in n or n.endswith("out.bias"))
    for ranks in (2, 4, 8):
        assert weight_bytes(c, tensor_parallel=ranks) == (whole - replicated) // ranks + replicated
        b = memory_budget(c, 1, 8192, tensor_parallel=ranks)
        assert b.kv_per_token == 36864 // ranks  # 8 KV heads split, never replicated up to 8 ranks
    # 4 ranks with 2 KV heads: each rank keeps one, so the KV per rank halves only once.
    assert memory_budget(TINY, 1, 64, tensor_parallel=4).kv_per_token == memory_budget(TINY, 1, 64).kv_per_token // 2


def test_a_layout_that_does_not_fit_names_the_ranks_and_the_shortfall():
    c, gib = PRESETS["gpt-oss-120b"], 1 << 30
    with pytest.raises(ValueError) as e:
        check_layout(c, 1, 4096, [23 * gib, 22 * gib], devices=["cuda:0", "cuda:1"])
    msg = str(e.value)
    assert "rank 0 (cuda:0) has 24.70 GB free: short by" in msg and "rank 1 (cuda:1) has 23.62 GB free" in msg
    assert "weights 32.64 GB" in msg and "not even one sequence fits" in msg
    assert check_layout(c, 1, 4096, [47 * gib, 47 * gib]).weights == weight_bytes(c, tensor_parallel=2)
    with pytest.raises(ValueError, match=r"rank 1 has .* short by .* at most batch \d+ fits"):
        check_layout(c, 256, 32768, [47 * gib, 40 * gib], weights_loaded=True)
    assert check_layout(c, 1, 4096, [None, None]).weights > 0  # off CUDA: nothing to check


def test_fit_table():
    rows = {(r["model"], r["layout"]): r for r in fit_table({"gpt-oss-120b": PRESETS["gpt-oss-120b"]})}
    assert set(rows[("gpt-oss-120b", "2x24 GB")]["max_batch"].values()) == {0}  # 32.6 GB of weights per rank
    assert rows[("gpt-oss-120b", "2x48 GB")]["max_batch"][131072] >= 1
    assert rows[("gpt-oss-120b", "4x24 GB")]["max_batch"][4096] >= 8
    assert rows[("gpt-oss-120b", "8x80 GB")]["weights_per_rank"] < 9e9


def test_tensor_parallel_needs_a_process_group_of_that_size(capsys):
    from gpt_oss_triton.model import GptOss
    from gpt_oss_triton.model.cli import main

    with pytest.raises(ValueError, match="needs an initialised torch.distributed process group of 2 ranks: launch "
                                         "with torchrun --nproc-per-node 2"):
        GptOss.from_pretrained("tiny", tensor_parallel=2)
    with pytest.raises(SystemExit, match="--tensor-parallel 2 runs one process per rank: launch it with torchrun "
                                         "--nproc-per-node 2"):
        main(["generate", "--prompt", "x", "--tensor-parallel", "2"])
