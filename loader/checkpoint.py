"""Load a gpt-oss checkpoint directory in either layout into canonical-named tensors on a device.

Layouts:
- Hugging Face: `config.json` (model_type gpt_oss, mxfp4 quantization) with `model.safetensors` or
  sharded `model-*.safetensors` + `model.safetensors.index.json`, and usually `tokenizer.json`;
- original: `config.json` (the official ModelConfig keys) + `model.safetensors`, either the directory
  itself or its `original/` subfolder.

Every header is read and checked against the config (names, shapes, dtypes, truncation) before any
tensor data is read, so a bad checkpoint fails whole with the file and tensor at fault and nothing
is returned half-loaded. MXFP4 blocks and scales stay packed uint8.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..model.config import GptOssConfig
from .names import expected_tensors, hf_names, is_mxfp4
from .progress import Progress
from .safetensors_io import CheckpointError, SafetensorsFile
from .sharding import TensorSlice, read_slice

HF, ORIGINAL = "hf", "original"
INDEX = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    config: GptOssConfig
    tensors: dict = field(repr=False)  # canonical name -> tensor
    layout: str
    path: Path
    tokenizer_path: Path | None
    bytes_read: int = 0  # tensor bytes read from the files: the whole checkpoint, or this rank's slices


def detect_layout(path: Path) -> tuple[str, Path]:
    """(layout, directory holding config.json and the weights)."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory (pass the checkpoint directory, not a file)")
    cfg = path / "config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None
        if isinstance(d, dict) and (d.get("model_type") == "gpt_oss" or "num_local_experts" in d):
            return HF, path
        if isinstance(d, dict) and "num_experts" in d:
            return ORIGINAL, path
        raise CheckpointError(f"{cfg}: unknown layout: neither a Hugging Face gpt_oss config (model_type 'gpt_oss') "
                              "nor an original one (num_experts, experts_per_token, ...)")
    if (path / "original" / "config.json").is_file():
        return ORIGINAL, path / "original"
    raise CheckpointError(f"{path}: unknown layout: no config.json here or in original/ (expected a Hugging Face "
                          "gpt-oss directory or the original layout: config.json + model.safetensors)")


def _open_files(layout: str, root: Path) -> dict[str, SafetensorsFile]:
    """Tensor name on disk -> its opened file, checking the HF index against the files it names."""
    index = root / INDEX
    if layout == HF and index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index (needs a 'weight_map' object): {e}") from None
        files = {}
        for fname in sorted(set(weight_map.values())):
            if not (root / fname).is_file():
                raise CheckpointError(f"{index}: names shard {fname!r}, which is missing from {root}")
            files[fname] = SafetensorsFile(root / fname)
        by_name = {}
        for fname, f in files.items():
            for name in f.infos:
                if weight_map.get(name) != fname:
                    raise CheckpointError(f"{f.path}: holds tensor {name!r}, which {index.name} "
                                          f"{'does not list' if name not in weight_map else 'puts in ' + weight_map[name]}")
                by_name[name] = f
        for name, fname in weight_map.items():
            if name not in by_name:
                raise CheckpointError(f"{root / fname}: missing tensor {name!r} (listed in {index.name})")
        return by_name
    single = root / "model.safetensors"
    if not single.is_file():
        shards = sorted(root.glob("*.safetensors"))
        hint = f"; found {[s.name for s in shards]} but no {INDEX}" if shards else ""
        raise CheckpointError(f"{root}: no model.safetensors{hint}")
    f = SafetensorsFile(single)
    return {name: f for name in f.infos}


def _plan(config: GptOssConfig, layout: str, on_disk: dict[str, SafetensorsFile]) -> dict[str, list]:
    """Canonical name -> [(file, disk name)] after checking names, shapes and dtypes against the config."""
    expected = expected_tensors(config)
    sources = hf_names(config) if layout == HF else {n: [(n, s[0])] for n, (s, _) in expected.items()}
    used, plan = set(), {}
    cfg_note = (f"config.json says {config.num_hidden_layers} layers, {config.num_experts} experts, hidden "
                f"{config.hidden_size}, intermediate {config.intermediate_size}, {config.num_attention_heads}/"
                f"{config.num_key_value_heads} heads of {config.head_dim}, vocab {config.vocab_size}")
    for name, (shape, dtype) in expected.items():
        parts = []
        for disk_name, rows in sources[name]:
            f = on_disk.get(disk_name)
            if f is None:
                raise CheckpointError(f"missing tensor {disk_name!r}: no file of the checkpoint holds it ({cfg_note})")
            info = f.infos[disk_name]
            want = (rows,) + tuple(shape[1:])
            if info.shape != want:
                raise CheckpointError(f"{f.path}: tensor {disk_name!r} has shape {list(info.shape)}, expected "
                                      f"{list(want)}: config and weights disagree ({cfg_note})")
            if is_mxfp4(name) and info.dtype != torch.uint8:
                raise CheckpointError(f"{f.path}: tensor {disk_name!r} is {info.dtype}, expected uint8 (packed MXFP4)")
            if not is_mxfp4(name) and not info.dtype.is_floating_point:
                raise CheckpointError(f"{f.path}: tensor {disk_name!r} is {info.dtype}, expected a float dtype (bf16)")
            parts.append((f, disk_name))
            used.add(disk_name)
        plan[name] = parts
    extra = sorted(set(on_disk) - used)
    if extra:
        hint = ""
        if any("experts.gate_up_proj" in n and not n.endswith(("_blocks", "_scales", "_bias")) for n in extra):
            hint = " (dense dequantized experts are not supported: use the MXFP4 checkpoint)"
        raise CheckpointError(f"{on_disk[extra[0]].path}: unexpected tensor {extra[0]!r}"
                              f"{f' and {len(extra) - 1} more' if len(extra) > 1 else ''}{hint} ({cfg_note})")
    return plan


def load(path, *, device="cpu", dtype: torch.dtype | None = None, progress: bool | None = None,
         select: Callable[[GptOssConfig], dict[str, TensorSlice]] | None = None) -> Checkpoint:
    """Open, validate and load the checkpoint at `path` (a directory, either layout).

    Float tensors are cast to `dtype` (None: as stored); MXFP4 blocks/scales stay uint8. Each tensor is
    read from the memory map straight to `device`, one at a time, so host memory never holds a second
    copy of the weights (on the CPU with the stored dtype, tensors stay views of the mapped file).
    `select(config)` -> {canonical name: TensorSlice} loads only those slices of the tensors it names (one
    rank's share of a parallel model): every header is still checked whole, but no other byte is read.
    A progress bar shows on stderr for checkpoints of 1 GB or more (`progress` forces it on or off).
    """
    path = Path(path)
    layout, root = detect_layout(path)
    try:
        config = GptOssConfig.from_json(root / "config.json")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    plan = _plan(config, layout, _open_files(layout, root))
    slices = select(config) if select is not None else {}
    expected = expected_tensors(config)

    def nbytes(name):
        shape, dtype_on_disk = expected[name]
        sl = slices.get(name)
        return 0 if sl is not None and sl.zeros else math.prod(sl.shape(shape) if sl else shape) * dtype_on_disk.itemsize

    bar = Progress(sum(nbytes(name) for name in plan), f"loading {path.name}", enabled=progress)
    tensors, read = {}, 0
    for name, parts in plan.items():
        t, n = read_slice([f.get(disk_name) for f, disk_name in parts], slices.get(name), expected[name][0],
                          device=device, dtype=dtype)
        tensors[name] = t
        read += n
        bar.advance(n)
    # The released repos keep tokenizer.json beside config.json, and above original/.
    candidates = [root / "tokenizer.json"] + ([root.parent / "tokenizer.json"] if root != path else [])
    tok = next((p for p in candidates if p.is_file()), None)
    return Checkpoint(config, tensors, layout, path, tok, read)
