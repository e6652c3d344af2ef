"""Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), and what differs there from the GPU:
tl.dot on bf16 operands gives wrong results (kernels upcast dot operands to fp32 there), every program costs
milliseconds of Python (launchers give each program more work there), and torch.library.wrap_triton hands
back the bare kernel (see `wrap_triton`)."""
import os

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.fx.experimental.proxy_tensor import get_proxy_mode


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def wrap_triton(kernel):
    """torch.library.wrap_triton, also when interpreting; under `launch_plan.record()` a recorder instead (nothing
    runs: see kernels/launch_plan.py). When interpreting it returns the bare kernel, which torch.compile's
    tracing would run on FakeTensors (no data); here a launch on fake tensors does nothing instead, as the
    traced form of wrap_triton does on a GPU: the op's outputs are the tensors its Python code allocates.
    So CPU tests can check that torch.compile (backend='eager') traces our ops without a graph break; a backend
    that traces into the op's body (aot_eager, inductor) would record it without its kernels, so that raises."""
    from .launch_plan import recording
    if recording() is not None:
        return _Recorder(kernel)
    if not interpreting():
        return torch.library.wrap_triton(kernel)
    return _FakeAwareKernel(kernel)


class _FakeAwareKernel:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if any(is_fake(t) for t in tensors):
                if get_proxy_mode() is not None:  # AOT tracing would record the op without its kernel
                    raise RuntimeError("a Triton kernel in the interpreter (TRITON_INTERPRET=1) cannot be traced "
                                       "into a compiled graph: use torch.compile(backend='eager') there")
                return None
            return launch(*args, **kwargs)

        return run


class _Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        from .launch_plan import record_triton
        return lambda *args, **kwargs: record_triton(self.kernel, grid, args, dict(kwargs))
