"""Where a measurement was taken: device, driver, torch and triton versions, git commit and date."""
import subprocess
from datetime import datetime, timezone
from pathlib import Path

SOURCE = Path(__file__).resolve().parent  # the git commit is read here (unknown when installed from a wheel)


def _command(*args: str) -> str | None:
    try:
        out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=20, cwd=SOURCE)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def driver_version() -> str:
    smi = _command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
    if smi:
        return smi.splitlines()[0]
    import torch
    return f"cuda {torch.version.cuda}" if torch.version.cuda else "unknown"


def environment(device: str) -> dict:
    """Device, driver, versions, git commit (+ dirty: tracked files changed) and the UTC date, now."""
    import torch
    import triton

    status = _command("git", "status", "--porcelain", "--untracked-files=no")
    return {
        "device": device, "driver": driver_version(), "torch": torch.__version__, "triton": triton.__version__,
        "commit": _command("git", "rev-parse", "--short", "HEAD") or "unknown",
        "dirty": bool(status) if status is not None else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
