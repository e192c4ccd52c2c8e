"""Lazy access to a checkpoint's tensors.

:class:`Checkpoint` lists names, shapes and dtypes from the files' headers without reading any data,
and reads one tensor (or a range of its rows) at a time on request. Safetensors data is read with
``pread`` straight into the tensor's own memory: one copy from the page cache, and nothing of the
file stays mapped into the process, so a merge's resident memory is the tensors it holds, not the
pages of every input it has touched (a memory-mapped read keeps those resident until the file is
closed). The header is still validated by ``safe_open``. PyTorch state dicts are read through
``torch.load(weights_only=True, mmap=True)`` so that a spec can never make mlspec execute code and a
large ``.bin`` is not read into memory whole.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from . import memory
from .layout import SAFETENSORS_SUFFIX, CheckpointError, Layout, locate
from .slices import layer_index

__all__ = ["Checkpoint", "TensorInfo", "layer_index", "SAFETENSORS_DTYPES"]

#: safetensors dtype codes and the torch dtypes they denote (both directions are needed).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a PyTorch file, memory-mapped when the format allows."""
    try:
        try:
            obj: Any = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # the legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"cannot load {str(path)!r} as a PyTorch state dict with weights_only=True "
            f"(only tensors and plain containers are allowed): {first}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a training checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{str(path)!r} does not hold a state dict (a dict of name -> tensor)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} is not a flat state dict: entries {', '.join(bad[:5])} are not tensors"
        )
    return obj


def _read_into(fd: int, view: memoryview, offset: int, file: Path) -> None:
    """Fill ``view`` from ``fd`` at ``offset`` (pread may return short reads)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise CheckpointError(f"{str(file)!r} ends before the data its header promises (truncated?)")
        done += n


class _SafetensorsFile:
    """A safetensors file's header (name -> dtype, shape, byte range) and an open descriptor."""

    def __init__(self, file: Path):
        self.file = file
        self.fd = os.open(file, os.O_RDONLY)
        try:
            (length,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
            header = json.loads(os.pread(self.fd, length, 8))
        except (struct.error, ValueError) as exc:
            os.close(self.fd)
            raise CheckpointError(f"{str(file)!r} is not a valid safetensors file: {exc}") from None
        self.start = 8 + length
        self.ranges: dict[str, tuple[int, int]] = {
            name: (int(entry["data_offsets"][0]), int(entry["data_offsets"][1]))
            for name, entry in header.items()
            if name != "__metadata__"
        }

    def read(self, name: str, info: TensorInfo, rows: tuple[int, int] | None = None) -> torch.Tensor:
        begin, end = self.ranges[name]
        shape = info.shape
        if rows is not None:
            row_bytes = (end - begin) // shape[0] if shape and shape[0] else 0
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        out = memory.empty(shape, info.dtype)
        if end > begin:
            _read_into(self.fd, memoryview(out.view(-1).view(torch.uint8).numpy()), self.start + begin, self.file)
        return out  # safetensors is little-endian, like every platform torch builds for

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Checkpoint:
    """A checkpoint opened for lazy reading. Use as a context manager or call :meth:`close`."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self._handles: dict[Path, _SafetensorsFile] = {}
        self._state: dict[str, torch.Tensor] = {}
        self._where: dict[str, Path] = {}
        self._infos: dict[str, TensorInfo] = {}
        for file in layout.files:
            if file.suffix == SAFETENSORS_SUFFIX:
                self._index_safetensors(file)
            else:
                state = _load_state_dict(file)
                self._state.update(state)
                for name, t in state.items():
                    self._where[name] = file
                    self._infos[name] = TensorInfo(tuple(t.shape), t.dtype)
        if layout.weight_map is not None:
            listed = set(layout.weight_map)
            absent = sorted(listed - set(self._infos))
            if absent:
                raise CheckpointError(
                    f"{str(layout.path)!r}: the index lists tensors its shards do not hold: "
                    f"{', '.join(absent[:5])}"
                )

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Checkpoint:
        return cls(locate(path))

    def _index_safetensors(self, file: Path) -> None:
        try:
            handle = safe_open(str(file), framework="pt", device="cpu")
            for name in handle.keys():
                view = handle.get_slice(name)
                code = view.get_dtype()
                if code not in SAFETENSORS_DTYPES:
                    raise CheckpointError(f"{str(file)!r}: tensor {name!r} has unsupported dtype {code!r}")
                self._infos[name] = TensorInfo(tuple(view.get_shape()), SAFETENSORS_DTYPES[code])
                self._where[name] = file
        except SafetensorError as exc:
            raise CheckpointError(f"{str(file)!r} is not a valid safetensors file: {exc}") from None
        del handle  # its header is valid; the data is read with pread (see the module's docstring)
        self._handles[file] = _SafetensorsFile(file)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._state.clear()

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            handle.close()

    @property
    def path(self) -> Path:
        return self.layout.path

    @property
    def names(self) -> list[str]:
        """Tensor names in file order (the order they are merged and written in)."""
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    @property
    def config(self) -> dict[str, Any]:
        return self.layout.config

    @property
    def tied_embeddings(self) -> bool:
        """Whether the output head shares the input embedding (so the head may be absent from disk)."""
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def num_layers(self) -> int:
        """Transformer blocks: from the config when it says, else one more than the highest index."""
        configured = self.config.get("num_hidden_layers")
        if isinstance(configured, int) and configured > 0:
            return configured
        indices = [i for i in map(layer_index, self._infos) if i is not None]
        return max(indices) + 1 if indices else 1

    def tensor(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Read one tensor, or its rows ``start:stop`` (a fresh CPU tensor for safetensors; a
        memory-mapped view for .pt/.bin)."""
        if name not in self._infos:
            raise CheckpointError(f"{str(self.path)!r} has no tensor {name!r}")
        file = self._where[name]
        if file in self._handles:
            return self._handles[file].read(name, self._infos[name], rows)
        whole = self._state[name]
        return whole if rows is None else whole[rows[0] : rows[1]]
