"""Whether kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1), and what differs there from the GPU:
tl.dot on bf16 operands gives wrong results (kernels upcast dot operands to fp32 there), every program costs
milliseconds of Python (launchers give each program more work there), torch.library.wrap_triton hands
back the bare kernel (see `wrap_triton`), and fp32 -> bf16 casts truncate instead of rounding to nearest
even as the GPU does (`round_bf16_like_the_gpu` fixes that when interpreting)."""
import os

import numpy as np
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


def _fp32_to_bf16_rtne(values: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits (uint16), rounded to nearest even as the GPU's cvt.rn.bf16.f32 and torch do."""
    bits = np.ascontiguousarray(values).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return np.where(is_nan, ((bits >> 16) | 0x40).astype(np.uint16), rounded).reshape(np.shape(values))


def round_bf16_like_the_gpu() -> None:
    """Make the interpreter's fp32 -> bf16 conversion round to nearest even (it truncates): a truncating cast
    biases every bf16 store toward zero, which made the interpreted model measurably less accurate than the
    same kernels on a GPU. Other conversions, and an explicit round-toward-zero, are left to Triton."""
    from triton.runtime import interpreter

    convert = getattr(interpreter, "_convert_float", None)
    if convert is None or getattr(convert, "_rounds_bf16", False):
        return
    import triton.language as tl

    def convert_float(values, src, dst, rounding_mode):
        if src == tl.float32 and dst == tl.bfloat16 and rounding_mode != interpreter._ir.ROUNDING_MODE.RTZ:
            return _fp32_to_bf16_rtne(values)
        return convert(values, src, dst, rounding_mode)

    convert_float._rounds_bf16 = True
    interpreter._convert_float = convert_float


if interpreting():
    round_bf16_like_the_gpu()
