"""The static model of a tensor-parallel decode step (bench/static_collectives.py): NCCL's latency model, the
busiest rank's experts, and where splitting helps at batch 1."""
import itertools
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from gpt_oss_triton.model import PRESETS  # noqa: E402
from static_collectives import (DEVICES, busiest_rank_experts, collective_seconds, collectives,  # noqa: E402
                                parallel_step, table)


def test_small_all_reduce_is_nccl_latency():
    """NCCL's ring/LL model: 6.6 us + 2(N-1) hops; at 5.8 KB (hidden 2880, batch 1, bf16) bandwidth adds ~0."""
    nvlink, pcie = DEVICES["H100-SXM"], DEVICES["L40S"]
    assert collective_seconds("all_reduce", 5760, 2, nvlink) == pytest.approx(6.6e-6 + 2 * 0.6e-6 + 5760 / 141e9)
    assert collective_seconds("all_reduce", 5760, 8, nvlink) == pytest.approx(6.6e-6 + 14 * 0.6e-6 + 5760 * 14 / 8 / 141e9)
    assert collective_seconds("all_reduce", 5760, 2, pcie) == pytest.approx(6.6e-6 + 2e-6 + 5760 / 16e9)
    assert collective_seconds("all_reduce", 5760, 1, pcie) == 0
    big = 1 << 30  # a large message goes at the link's full bandwidth (Simple protocol)
    assert collective_seconds("all_gather", big, 2, nvlink) == pytest.approx(8.4e-6 + 3.4e-6 + big / 2 / 450e9)


def test_collectives_per_step():
    c = PRESETS["gpt-oss-120b"]
    kinds = {kind: (nbytes, n) for kind, nbytes, n in collectives(c, 4, 8)}
    assert kinds["all_reduce"] == (2880 * 8 * 2, 2 * 36 + 1)  # two per layer, one after the embedding
    assert kinds["all_gather"] == (201088 * 8 * 2, 1)
    assert collectives(c, 1, 8) == []


def test_busiest_rank_experts():
    # Exact at batch 1: every 4-subset of the 32 experts, the larger of the two ranks' counts.
    subsets = list(itertools.combinations(range(32), 4))
    exact = sum(max(sum(e < 16 for e in s), sum(e >= 16 for e in s)) for s in subsets) / len(subsets)
    assert busiest_rank_experts(32, 4, 2, 1) == pytest.approx(exact)
    assert exact == pytest.approx(2.70, abs=0.005)
    assert busiest_rank_experts(128, 4, 1, 1) == 4
    # Batch 64 on one rank: the expected distinct experts E(1 - (1 - k/E)^B) (model/roofline.py), sampled.
    assert busiest_rank_experts(128, 4, 1, 64) == pytest.approx(128 * (1 - (1 - 4 / 128) ** 64), rel=0.02)


def test_where_splitting_helps_at_batch_1():
    """Over NVLink the collectives eat most of the saving at batch 1; over PCIe cards, which read their weights
    slowly, halving the bytes per rank wins clearly; at batch 64 it wins everywhere."""
    rows = {(r["model"], r["device"], r["batch"], r["ranks"]): r for r in table(batches=(1, 64), ranks=(1, 2, 8))}
    h100, l40s = DEVICES["H100-SXM"].name, DEVICES["L40S"].name
    assert rows[("gpt-oss-20b", h100, 1, 2)]["speedup"] < 1.25
    assert rows[("gpt-oss-120b", h100, 1, 8)]["speedup"] < rows[("gpt-oss-120b", h100, 64, 8)]["speedup"] / 2
    assert rows[("gpt-oss-120b", l40s, 1, 2)]["speedup"] > 1.3
    assert all(rows[(m, d, 64, 2)]["speedup"] > 1.5 for m in ("gpt-oss-20b", "gpt-oss-120b") for d in (h100, l40s))
    step = parallel_step(PRESETS["gpt-oss-20b"], 2, 1, 4096, DEVICES["H100-SXM"])
    assert step.collectives_s > 0.3 * step.total_s
