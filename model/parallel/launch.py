"""The CLI over N ranks: `torchrun --nproc-per-node N gpt-oss-triton generate|chat|serve|bench --tensor-parallel N`.

Every rank joins the process group (NCCL on GPUs, gloo on the CPU), starts its watchdog and checks that the
layout fits every rank's memory before any weight is read. Rank 0 then runs the command as on one device,
with the model wrapped in a `Leader`; the other ranks load their shares and follow its steps until it stops
them with its exit status.
"""
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from ..budget import check_layout, free_bytes
from .group import TensorParallel
from .leader import Control, Leader, follow
from .watchdog import Watchdog, peer_timeout


def tensor_parallel(value: int | None) -> int:
    """--tensor-parallel, else the launcher's WORLD_SIZE, else 1."""
    return value if value is not None else int(os.environ.get("WORLD_SIZE", 1))


def init(tp: int, device: str | None) -> tuple[TensorParallel, torch.device]:
    """Join torchrun's process group of `tp` ranks; this rank's TensorParallel and device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise SystemExit(f"gpt-oss-triton: --tensor-parallel {tp} runs one process per rank: launch it with "
                         f"torchrun --nproc-per-node {tp} gpt-oss-triton ... --tensor-parallel {tp}")
    world = int(os.environ["WORLD_SIZE"])
    if world != tp:
        raise SystemExit(f"gpt-oss-triton: --tensor-parallel {tp}, but torchrun started {world} processes "
                         f"(--nproc-per-node {tp})")
    on_gpu = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if on_gpu:
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise SystemExit(f"gpt-oss-triton: rank {os.environ['RANK']} wants GPU {local}, but this machine has "
                             f"{torch.cuda.device_count()}")
        where = torch.device("cuda", local)
        torch.cuda.set_device(where)
        dist.init_process_group("nccl", device_id=where)
    else:
        where = torch.device("cpu")
        dist.init_process_group("gloo")
    return TensorParallel(dist.get_rank(), world), where


def run(command, args, load, needs) -> int:
    """Run `command(args)` on rank 0, where `args.lead(model)` wraps the model it loads in the Leader; the other
    ranks `load(args)` their shares and follow. `needs(args)` -> (batch, context) the command's engine will
    ask for, checked against every rank's memory first. Returns this rank's exit status (rank 0's everywhere)."""
    try:
        timeout = peer_timeout()
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: {e}") from None
    parallel, device = init(args.tensor_parallel, args.device)
    args.device = str(device)
    watchdog = Watchdog(parallel, timeout=timeout).start()
    control = Control()
    status = 1
    try:
        _check_fits(args, parallel, control, device, needs)
        if parallel.rank == 0:
            args.lead = lambda model: Leader(model, control)
            try:
                status = command(args)
            finally:
                try:
                    control.stop(status)
                except RuntimeError:  # the followers are gone already: nothing to stop
                    pass
        else:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle: it stops the others
            args.follower = True
            model, _ = load(args, need_tokenizer=False)
            status = follow(model, control)
    finally:
        watchdog.stop()
        if status == 0:
            dist.barrier(group=control.group)
            dist.destroy_process_group()
    return status


def _check_fits(args, parallel, control: Control, device, needs) -> None:
    """Refuse, before loading, a layout whose share of the model does not fit some rank's free memory."""
    config = _config(args.model)
    free = free_bytes(device)
    frees = control.gather(-1 if free is None else free)
    if config is None:
        return  # a bad --model: loading reports it
    batch, context = needs(args)
    try:
        check_layout(config, batch, min(context, config.max_context), [None if f < 0 else f for f in frees],
                     act_bytes=2 if args.dtype == "bfloat16" else 4)
    except ValueError as e:
        raise SystemExit(f"gpt-oss-triton: this layout does not fit: {e}" if parallel.rank == 0 else 1) from None


def _config(model: str | None):
    """The config of --model (a preset or a checkpoint directory); None when it cannot be read."""
    from ...loader import CheckpointError, detect_layout
    from ..cli import DEFAULT_MODEL
    from ..config import PRESETS, GptOssConfig

    name = model or DEFAULT_MODEL
    try:
        if not Path(name).exists():
            return PRESETS.get(name)
        _, root = detect_layout(Path(name))
        return GptOssConfig.from_json(root / "config.json")
    except (CheckpointError, ValueError):
        return None
