"""`GptOss`: the public model class, loading a checkpoint directory or a preset onto a backend."""
import os
import re
from pathlib import Path

import torch

from .config import PRESETS, GptOssConfig
from .nano import WEIGHTS_DIR as NANO_WEIGHTS
from .reference import Transformer

# Names whose trained weights ship in the package (they win over a preset of the same name).
SHIPPED = {"nano": NANO_WEIGHTS}

# Float tensors kept in fp32 whatever the model dtype (the spec computes norms in fp32; sinks are logits).
_FP32_SUFFIXES = ("norm.scale", "attn.sinks")


def available_backends() -> dict[str, type]:
    from .triton_model import TritonGptOss

    return {"torch": GptOss, "triton": TritonGptOss}


class OptionError(ValueError):
    """A from_pretrained option that cannot work here. The message names options as `{name=value}`: str() shows
    them as Python keywords (backend='torch'), `cli()` as the command line's flags (--backend torch)."""

    _OPTION = re.compile(r"\{(\w+)=([^}]*)\}")

    def __init__(self, template: str):
        self.template = template
        super().__init__(self._OPTION.sub(lambda m: f"{m[1]}={m[2]!r}", template))

    def cli(self) -> str:
        return self._OPTION.sub(lambda m: f"--{m[1].replace('_', '-')} {m[2]}", self.template)


def check_device(device) -> torch.device:
    """`device` as a torch.device, or an OptionError saying why it cannot be used here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise OptionError(f"{{device={device}}} is not a device torch knows (cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = (f"this torch ({torch.__version__}) is built without CUDA" if torch.version.cuda is None
                   else "no CUDA GPU is visible")
            raise OptionError(f"{{device={device}}} is not available: {why}; use {{device=cpu}}")
        if device.index is not None and device.index >= count:
            raise OptionError(f"{{device={device}}} is not available: {count} CUDA device(s) visible")
    return device


def resolve_backend(backend: str | None, device) -> tuple[str, torch.device]:
    """None picks the GPU and 'triton' when there is one, else the CPU and 'torch' (the reference)."""
    backends = available_backends()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(device)
    if backend is None:
        backend = "triton" if device.type == "cuda" and "triton" in backends else "torch"
    if backend not in backends:
        raise OptionError(f"{{backend={backend}}} is not available; choose from {sorted(backends)}")
    if backend == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise OptionError("{backend=triton} on the CPU runs only in Triton's interpreter: set TRITON_INTERPRET=1 "
                          "before starting Python (slow; for tests), or use {backend=torch}")
    return backend, device


class GptOss(Transformer):
    """The gpt-oss network (reference backend). `model(tokens [B, T])` -> logits [B, T, vocab].

    `config` holds the shapes; `tokenizer` is the checkpoint's tokenizer.json (None when it has none),
    or the built-in byte-level tokenizer for presets.
    """

    tokenizer = None
    backend = "torch"

    @classmethod
    def from_pretrained(cls, path_or_preset, *, backend: str | None = None, dtype: torch.dtype = torch.bfloat16,
                        device=None, seed: int = 0, tensor_parallel: int = 1) -> "GptOss":
        """Load a checkpoint directory (Hugging Face or original layout), the weights shipped with the package
        (`nano`: gpt-oss-nano, trained by model/nano/train.py), or build a preset with seeded random weights
        (`tiny`, `gpt-oss-20b`, `gpt-oss-120b`); a directory of that name wins over either.

        tensor_parallel=N (inside an initialised process group of N ranks, every rank calling this): the
        rank's share of the model (model/parallel/plan.py): its attention heads, its experts and its slice of
        the vocabulary, read alone from the checkpoint. Every rank then calls the model with the same inputs
        and gets the whole logits; device defaults to the rank's GPU (LOCAL_RANK), else the CPU.
        """
        from .parallel import ShardPlan, join, local_device
        from .tokenizer import Tokenizer

        parallel = join(tensor_parallel)
        if device is None and parallel.enabled:
            device = local_device()
        backend, device = resolve_backend(backend, device)
        if parallel.enabled:
            from .parallel.group import check_backend
            check_backend(device)

        def plan(config):
            return ShardPlan(config, parallel.rank, parallel.world_size) if parallel.enabled else None

        model_cls = available_backends()[backend]
        path = Path(path_or_preset)
        if not path.exists() and str(path_or_preset) in SHIPPED:
            path = SHIPPED[str(path_or_preset)]
            if not (path / "config.json").is_file():
                raise ValueError(f"{path_or_preset}: its shipped weights are missing from {path}")
        if not path.exists():
            if str(path_or_preset) not in PRESETS:
                raise ValueError(f"{path_or_preset}: no such directory, and not a preset ({', '.join(PRESETS)})")
            config = GptOssConfig.preset(str(path_or_preset))
            model = model_cls._assign(config, _synthetic_state(config, seed, device, plan(config)), dtype, device,
                                      plan(config), parallel)
            model.tokenizer = Tokenizer.byte_level()
            return model
        from ..loader import load

        ckpt = load(path, device=device, dtype=dtype,
                    select=(lambda config: plan(config).slices()) if parallel.enabled else None)
        model = model_cls._assign(ckpt.config, ckpt.tensors, dtype, device, plan(ckpt.config), parallel)
        model.tokenizer = Tokenizer.from_file(ckpt.tokenizer_path) if ckpt.tokenizer_path else None
        return model

    @classmethod
    def _assign(cls, config: GptOssConfig, tensors: dict, dtype: torch.dtype, device, plan=None,
                parallel=None) -> "GptOss":
        """Build the module on the meta device (reshaped to a rank's share when there is a plan) and adopt
        `tensors` (canonical names) without copying them again."""
        model = cls(config, dtype=dtype, device="meta")
        if plan is not None:
            from .parallel.modules import shard_model
            shard_model(model, plan, parallel)
        state = {}
        for name, t in tensors.items():
            if t.is_floating_point():
                t = t.to(torch.float32 if name.endswith(_FP32_SUFFIXES) else dtype)
            state[name] = t.to(device)
        model.load_state_dict(state, strict=True, assign=True)
        model.rope_inv_freq = model.rope_inv_freq.to(device)
        return model.eval().requires_grad_(False)

    @property
    def tensor_parallel(self) -> int:
        """Ranks the model is split over (1: this process holds all of it)."""
        return self.parallel.world_size


def _synthetic_state(config: GptOssConfig, seed: int, device: torch.device, plan=None) -> dict:
    """A preset's seeded weights (with a plan: this rank's slices of them, each drawn whole and cut, so every
    layout of ranks holds the same model)."""
    from ..loader import expected_tensors, synthetic_tensor

    # Small models are drawn on the CPU so a preset has the same weights everywhere; big ones on the device.
    small = sum(torch.Size(s).numel() for s, _ in expected_tensors(config).values()) < 1 << 30
    where = "cpu" if small else device
    slices = plan.slices() if plan is not None else {}
    out = {}
    for name in expected_tensors(config):
        t = synthetic_tensor(config, name, seed, where)
        out[name] = slices[name].take(t) if name in slices else t
    return out
