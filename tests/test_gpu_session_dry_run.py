"""The first-GPU-run tools, dry: bench/static_vs_measured.py over a stand-in model on the CPU (its stepping,
timing, config forcing, autotuner picks and record, without a kernel's cost), and bench/gpu_session.sh's
step runner (every step under its own limit, a failing or hanging step noted and the next one run) with a
stand-in Python. The real dry run (`bash bench/gpu_session.sh --dry-run`, the tiny preset in the
interpreter) takes minutes here; these take seconds."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt_oss_triton.model import GptOss
from gpt_oss_triton.model.config import GptOssConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import static_vs_measured  # noqa: E402


class StandIn:
    """What the decode step needs of a model: an embedding's device, a cache with lengths, decode_step."""

    def __init__(self):
        self.config = GptOssConfig.preset("tiny")
        self.embedding = torch.nn.Embedding(4, 4)
        self.steps = 0

    def new_cache(self, batch, max_len):
        return SimpleNamespace(batch_size=batch, lengths=torch.zeros(batch, dtype=torch.int32), max_len=max_len)

    def decode_step(self, tokens, active, cache, slots):
        self.steps += 1
        cache.lengths[slots.long()] += active
        return torch.randn(tokens.shape[0], self.config.vocab_size)


def test_static_vs_measured_dry_run_records_each_case(tmp_path, monkeypatch, capsys):
    stand_in = StandIn()
    monkeypatch.setattr(GptOss, "from_pretrained", staticmethod(lambda *a, **k: stand_in))
    tuners = static_vs_measured.autotuners()
    forced = [n for n in tuners if n.split(".")[0] in static_vs_measured.FORCED_MODULES and "prefill" not in n]
    before = {n: list(t.configs) for n, t in tuners.items()}
    out = tmp_path / "svm.json"
    assert static_vs_measured.main(["--dry-run", "--force", "--batch", "1", "3", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["errors"] == [] and record["environment"]["commit"]
    assert [(r["model"], r["batch"], r["context"]) for r in record["results"]] == [("tiny", 1, 16), ("tiny", 3, 16)]
    groups = sum(len(static_vs_measured.tile_groups(tuners[n].configs)) for n in forced)
    for r in record["results"]:
        assert r["measured"]["engine_step_s"] > 0 and r["measured"]["replay_step_s"] > 0
        assert len(r["forced"]) == groups > 0 and all("replay_step_s" in f for f in r["forced"])
    assert {n: list(t.configs) for n, t in tuners.items()} == before  # forcing leaves every tuner as it was
    # per case: 2 warm-up steps, then engine and replay timings of 1 step each; the same for each forced config
    assert stand_in.steps == 2 * (1 + groups) * (2 + 1 + 1)
    assert "engine step" in capsys.readouterr().out


def test_tile_groups_leave_split_k_to_the_launcher():
    import triton
    configs = [triton.Config({"BLOCK_N": 128, "SPLIT_K": s}, num_warps=4, num_stages=2) for s in (1, 2, 4)] + \
        [triton.Config({"BLOCK_N": 128, "SPLIT_K": 1}, num_warps=4, num_stages=3)]
    groups = static_vs_measured.tile_groups(configs)
    assert {k: len(v) for k, v in groups.items()} == {"BLOCK_N=128 w4 s2": 3, "BLOCK_N=128 w4 s3": 1}


STAND_IN_PYTHON = """#!/usr/bin/env bash
# a stand-in python3: the forced-configs step fails, the transformers peer hangs, everything else succeeds
case "$*" in
  *--force*) echo "forced configs: boom" >&2; exit 3 ;;
  *bench_e2e*) sleep 600 ;;
  *) echo "ran: $*" ;;
esac
"""


def test_gpu_session_runs_every_step_and_notes_failures(tmp_path):
    python = tmp_path / "python3"
    python.write_text(STAND_IN_PYTHON)
    python.chmod(0o755)
    out = tmp_path / "results"
    env = {**os.environ, "PYTHON": str(python), "OUT": str(out), "STEP_LIMIT": "2",
           "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    steps = {line.split("\t")[0]: int(line.split("\t")[1]) for line in (out / "steps.tsv").read_text().splitlines()}
    assert list(steps) == ["environment", "bandwidth", "graph_step", "forced_configs", "peer_transformers"]
    assert steps["forced_configs"] == 3 and steps["peer_transformers"] == 124
    assert steps["graph_step"] == 0 and "--dry-run" in (out / "graph_step.log").read_text()
    assert "forced_configs failed" in done.stdout


@pytest.mark.parametrize("script", ["gpu_session.sh"])
def test_gpu_session_parses(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / script)]).returncode == 0
