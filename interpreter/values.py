"""The values that flow between steps, and how each is stored in the cache.

Every value splits into *tensors* (a flat ``name -> torch.Tensor`` dict, stored as safetensors) and
*meta* (JSON). That one rule lets the cache store any kind without pickling, so a cache directory
shared by a stranger can never execute code.

- :class:`Model` — an architecture description (``arch``: a JSON dict naming a builder in
  ``mlspec.ops.models.builders`` and its arguments) plus a state dict, held in memory.
- :class:`CheckpointRef` — a model whose weights stay on disk (a loaded checkpoint, or the output of
  a streamed merge): its path and the fingerprint of its files, so the cache stores a few hundred
  bytes instead of the weights. Operators that need weights in memory refuse it by name.
- :class:`Dataset` — named tensors (``x_train``, ``y_train``, ``x_test``, ``y_test`` for
  classification data; generated tasks add their own) plus JSON meta.
- :class:`Record` — plain JSON results (metrics, curves, surfaces, statistics); what the report and
  ``results.json`` read.

torch is imported lazily so that ``mlspec check`` stays torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["Model", "CheckpointRef", "Dataset", "Record", "Value", "to_parts", "from_parts", "json_safe", "first_non_finite"]


@dataclass
class Model:
    arch: dict[str, Any]
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)  # e.g. training history, merge statistics

    def with_state(self, state: dict[str, torch.Tensor], **info: Any) -> Model:
        return Model(arch=dict(self.arch), state=state, info=info)


@dataclass
class CheckpointRef:
    path: str  # an HF directory, a .safetensors file or a state dict, resolved
    format: str  # "hf" | "safetensors" | "state_dict" (see mlspec.checkpoints.layout)
    fingerprint: str  # size, mtime and a hash of the files' first and last MiB
    info: dict[str, Any] = field(default_factory=dict)  # what load() found; a streamed merge's statistics

    @property
    def state(self) -> dict[str, torch.Tensor]:
        raise self._on_disk()

    @property
    def arch(self) -> dict[str, Any]:
        raise self._on_disk()

    def _on_disk(self) -> Exception:
        """Every operator that needs a model's weights in memory refuses a checkpoint through here."""
        from .errors import StepError

        return StepError(
            f"this operator needs the weights in memory, but {self.path!r} is a checkpoint on disk; "
            "checkpoints are merged tensor by tensor (average, ties, …), exported, or scored with perplexity(...)"
        )

    def existing(self, what: str) -> Path:
        """The path, or a StepError when the files have gone since the reference was made."""
        from .errors import StepError

        path = Path(self.path)
        if not path.exists():
            raise StepError(f"checkpoint {self.path!r} of {what} no longer exists "
                            "(clear the cache entry or run --force)")
        return path


@dataclass
class Dataset:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def split(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of the ``train``, ``val`` (when the data has one) or ``test`` split."""
        return self.tensors[f"x_{which}"], self.tensors[f"y_{which}"]


@dataclass
class Record:
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


Value = Model | CheckpointRef | Dataset | Record


def to_parts(value: Value) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if isinstance(value, Model):
        return value.state, {"type": "Model", "arch": value.arch, "info": value.info}
    if isinstance(value, CheckpointRef):
        return {}, {"type": "CheckpointRef", "path": value.path, "format": value.format,
                    "fingerprint": value.fingerprint, "info": value.info}
    if isinstance(value, Dataset):
        return value.tensors, {"type": "Dataset", "meta": value.meta}
    if isinstance(value, Record):
        return {}, {"type": "Record", "data": value.data}
    raise TypeError(f"cannot store a {type(value).__name__} in the cache")


def from_parts(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Value:
    kind = meta["type"]
    if kind == "Model":
        return Model(arch=meta["arch"], state=tensors, info=meta.get("info", {}))
    if kind == "CheckpointRef":
        return CheckpointRef(path=meta["path"], format=meta["format"], fingerprint=meta["fingerprint"],
                             info=meta.get("info", {}))
    if kind == "Dataset":
        return Dataset(tensors=tensors, meta=meta.get("meta", {}))
    if kind == "Record":
        return Record(data=meta["data"])
    raise ValueError(f"unknown cached value type {kind!r}")


def json_safe(value: Any) -> Any:
    """Plain JSON: NaN and infinities (a diverged loss, an empty mean) become ``null``, which every
    JSON reader accepts; dict keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def first_non_finite(value: Value) -> str | None:
    """Where a step's result stops being a number — ``"loss"``, ``"curve[3]"``, ``"weight
    'layers.0.weight'"`` — or None. A result that is not finite is an error, never a silent ``null``."""
    if isinstance(value, Model):
        import torch

        for name, tensor in value.state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"weight {name!r}"
        return None
    if isinstance(value, Record):
        stack: list[tuple[str, Any]] = [("", value.data)]
        while stack:
            where, item = stack.pop()
            if isinstance(item, float) and not math.isfinite(item):
                return where or "the result"
            if isinstance(item, dict):
                stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(item.items()))
            elif isinstance(item, (list, tuple)):
                stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(item))))
    return None
