"""Tensor and expert parallelism over torch.distributed (NCCL on GPUs, gloo on CPUs), launched with torchrun.

`group` (this rank's TensorParallel and the collectives the blocks call), `plan` (which slice of every tensor
each rank holds), `modules` (reshaping a model to one rank's share, the vocabulary-split embedding and
unembedding), `leader` (rank 0 drives the engine, the others follow its steps), `watchdog` (a rank that stops
answering brings the others down), `launch` (the CLI under torchrun).
"""
from .group import SINGLE, TensorParallel, join, local_device
from .plan import ShardPlan

__all__ = ["SINGLE", "ShardPlan", "TensorParallel", "join", "local_device"]
