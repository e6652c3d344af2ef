"""This process's place in a tensor-parallel group, and the collectives the model's blocks call.

`TensorParallel(rank, world_size, group)`: the blocks hold one (`SINGLE` when the model runs on one device)
and call it at the ends of the row-parallel parts:
- `add_reduce(x, y)`: x + the sum over ranks of y. Rank 0 adds the residual x to its partial y before the
  all-reduce, so the sum holds it once: one all-reduce per attention block and one per MoE block;
- `residual(x)`: the residual a fused epilogue adds on this rank (x on rank 0, None elsewhere);
- `all_reduce_(y)`: the sum over ranks, in place;
- `all_gather_last(y)`: [..., n] per rank -> [..., world_size * n], rank order (the vocabulary-split logits).
At world size 1 each is the plain single-device operation: no collective is issued.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    world_size: int = 1
    group: object = None  # a torch.distributed ProcessGroup; None: the default group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def add_reduce(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return x + y
        if self.rank == 0:
            y = y + x
        dist.all_reduce(y, group=self.group)
        return y

    def residual(self, x: torch.Tensor) -> torch.Tensor | None:
        return x if self.rank == 0 else None

    def all_reduce_(self, y: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(y, group=self.group)
        return y

    def all_gather_last(self, y: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return y
        n = y.shape[-1]
        flat = y.reshape(-1, n).contiguous()
        out = torch.empty(self.world_size, *flat.shape, dtype=y.dtype, device=y.device)
        _all_gather(out.view(-1), flat.view(-1), group=self.group)
        return out.permute(1, 0, 2).reshape(*y.shape[:-1], self.world_size * n)

    def broadcast_(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        if self.world_size > 1:
            dist.broadcast(t, src, group=self.group)
        return t


SINGLE = TensorParallel()

# torch 2.13 renamed all_gather_into_tensor (which still works, with a deprecation warning).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def join(tensor_parallel: int) -> TensorParallel:
    """The TensorParallel of this process in the initialised default process group, which must have
    `tensor_parallel` ranks (SINGLE for 1)."""
    if tensor_parallel == 1:
        return SINGLE
    if tensor_parallel < 1:
        raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(f"tensor_parallel={tensor_parallel} needs an initialised torch.distributed process group "
                         f"of {tensor_parallel} ranks: launch with torchrun --nproc-per-node {tensor_parallel} and "
                         "call torch.distributed.init_process_group() first")
    world = dist.get_world_size()
    if world != tensor_parallel:
        raise ValueError(f"tensor_parallel={tensor_parallel}, but the process group has {world} ranks "
                         f"(torchrun --nproc-per-node {tensor_parallel})")
    return TensorParallel(dist.get_rank(), world)


def local_device() -> torch.device:
    """This rank's device: the GPU of its LOCAL_RANK (torchrun sets it) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def check_backend(device: torch.device) -> None:
    """NCCL runs collectives on GPU tensors only: a CPU model in an NCCL group fails here, not mid-step."""
    backend = dist.get_backend()
    if device.type == "cpu" and "gloo" not in str(backend):
        raise ValueError(f"the process group's backend is {backend!r}, which cannot run collectives on CPU "
                         "tensors: initialise it with backend='gloo' for a CPU model")
