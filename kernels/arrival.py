"""The last program to arrive finishes the work: split reductions inside one launch, with no atomics on data.

Programs that each produce a part store it, then `last_to_arrive` counts them on an int32 counter; the program
that completes the count (its stores and everyone's are visible to it) reads all parts back in a fixed order
and finishes, so the result does not depend on which program arrived last, and it resets the counter to 0
for the next launch. Counters come from `counters(device, n)`: one zeroed buffer per device that the kernels
leave zeroed (so a CUDA graph can replay them); launches on one stream use it one after another. Under
torch.compile's tracing each call gets a fresh zeroed buffer instead.
"""
import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import get_proxy_mode
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

_COUNTERS: dict = {}


def counters(device: torch.device, n: int) -> torch.Tensor:
    """A zeroed int32 buffer of at least n counters for `device` (allocated once, then reused)."""
    device = torch.device(device)
    if device.type != "meta" and _fake_tracing():
        # torch.compile tracing (fake tensors): a fresh zeroed buffer in the graph, not the cached real one
        return torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        alloc = torch.empty if device.type == "meta" else torch.zeros  # meta holds no data: no fill to record
        buf = alloc(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def _fake_tracing() -> bool:
    """Whether ops run on fake tensors (torch.compile's or export's tracing), not merely under some dispatch mode
    (a profiler's or a launch counter's sees the real buffer)."""
    return get_proxy_mode() is not None or any(isinstance(m, FakeTensorMode) for m in _get_current_dispatch_mode_stack())


@triton.jit
def last_to_arrive(counter_ptr, arrivals, pid, FENCE: tl.constexpr):
    """Make this program's stores visible GPU-wide (FENCE: on a GPU; the interpreter runs programs one by one), then
    count its arrival: True for the program that completes `arrivals`, which also resets the counter."""
    if FENCE:
        tl.inline_asm_elementwise("fence.acq_rel.gpu;\nmov.u32 $0, $1;", "=r,r", [pid], dtype=tl.int32,
                                  is_pure=False, pack=1)
    tl.debug_barrier()  # every thread's stores and fence before the one thread that counts
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == arrivals - 1
    tl.store(counter_ptr, 0, mask=last)
    return last
