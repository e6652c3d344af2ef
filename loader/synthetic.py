"""Synthetic gpt-oss checkpoints: seeded random weights in the real file layouts, so that tests and
benchmarks need no download.

Each tensor is drawn from its own generator, seeded from (seed, name), so both layouts hold the same
weights and tensors can be made one at a time (a 120b checkpoint never sits in memory whole).
Scales keep activations sane: linear weights ~ N(0, 1/fan_in); MXFP4 experts are random codes with
E8M0 scales chosen so their rows have about the same spread, large enough for mlp1 to reach the
swiglu clamp now and then.
"""
import json
import math
import os
import secrets
import shutil
import zlib
from pathlib import Path

import torch

from ..model.config import GptOssConfig
from .checkpoint import HF, INDEX, ORIGINAL
from .names import expected_tensors, hf_names
from .progress import Progress
from .safetensors_io import write_safetensors

_E2M1_RMS = math.sqrt(sum(v * v for v in (0, .5, 1, 1.5, 2, 3, 4, 6)) / 8)  # of uniformly random codes


def _generator(seed: int, name: str, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) % (1 << 63))
    return g


def synthetic_tensor(config: GptOssConfig, name: str, seed: int, device="cpu") -> torch.Tensor:
    """The synthetic value of canonical tensor `name`, in its on-disk shape and dtype."""
    shape, dtype = expected_tensors(config)[name]
    g = _generator(seed, name, device)

    def normal(std, mean=0.0):
        return (torch.randn(shape, generator=g, device=device) * std + mean).to(dtype)

    leaf = name.split(".", 2)[-1] if name.startswith("block.") else name
    if leaf.endswith(".blocks"):
        return torch.randint(0, 256, shape, generator=g, device=device, dtype=torch.uint8)
    if leaf.endswith(".scales"):
        fan_in = shape[-1] * 32
        gain = 2.0 if "mlp1" in leaf else 1.0  # mlp1 pre-activations of a few units reach the clamp at 7
        base = 127 + round(math.log2(gain / (math.sqrt(fan_in) * _E2M1_RMS)))
        return torch.randint(base - 1, base + 2, shape, generator=g, device=device, dtype=torch.uint8)
    if leaf.endswith("norm.scale") or leaf == "norm.scale":
        return normal(0.1, 1.0)
    if leaf == "attn.sinks":
        return normal(1.0)
    if leaf.endswith("bias"):
        return normal(0.5 if leaf == "mlp.gate.bias" else 0.02)
    if leaf == "embedding.weight":
        return normal(1.0)
    fan_in = shape[-1]
    return normal((0.5 if leaf in ("attn.out.weight",) else 1.0) / math.sqrt(fan_in))


def make_checkpoint(out, config: GptOssConfig, *, layout: str = HF, seed: int = 0, shard_bytes: int = 5 << 30,
                    progress: bool | None = None, tokenizer=None, tensors: dict | None = None) -> Path:
    """Write a synthetic checkpoint of `config` to directory `out` in `layout` ('hf' or 'original'), with
    `tokenizer` (a tokenizer.json path to copy, or a Tokenizer to save; None: none) beside the weights.
    `tensors` (canonical name -> tensor in its on-disk shape and dtype, every one of them) writes those
    weights instead of seeded random ones (a trained model's).

    `out` must not exist (or be an empty directory). Everything is written to a directory beside it and
    renamed into place at the end, so `out` holds a whole checkpoint or nothing, whatever interrupts."""
    if layout not in (HF, ORIGINAL):
        raise ValueError(f"layout must be {HF!r} or {ORIGINAL!r}, got {layout!r}")
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out} already exists: pick a new directory, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    if tensors is not None:
        _check_tensors(config, tensors)
    partial = out.parent / f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    partial.mkdir()
    try:
        _write(partial, config, layout, seed, shard_bytes, Progress(_nbytes(config), f"writing {out.name}", progress),
               tensors)
        if isinstance(tokenizer, (str, Path)):
            shutil.copyfile(tokenizer, partial / "tokenizer.json")
        elif tokenizer is not None:
            tokenizer.save(partial / "tokenizer.json")
        partial.replace(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out


def _check_tensors(config: GptOssConfig, tensors: dict) -> None:
    expected = expected_tensors(config)
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"tensors do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise ValueError(f"tensor {name}: expected {tuple(shape)} {dtype}, got {tuple(t.shape)} {t.dtype}")


def _nbytes(config: GptOssConfig) -> int:
    return sum(math.prod(s) * d.itemsize for s, d in expected_tensors(config).values())


def _write(out: Path, config: GptOssConfig, layout: str, seed: int, shard_bytes: int, bar: Progress,
           tensors: dict | None = None) -> None:
    """The checkpoint's files into directory `out`."""
    expected = expected_tensors(config)

    def make(name):
        t = synthetic_tensor(config, name, seed) if tensors is None else tensors[name].contiguous()
        bar.advance(t.numel() * t.element_size())
        return t

    if layout == ORIGINAL:
        (out / "config.json").write_text(json.dumps(config.to_original_dict(), indent=2) + "\n")
        write_safetensors(out / "model.safetensors", [(n, d, s) for n, (s, d) in expected.items()], make)
        return

    # Hugging Face: q/k/v are row slices of the fused qkv; shards of at most shard_bytes.
    entries, source = [], {}
    for name, parts in hf_names(config).items():
        shape, dtype = expected[name]
        row0 = 0
        for disk_name, rows in parts:
            entries.append((disk_name, dtype, (rows,) + tuple(shape[1:])))
            source[disk_name] = (name, row0, rows)
            row0 += rows
    shards, size = [[]], 0
    for e in entries:
        nbytes = math.prod(e[2]) * e[1].itemsize
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += nbytes
    cached = {}

    def produce(disk_name):
        name, row0, rows = source[disk_name]
        if name not in cached:
            cached.clear()
            cached[name] = make(name)
        return cached[name][row0:row0 + rows]

    weight_map = {}
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out / fname, shard, produce)
        weight_map.update({e[0]: fname for e in shard})
    if len(shards) > 1:
        total = sum(math.prod(s) * d.itemsize for _, d, s in entries)
        (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (out / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
