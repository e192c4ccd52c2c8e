"""Where a checkpoint's tensors live on disk, and a cheap fingerprint of them (torch-free).

A checkpoint path is one of:

- a Hugging Face model directory: ``config.json`` plus ``model.safetensors``, or shards listed by
  ``model.safetensors.index.json`` (``pytorch_model.bin`` and its index are read the same way);
- a single ``.safetensors`` file;
- a PyTorch state dict (``.pt``, ``.pth``, ``.bin``), later read with ``torch.load(weights_only=True)``.

Anything else is refused with a message saying what was expected. Nothing here imports torch, so
``mlspec check`` can validate ``load("...")`` calls and compute cache keys.

The fingerprint is what makes a step that reads a checkpoint re-run when the checkpoint changes.
Hashing a multi-GB file on every run is too slow, so it is, per file: the size, the modification time
in nanoseconds, and a SHA-256 of the first and last MiB (the safetensors header, which names every
tensor with its shape, dtype and offsets, is in the first MiB). A rewrite that keeps size, mtime and
both ends identical is the only change it misses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MlspecError
from ..values import CheckpointRef

__all__ = [
    "CheckpointError",
    "Layout",
    "locate",
    "fingerprint",
    "parse_size",
    "reference",
    "TORCH_SUFFIXES",
    "SAFETENSORS_SUFFIX",
]

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
#: Files of an HF directory that are not weights but belong with them (config, tokenizer, …).
_WEIGHT_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_EDGE = 1 << 20  # bytes hashed at each end of a file
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
}


class CheckpointError(MlspecError):
    """A checkpoint cannot be read or does not fit the others (raised before any tensor is merged)."""


@dataclass(frozen=True)
class Layout:
    """A checkpoint's files: ``weight_map`` sends each tensor name to its file (None: read the file's
    own table of contents, for single files); ``config`` is the HF ``config.json`` when there is one."""

    path: Path
    kind: str  # "hf" | "weights" (a directory of safetensors weights without config.json) | "safetensors" | "torch"
    files: tuple[Path, ...]
    weight_map: dict[str, Path] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path | None:
        return self.path if self.kind in ("hf", "weights") else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {str(path)!r}: {exc}") from None


def _from_index(directory: Path, index_file: Path) -> tuple[tuple[Path, ...], dict[str, Path]]:
    index = _read_json(index_file)
    mapping = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(mapping, dict) or not mapping:
        raise CheckpointError(f"{str(index_file)!r} has no 'weight_map' naming the shard of each tensor")
    weight_map: dict[str, Path] = {}
    for name, shard in mapping.items():
        shard_path = (directory / str(shard)).resolve()
        if shard_path.parent != directory.resolve():
            raise CheckpointError(f"{str(index_file)!r} points outside its directory (not {shard!r})")
        weight_map[name] = shard_path
    files = tuple(sorted(set(weight_map.values())))
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{str(index_file)!r} lists shards that do not exist: {', '.join(missing)}")
    return files, weight_map


def _locate_directory(directory: Path) -> Layout:
    """A Hugging Face model directory, or a directory of safetensors weights without a config (what a
    streamed merge of single-file checkpoints writes)."""
    config_file = directory / "config.json"
    has_config = config_file.is_file()
    config = _read_json(config_file) if has_config else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{str(config_file)!r} is not a JSON object")
    kind = "hf" if has_config else "weights"
    for name in _WEIGHT_NAMES:
        candidate = directory / name
        if not candidate.is_file():
            continue
        if name.endswith(".index.json"):
            files, weight_map = _from_index(directory, candidate)
            return Layout(directory, kind, files, weight_map, config)
        return Layout(directory, kind, (candidate,), None, config)
    if not has_config:
        raise CheckpointError(
            f"{str(directory)!r} is not a Hugging Face model directory: it has no config.json "
            "(expected config.json with model.safetensors or model.safetensors.index.json)"
        )
    raise CheckpointError(
        f"{str(directory)!r} has a config.json but no weights: expected one of {', '.join(_WEIGHT_NAMES)}"
    )


def locate(path: str | os.PathLike[str]) -> Layout:
    """The layout of the checkpoint at ``path``, or a :class:`CheckpointError` saying why not."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {str(path)!r}")
    if p.is_dir():
        return _locate_directory(p)
    if p.suffix == SAFETENSORS_SUFFIX:
        return Layout(p, "safetensors", (p,))
    if p.suffix in TORCH_SUFFIXES:
        return Layout(p, "torch", (p,))
    raise CheckpointError(
        f"cannot load {str(path)!r}: expected a Hugging Face model directory, a .safetensors file, "
        f"or a PyTorch state dict ({', '.join(TORCH_SUFFIXES)})"
    )


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        digest.update(fh.read(_EDGE))
        if stat.st_size > 2 * _EDGE:
            fh.seek(stat.st_size - _EDGE)
        digest.update(fh.read(_EDGE))
    return f"{stat.st_size}:{stat.st_mtime_ns}:{digest.hexdigest()[:32]}"


def fingerprint(layout: Layout) -> str:
    """A short digest that changes when any weight file (or the HF config) changes; see the module
    docstring for what it reads."""
    parts = [layout.kind]
    files = list(layout.files)
    if layout.kind == "hf":
        files.append(layout.path / "config.json")
    for file in files:
        parts.append(f"{file.name}={_file_fingerprint(file)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:40]


def parse_size(text: str | int) -> int:
    """Bytes in ``"5GB"``, ``"500MiB"`` or ``123`` (the shard-size limit of written checkpoints)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if match is None or match.group(2).upper() not in _UNITS:
            raise ValueError(f"a size is a number with an optional unit such as 5GB or 500MiB (not {text!r})")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive (not {text!r})")
    return size


def reference(path: str | os.PathLike[str], **info: Any) -> CheckpointRef:
    """A value for the checkpoint at ``path``: its weights stay on disk, its fingerprint keys the
    caches of the steps that read it. Raises :class:`CheckpointError`."""
    layout = locate(path)
    return CheckpointRef(path=str(layout.path), format=layout.kind, fingerprint=fingerprint(layout), info=info)
