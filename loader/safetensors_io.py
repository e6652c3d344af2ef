"""safetensors files, read through a memory map and written as a stream.

Reading validates the header against the file before any tensor is touched, so a truncated or
corrupt file fails with its name and the tensor at fault. Tensors come back as zero-copy views of
a private (copy-on-write) mapping: nothing is read from disk until used, and moving a tensor to
the GPU reads it once. Writing takes the header up front and the tensors one at a time, so a
checkpoint larger than host memory can be written.
"""
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and tensor at fault."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple
    start: int  # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """An opened, validated safetensors file: `infos` by name, `get(name)` a zero-copy tensor."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise CheckpointError(f"{self.path}: truncated: {size} bytes, too short for a safetensors header")
                (n,) = struct.unpack("<Q", raw)
                if n > min(size - 8, _MAX_HEADER):
                    raise CheckpointError(f"{self.path}: corrupt or truncated: header length {n} does not fit "
                                          f"in a file of {size} bytes")
                header_bytes = f.read(n)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read: {e.strerror or e}") from None
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header: not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.infos: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.infos[name] = self._parse_entry(name, entry, base, size)
        self._mmap = None

    def _parse_entry(self, name, entry, base, size) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: corrupt header entry {entry!r}") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise CheckpointError(f"{where}: corrupt header: negative dimension in shape {list(shape)}")
            numel *= d
        nbytes = numel * dtype.itemsize
        if end - start != nbytes or start < 0:
            raise CheckpointError(f"{where}: corrupt header: offsets [{start}, {end}) hold {end - start} bytes, "
                                  f"but {entry['dtype']} {list(shape)} needs {nbytes}")
        if base + end > size:
            raise CheckpointError(f"{where}: truncated file: the tensor ends at byte {base + end} "
                                  f"but the file has {size} bytes")
        return TensorInfo(dtype, shape, base + start, base + end)

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        if info.end == info.start:
            return torch.empty(info.shape, dtype=info.dtype)
        if self._mmap is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: a private writable mapping, so torch.frombuffer needs no copy and warns of nothing.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = (info.end - info.start) // info.dtype.itemsize
        if info.start % info.dtype.itemsize:
            raw = torch.frombuffer(self._mmap, dtype=torch.uint8, count=info.end - info.start, offset=info.start)
            return raw.clone().view(info.dtype).view(info.shape)
        return torch.frombuffer(self._mmap, dtype=info.dtype, count=count, offset=info.start).view(info.shape)


def write_safetensors(path, entries: Iterable[tuple[str, torch.dtype, tuple]], produce: Callable[[str], torch.Tensor],
                      metadata: dict | None = None) -> int:
    """Write the tensors named in `entries` (name, dtype, shape), producing each with `produce(name)` in order.

    Returns the bytes of tensor data written. The file is written under a temporary name and renamed at the end,
    so an interrupted write leaves no half-written checkpoint behind.
    """
    entries = list(entries)
    header, offset = {}, 0
    for name, dtype, shape in entries:
        nbytes = dtype.itemsize
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, dtype, shape in entries:
                t = produce(name)
                if t.dtype != dtype or tuple(t.shape) != tuple(shape):
                    raise ValueError(f"{path}: produced {name!r} as {t.dtype} {list(t.shape)}, "
                                     f"declared {dtype} {list(shape)}")
                f.write(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return offset
