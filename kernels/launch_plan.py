"""Launch plans: every kernel launch a call makes, recorded without a GPU, for the static checks and models.

The convention every kernel in kernels/ follows, so that a new kernel joins the compile checks
(tests/kernels/test_compile_targets.py) and the static performance model (model/static_model.py) by itself:

1. Launch through `wrap_triton(kernel)[grid](*args, **kwargs)` from `kernels._interpreter`, as every launcher
   does: constexprs and `num_warps` / `num_stages` as keyword arguments, the grid a tuple of ints or, for an
   autotuned kernel, a function of the config's meta-parameters. Under `record()` that call records a
   `TritonLaunch` instead of running: the kernel, its grid, every argument by parameter name, and (autotuned)
   the configs the autotuner may pick. The launcher's own code decides grid, tiles and warps, so the plan the
   static tools see is, by construction, the one the runtime launches.
2. Run the call on meta tensors (`torch.device("meta")`) under `record()`: the real sizes (a 120B decode step
   included) cost no memory and need no GPU. Torch ops that would launch a CUDA kernel (cuBLAS GEMMs,
   copies, fills) are recorded as `TorchLaunch`es, so a step's launch count and bytes are complete.
3. Declare what a launch moves beside the kernel: `@traffic(kernel)` registers `fn(launch, constexprs, env) ->
   Traffic` (bytes read and written, weights streamed, main-loop trips over the grid); `env` holds what the
   arguments cannot tell, e.g. env["context"], the positions each sequence attends over. Without one, a launch
   reads each distinct tensor argument once.
   A launcher that sizes its grid by the GPU asks `multiprocessors(device)`: under `record()` it answers for the
   modelled GPU, so the recorded plan is the one that GPU would run.
4. A kernel that neither the decode step nor prefill launches declares example calls in its module's
   `static_examples()` (a function that calls the op on meta tensors), so that it is compiled and checked too.

`specialize(launch, config)` gives what Triton's launcher would compile for the recorded arguments: the
signature, the constexprs (ints equal to 1 and None arguments included) and the `tt.divisibility = 16`
attributes of pointers aligned to 16 bytes and of integers divisible by 16. Meta tensors have no address:
a tensor is taken as aligned when its storage offset is a multiple of 16 bytes, as PyTorch's CUDA allocator
aligns every allocation to 512 bytes.
"""
import contextlib
import dataclasses
import inspect
import threading
from typing import Callable

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

_state = threading.local()


@dataclasses.dataclass
class TritonLaunch:
    """One recorded launch of a Triton kernel.

    kernel: the @triton.jit function (an InterpretedFunction under TRITON_INTERPRET=1); name: its name;
    grid: (x, y, z) for a fixed config, or a function of the meta-parameters (autotuned kernels);
    args: every runtime argument and constexpr by parameter name; options: num_warps / num_stages as passed;
    configs: the autotuner's triton.Config list after its early_config_prune (None if not tuned).
    """
    kernel: object
    grid: tuple | Callable
    args: dict
    options: dict
    configs: list | None = None

    @property
    def name(self) -> str:
        return self.kernel.__name__

    def candidates(self) -> list[tuple[dict, dict, tuple]]:
        """Each config the launch may run: (constexprs, options, grid)."""
        constexprs = {k: v for k, v in self.args.items() if self._is_constexpr(k)}
        if self.configs is None:
            return [(constexprs, dict(self.options), _grid3(self.grid))]
        out = []
        for cfg in self.configs:
            meta = {**self.args, **cfg.kwargs}
            grid = self.grid(meta) if callable(self.grid) else self.grid
            options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
            out.append(({**constexprs, **cfg.kwargs}, options, _grid3(grid)))
        return out

    def _is_constexpr(self, name: str) -> bool:
        return _is_constexpr(inspect.signature(_python_fn(self.kernel)).parameters[name])


@dataclasses.dataclass
class TorchLaunch:
    """A torch op that launches `count` CUDA kernels; `bytes` read + written (inputs and outputs once)."""
    op: str
    count: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What a launch moves through DRAM: bytes read and written; the weights it streams (MXFP4 or bf16) and the
    main loop's trips summed over the grid (0: no loop, or unknown)."""
    read: float
    written: float
    weights: float = 0.0
    loop_trips: float = 0.0

    @property
    def total(self) -> float:
        return self.read + self.written


_TRAFFIC: dict[str, Callable] = {}


def traffic(kernel):
    """Decorator: `@traffic(_my_kernel) def _(launch: TritonLaunch, constexprs: dict, env: dict) -> Traffic`."""
    def register(fn):
        _TRAFFIC[_fn(kernel).__name__] = fn
        return fn
    return register


def launch_traffic(launch: TritonLaunch, constexprs: dict, env: dict) -> Traffic:
    fn = _TRAFFIC.get(launch.name)
    if fn is not None:
        return fn(launch, constexprs, env)
    tensors = {id(v): v for v in launch.args.values() if isinstance(v, torch.Tensor)}
    return Traffic(read=sum(tensor_bytes(t) for t in tensors.values()), written=0)


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def multiprocessors(device: torch.device) -> int:
    """The SM count a launcher sizes its grid by: the device's own on a GPU; under record() the modelled GPU's."""
    if recording() is not None:
        return _state.sms
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # CPU (the interpreter): a few programs


def recording() -> list | None:
    """The list launches are recorded into, or None outside `record()`."""
    return getattr(_state, "launches", None)


@contextlib.contextmanager
def record(sms: int = 132):
    """Record (and do not run) every Triton launch made through `wrap_triton`, and every torch op that would
    launch a kernel, as for a GPU with `sms` SMs (132: an H100 SXM); yields the list, in launch order."""
    launches: list = []
    previous = recording(), getattr(_state, "sms", None)
    _state.launches, _state.sms = launches, sms
    try:
        with _TorchLaunchRecorder(launches):
            yield launches
    finally:
        _state.launches, _state.sms = previous


def record_triton(kernel, grid, args: tuple, kwargs: dict) -> None:
    """Called by `wrap_triton` under `record()`."""
    fn = _fn(kernel)
    parameters = inspect.signature(_python_fn(fn)).parameters
    bound = dict(zip(parameters, args))
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    bound.update(kwargs)
    for name, p in parameters.items():  # defaults of parameters the launcher left out
        if name not in bound and p.default is not inspect.Parameter.empty:
            bound[name] = p.default
    configs = None
    if isinstance(kernel, triton.runtime.Autotuner):
        prune = kernel.early_config_prune
        configs = list(prune(kernel.configs, bound) if prune else kernel.configs)
    recording().append(TritonLaunch(fn, grid, bound, options, configs))


# --- what Triton's launcher specialises -------------------------------------------------------------------------

def specialize(launch: TritonLaunch, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for triton.compiler.ASTSource, as the launcher builds them at runtime."""
    fn = launch.kernel
    no_spec = set(getattr(fn, "do_not_specialize", ()))
    no_align = set(getattr(fn, "do_not_specialize_on_alignment", ()))
    signature, consts, attrs = {}, {}, {}
    for i, (name, p) in enumerate(inspect.signature(_python_fn(fn)).parameters.items()):
        value = constexprs[name] if name in constexprs else launch.args.get(name)
        if _is_constexpr(p):
            signature[name], consts[name] = "constexpr", value
            continue
        kind, divisible = _specialize_value(value, specialize=name not in no_spec and i not in no_spec,
                                            align=name not in no_align and i not in no_align)
        signature[name] = kind
        if kind == "constexpr":
            consts[name] = value
        elif divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, consts, attrs


def _specialize_value(value, *, specialize: bool, align: bool) -> tuple[str, bool]:
    if value is None:
        return "constexpr", False
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if specialize and value == 1:
            return "constexpr", False
        kind = "i32" if -2 ** 31 <= value < 2 ** 31 else ("u64" if value >= 2 ** 63 else "i64")
        return kind, specialize and align and value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    if isinstance(value, torch.Tensor):
        aligned = (value.storage_offset() * value.element_size()) % 16 == 0
        return "*" + _TYPE_NAMES[value.dtype], specialize and align and aligned
    raise TypeError(f"cannot specialise a launch argument of type {type(value).__name__}")


_TYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
               torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
               torch.bool: "i1"}


def _fn(kernel):
    """The @triton.jit function under autotuner / heuristics wrappers."""
    from triton.runtime.interpreter import InterpretedFunction
    while not isinstance(kernel, (triton.JITFunction, InterpretedFunction)):
        kernel = kernel.fn
    return kernel


def _python_fn(kernel):
    return _fn(kernel).fn


def _is_constexpr(p: inspect.Parameter) -> bool:
    return p.annotation is triton.language.constexpr or p.annotation in ("tl.constexpr", "triton.language.constexpr")


def _grid3(grid) -> tuple[int, int, int]:
    grid = tuple(int(g) for g in grid)
    return grid + (1,) * (3 - len(grid))


# --- torch ops that launch kernels ------------------------------------------------------------------------------

# Ops that allocate or describe memory without a kernel.
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh",
              "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "detach", "alias", "set_"}
# Ops that read only a gathered part of their first input.
_GATHERS = {"embedding", "index_select", "gather"}


class _TorchLaunchRecorder(TorchDispatchMode):
    """Records the torch ops of a meta-tensor run that would launch CUDA kernels; our own ops (namespace
    gpt_oss_triton) run their Python body under the mode, so their Triton launches and torch fills are seen."""

    def __init__(self, launches: list):
        super().__init__()
        self.launches = launches

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "gpt_oss_triton":
            from torch._library.custom_ops import _maybe_get_opdef
            opdef = _maybe_get_opdef(func._schema.name)
            with self:
                return opdef._init_fn(*args, **kwargs)
        out = func(*args, **kwargs)
        name = func.__name__.split(".")[0]
        views = all(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns) \
            and len(func._schema.returns) > 0
        if name in _NO_KERNEL or views or name.startswith("sym_") or func.namespace != "aten":
            return out
        tensors_in = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        tensors_out = [o for o in torch.utils._pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        written = sum(tensor_bytes(t) for t in tensors_out)
        if name in _GATHERS:
            read = written + sum(tensor_bytes(t) for t in tensors_in[1:])
        else:
            read = sum(tensor_bytes(t) for t in tensors_in)
        # PyTorch's addmm copies the bias into the output first unless cuBLASLt fuses it (it does for > 1 row):
        # aten/src/ATen/native/cuda/Blas.cpp, addmm_out_cuda_impl (`mat1_sizes[0] > 1` for the Lt path).
        count = 2 if name == "addmm" and args[1].shape[0] == 1 else 1
        self.launches.append(TorchLaunch(str(func), count, read + written))
        return out
