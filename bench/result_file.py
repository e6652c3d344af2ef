"""One benchmark run as one JSON record: the environment, the measured roofs and every benchmark's result.

`build_record` is pure (tested on the CPU with stand-in benchmark objects; the environment it records comes
from gpt_oss_triton.model.environment); `write_record` names the file after device, date and commit, so runs never overwrite each other.
"""
import json
import math
import re
from pathlib import Path

SCHEMA = 1


def _clean(value):
    """JSON-safe: NaN/inf become null (strict JSON has neither), anything unknown its str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def benchmark_entry(bench) -> dict:
    """name, group, params, stats (seconds) and extra_info of one pytest-benchmark result."""
    stats = bench.stats
    stats = getattr(stats, "stats", stats)  # pytest-benchmark's Metadata wraps its Stats
    return _clean({
        "name": bench.name, "fullname": getattr(bench, "fullname", bench.name), "group": bench.group,
        "params": bench.params or {},
        "stats": {k: getattr(stats, k) for k in ("median", "min", "mean", "max", "stddev", "rounds")
                  if hasattr(stats, k)},
        "extra_info": dict(bench.extra_info),
    })


def build_record(benchmarks, roofs: dict, env: dict) -> dict:
    """The run's record; benchmarks that did not run (no stats) or failed are left out."""
    ran = [b for b in benchmarks if b and not getattr(b, "has_error", False)]
    return _clean({
        "schema": SCHEMA, **env,
        "copy_bytes_per_s": roofs.get("copy_bytes_per_s"), "bf16_flops": roofs.get("bf16_flops"),
        "benchmarks": [benchmark_entry(b) for b in ran],
    })


def record_filename(record: dict) -> str:
    """e.g. NVIDIA-H100-80GB-HBM3_20250801T120000Z_1a2b3c4.json (a dirty tree adds '-dirty')."""
    device = re.sub(r"[^A-Za-z0-9.]+", "-", record.get("device") or "unknown").strip("-")
    date = re.sub(r"[-:]|\+00:?00$", "", record["date"]) + "Z"
    commit = record.get("commit", "unknown") + ("-dirty" if record.get("dirty") else "")
    return f"{device}_{date}_{commit}.json"


def write_record(record: dict, directory) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / record_filename(record)
    path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    return path


def load_record(path) -> dict:
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or "benchmarks" not in record:
        raise ValueError(f"{path}: not a benchmark results record (no 'benchmarks' key)")
    return record
