"""The part of a tensor that one rank of a parallel model holds, read from the checkpoint and nothing more.

A `TensorSlice` names index ranges along one dimension, concatenated in order (a rank's qkv rows are its
query heads' rows, then its key heads', then its value heads'). Applied to a memory-mapped tensor it gives
views of the mapping, so only the slice's own bytes are ever read (row slices are contiguous runs of the
file; a column slice reads its columns row by row). `zeros` stands for a tensor the rank must have but
never reads: the bias that only rank 0 adds before a sum over ranks.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSlice:
    dim: int
    ranges: tuple  # ((start, stop), ...) along dim
    zeros: bool = False

    def shape(self, full_shape) -> tuple:
        """The slice's shape, from the whole tensor's."""
        shape = list(full_shape)
        for start, stop in self.ranges:
            if not 0 <= start <= stop <= full_shape[self.dim]:
                raise ValueError(f"slice [{start}, {stop}) of dim {self.dim} is outside a tensor of shape "
                                 f"{list(full_shape)}")
        shape[self.dim] = sum(stop - start for start, stop in self.ranges)
        return tuple(shape)

    def views(self, parts: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Views of the slice in `parts`, the pieces that stacked along dim 0 make the whole tensor (the HF
        layout stores qkv as q, k and v). Outer list along dim 0, inner along `dim`: concatenating each inner
        list along `dim`, then the outer along 0, gives the slice."""
        if self.zeros:
            return []
        if self.dim != 0:
            return [[p.narrow(self.dim, a, b - a) for a, b in self.ranges] for p in parts]
        out = []
        for a, b in self.ranges:  # in the ranges' order, which need not be the file's
            row0 = 0
            for p in parts:
                lo, hi = max(a, row0), min(b, row0 + p.shape[0])
                if lo < hi:
                    out.append([p[lo - row0:hi - row0]])
                row0 += p.shape[0]
        return out

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """The slice of an in-memory tensor, as a new contiguous tensor (so the whole one can be freed)."""
        if self.zeros:
            return torch.zeros(self.shape(t.shape), dtype=t.dtype, device=t.device)
        return torch.cat([t.narrow(self.dim, a, b - a) for a, b in self.ranges], self.dim).contiguous()


def read_slice(parts: list[torch.Tensor], sl: TensorSlice | None, full_shape, *, device, dtype) -> tuple[torch.Tensor, int]:
    """The tensor `sl` selects from `parts` (None: all of it) on `device`, floats cast to `dtype` (None: as
    stored), and the bytes read from `parts` to make it. On the CPU with the stored dtype a single contiguous
    run stays a view of the mapping (zero-copy)."""
    stored = parts[0].dtype
    cast = dtype if dtype is not None and stored.is_floating_point else None
    if sl is not None and sl.zeros:
        return torch.zeros(sl.shape(full_shape), dtype=cast or stored, device=device), 0
    groups = [[p] for p in parts] if sl is None else sl.views(parts)
    nbytes = sum(v.numel() * v.element_size() for g in groups for v in g)
    along = 0 if sl is None else sl.dim
    moved = [[v.to(device=device, dtype=cast) for v in g] for g in groups]
    rows = [g[0] if len(g) == 1 else torch.cat(g, along) for g in moved]
    t = rows[0] if len(rows) == 1 else torch.cat(rows, 0)
    return (t if t.is_contiguous() else t.contiguous()), nbytes
