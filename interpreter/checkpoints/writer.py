"""Write a checkpoint tensor by tensor: sharded safetensors plus the Hugging Face index.

``safetensors.torch.save_file`` needs a whole shard in memory at once, which would make the peak
memory of a streamed merge one shard (5 GB by default) instead of a few tensors. Every tensor's name,
shape and dtype is known before the first one is computed (the merge validates all inputs first), so
the writer lays out each shard's header up front and then appends each tensor's bytes as it arrives.
The format is the documented safetensors one: an 8-byte little-endian header length, the JSON header
(padded with spaces to 8 bytes), then the raw little-endian data. Files are read back with
``safetensors.safe_open`` like any other.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

import torch

from .source import SAFETENSORS_DTYPES

__all__ = ["PlannedTensor", "ShardedWriter", "INDEX_NAME", "SINGLE_NAME"]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


def _shards(plan: list[PlannedTensor], shard_bytes: int) -> list[list[PlannedTensor]]:
    """Greedy packing in plan order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in plan:
        if shards[-1] and size + tensor.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _header(shard: list[PlannedTensor], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}  # same bytes every time
    offset = 0
    for t in shard:
        entries[t.name] = {
            "dtype": _CODES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class ShardedWriter:
    """Writes the planned tensors, in plan order, into ``directory``.

    One shard is written as ``model.safetensors``; several as ``model-0000i-of-0000n.safetensors``
    with ``model.safetensors.index.json``. Use as a context manager: leaving it early (an error)
    removes the partial files.
    """

    def __init__(
        self,
        directory: Path,
        plan: list[PlannedTensor],
        *,
        shard_bytes: int,
        metadata: dict[str, str] | None = None,
    ):
        names = [t.name for t in plan]
        if len(set(names)) != len(names):
            raise ValueError("a tensor is planned twice")
        self.directory = directory
        self._shards = _shards(plan, shard_bytes)
        n = len(self._shards)
        self.files = (
            [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self._metadata = {"format": "pt", **(metadata or {})}
        self._queue = [(i, t) for i, shard in enumerate(self._shards) for t in shard]
        self._next = 0
        self._shard = -1
        self._fh: IO[bytes] | None = None

    def __enter__(self) -> ShardedWriter:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if kind is not None:
            for name in [*self.files, INDEX_NAME]:
                (self.directory / name).unlink(missing_ok=True)
        elif self._next != len(self._queue):
            missing = self._queue[self._next][1].name
            raise RuntimeError(f"the writer closed before tensor {missing!r} was written")
        elif len(self.files) > 1:
            self._write_index()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor (converted to its planned dtype)."""
        if self._next >= len(self._queue):
            raise RuntimeError(f"tensor {name!r} was not planned")
        shard, planned = self._queue[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape:
            raise RuntimeError(
                f"expected tensor {planned.name!r} {list(planned.shape)}, got {name!r} {list(tensor.shape)}"
            )
        if shard != self._shard:
            if self._fh is not None:
                self._fh.close()
            self._fh = (self.directory / self.files[shard]).open("wb")
            self._fh.write(_header(self._shards[shard], self._metadata))
            self._shard = shard
        data = tensor.detach().to(device="cpu", dtype=planned.dtype).contiguous()
        if data.numel():
            assert self._fh is not None
            self._fh.write(memoryview(data.view(torch.uint8).reshape(-1).numpy()))
        self._next += 1

    def _write_index(self) -> None:
        weight_map = {t.name: self.files[i] for i, shard in enumerate(self._shards) for t in shard}
        total = sum(t.nbytes for shard in self._shards for t in shard)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
