"""The results JSON writer (bench/result_file.py) and the report built from it (bench/report.py), on the CPU."""
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import report  # noqa: E402
import result_file  # noqa: E402

ROOFS = {"device": "NVIDIA H100 80GB HBM3", "copy_bytes_per_s": 3.0e12, "bf16_flops": 989e12}
ENV = {"device": ROOFS["device"], "driver": "550.54.15", "torch": "2.11.0", "triton": "3.6.0",
       "commit": "1a2b3c4", "dirty": True, "date": "2025-08-01T12:00:00+00:00"}


@dataclass
class FakeBench:
    """What the writer reads of pytest-benchmark's Metadata: a falsy one did not run."""

    name: str
    group: str
    params: dict
    extra_info: dict
    median_s: float | None = 1e-3
    has_error: bool = False
    fullname: str = field(default="")

    @property
    def stats(self):
        return SimpleNamespace(median=self.median_s, min=0.9 * self.median_s, mean=1.1 * self.median_s, rounds=5)

    def __bool__(self):
        return self.median_s is not None


def _info(ms, gbps=0.0, tflops=0.0, **extra):
    return {"device": ROOFS["device"], "ms": ms, "GB/s": gbps, "TFLOP/s": tflops,
            "frac_copy_bw": gbps * 1e9 / ROOFS["copy_bytes_per_s"], "frac_bf16_peak": tflops * 1e12 / ROOFS["bf16_flops"],
            "torch": "2.11.0", "triton": "3.6.0", **extra}


def fake_benchmarks() -> list[FakeBench]:
    benches = [
        FakeBench("test_rmsnorm[1-triton]", "rmsnorm", {"N": 1, "impl": "triton"}, _info(0.0041, 2.81)),
        FakeBench("test_rmsnorm[1-torch]", "rmsnorm", {"N": 1, "impl": "torch"}, _info(0.0123, 0.937)),
        FakeBench("test_rmsnorm[8192-triton]", "rmsnorm", {"N": 8192, "impl": "triton"}, _info(0.0321, 2941.0)),
        FakeBench("test_rmsnorm[8192-torch]", "rmsnorm", {"N": 8192, "impl": "torch"}, _info(0.0963, 980.4)),
        FakeBench("test_attention[4096-full]", "attention", {"T": 4096, "window": 0},
                  _info(1.5, tflops=450.0, op="attention")),
        FakeBench("test_sdpa[4096-full]", "attention", {"T": 4096, "window": 0},
                  _info(3.0, tflops=225.0, impl="torch_sdpa")),
        FakeBench("test_dtype[bf16]", "cast", {"dtype": torch.bfloat16}, _info(0.5, float("nan"))),
        FakeBench("test_never_ran", "rmsnorm", {"N": 2}, {}, median_s=None),
        FakeBench("test_failed", "rmsnorm", {"N": 3}, {}, has_error=True),
    ]
    for step, per_ctx in (("decode", 1), ("prefill", 1024)):
        for preset, base in (("tiny", 2.0), ("gpt-oss-20b", 12.0)):
            for batch in (1, 8):
                for context in (1024, 8192):
                    for impl, slow in (("ours", 1.0), ("transformers", 4.0)):
                        ms = base * slow * (1 + context / 8192) * (1 + batch / 16)
                        extra = {"tokens/s": batch * per_ctx / (ms * 1e-3), "peak_mem_GB": 14.2}
                        if step == "prefill":
                            extra["ttft_ms"] = ms
                        benches.append(FakeBench(
                            f"test_{step}[{preset}-{impl}-{batch}-{context}]", f"e2e_{step}",
                            {"preset": preset, "impl": impl, "batch": batch, "context": context},
                            _info(ms, gbps=1200.0 / slow, tflops=3.0 / slow, **extra)))
    return benches


@pytest.fixture
def results_json(tmp_path) -> Path:
    return result_file.write_record(result_file.build_record(fake_benchmarks(), ROOFS, ENV), tmp_path / "results")


# -- the record ---------------------------------------------------------------------------------
def test_record_holds_environment_roofs_and_every_benchmark_that_ran():
    rec = result_file.build_record(fake_benchmarks(), ROOFS, ENV)
    assert {k: rec[k] for k in ENV} == ENV
    assert rec["copy_bytes_per_s"] == 3.0e12 and rec["bf16_flops"] == 989e12 and rec["schema"] == 1
    names = [b["name"] for b in rec["benchmarks"]]
    assert "test_never_ran" not in names and "test_failed" not in names
    assert len(names) == 7 + 2 * 2 * 2 * 2 * 2
    first = rec["benchmarks"][0]
    assert first["group"] == "rmsnorm" and first["params"] == {"N": 1, "impl": "triton"}
    assert first["stats"] == pytest.approx({"median": 1e-3, "min": 0.9e-3, "mean": 1.1e-3, "rounds": 5})
    assert first["extra_info"]["ms"] == 0.0041 and first["extra_info"]["frac_copy_bw"] == pytest.approx(2.81e9 / 3e12)
    cast = next(b for b in rec["benchmarks"] if b["group"] == "cast")
    assert cast["params"] == {"dtype": "torch.bfloat16"}  # not JSON: stored as its str
    assert cast["extra_info"]["GB/s"] is None  # NaN is not JSON either


def test_record_file_is_named_after_device_date_and_commit(results_json):
    assert results_json.name == "NVIDIA-H100-80GB-HBM3_20250801T120000Z_1a2b3c4-dirty.json"
    json.loads(results_json.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert result_file.load_record(results_json)["device"] == ROOFS["device"]


def test_nothing_ran_gives_an_empty_record():
    assert result_file.build_record([FakeBench("x", "g", {}, {}, median_s=None)], ROOFS, ENV)["benchmarks"] == []


def test_environment_reads_versions_and_commit_without_a_gpu():
    from gpt_oss_triton.model.environment import environment

    env = environment("cpu")
    assert env["torch"] == torch.__version__ and env["driver"] and env["commit"]
    assert env["date"].endswith("+00:00")


def test_a_file_that_is_not_a_record_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="not a benchmark results record"):
        result_file.load_record(tmp_path / "x.json")


# -- the report ---------------------------------------------------------------------------------
def _table(md: str, group: str) -> list[str]:
    section = md.split(f"### {group}\n\n", 1)[1].split("\n\n", 1)[0]
    return section.splitlines()


def test_markdown_header_and_tables(results_json, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_pyplot", lambda: (_ for _ in ()).throw(ImportError("no matplotlib")))
    md = report.write_report([results_json], tmp_path / "out").read_text()
    assert "## NVIDIA H100 80GB HBM3, 2025-08-01T12:00:00+00:00" in md
    assert "driver 550.54.15 · torch 2.11.0 · triton 3.6.0 · commit 1a2b3c4 (dirty)" in md
    assert "measured copy bandwidth 3,000 GB/s · dense bf16 peak 989 TFLOP/s" in md

    rms = _table(md, "rmsnorm")
    assert rms[0] == "| shape | impl | ms | GB/s | TFLOP/s | % copy BW | % bf16 peak | ours faster × |"
    assert rms[2:] == [
        "| N=1 | triton | 0.0041 | 2.81 | – | 0.094% | – | – |",
        "| N=1 | torch | 0.0123 | 0.937 | – | 0.031% | – | 3.00 |",
        "| N=8192 | triton | 0.0321 | 2,941 | – | 98.0% | – | – |",
        "| N=8192 | torch | 0.0963 | 980 | – | 32.7% | – | 3.00 |",
    ]
    assert _table(md, "attention")[2:] == [
        "| T=4096, window=0 | ours | 1.50 | – | 450 | – | 45.5% | – |",
        "| T=4096, window=0 | torch_sdpa | 3.00 | – | 225 | – | 22.8% | 2.00 |",
    ]
    decode = _table(md, "e2e_decode")
    assert decode[0].endswith("| ours faster × | tokens/s | peak GB |")
    # ms = 2 × (1 + 1024/8192) × (1 + 1/16) = 2.390625 for ours, 4 × that for the peer; tokens/s = 1 / s
    assert "| batch=1, context=1024, preset=tiny | ours | 2.39 | 1,200 | 3.00 | 40.0% | 0.3% | – | 418 | 14.2 |" in decode
    assert "| batch=1, context=1024, preset=tiny | transformers | 9.56 | 300 | 0.75 | 10.0% | 0.076% | 4.00 | 105 | 14.2 |" \
        in decode
    assert _table(md, "e2e_prefill")[0].endswith("| tokens/s | TTFT ms | peak GB |")
    assert "matplotlib is not installed" in md and not list((tmp_path / "out").glob("*.png"))


def test_plots_are_written_when_matplotlib_is_installed(results_json, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    md = report.write_report([results_json], out).read_text()
    for kind in ("roofline", "e2e", "peers"):
        png = out / f"{results_json.stem}_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert f"]({png.name})" in md


def test_command_reads_the_newest_result_by_default(results_json, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "RESULTS", results_json.parent)
    monkeypatch.setattr(report, "_pyplot", lambda: (_ for _ in ()).throw(ImportError("no matplotlib")))
    assert report.main(["--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "report.md")
    monkeypatch.setattr(report, "RESULTS", tmp_path / "empty")
    assert report.main(["--out", str(tmp_path / "out")]) == 2
    assert "no results JSON" in capsys.readouterr().err
