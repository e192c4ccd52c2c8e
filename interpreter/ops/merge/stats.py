"""Merge statistics recorded on every merge step: sparsity, sign conflicts, distance moved.

Statistics are accumulated tensor by tensor (:meth:`MergeStats.add`), so a streaming merger
records them with the same code as an in-memory one. They land in ``Model.info["merge"]``.

- ``sparsity``: fraction of entries of the merged task vector (merged − base) that are exactly
  zero; without a base, of the merged tensor itself.
- ``sign_conflict``: fraction of entries where the inputs' task vectors have both a positive and a
  negative entry (TIES' interference measure); needs a base.
- ``distance_from_base``: ‖merged − base‖₂; ``distance_to_inputs``: ‖merged − θᵢ‖₂ per input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .sparsify import row_blocks

__all__ = ["MergeStats", "sign_conflicts"]

#: Entries per row block: its float64 temporaries (0.5 MB each) stay in a core's cache.
_BLOCK = 1 << 16


def sign_conflicts(deltas: Sequence[Tensor], base: Tensor | float = 0.0) -> Tensor:
    """Boolean mask of the entries where some task vector is > 0 and another < 0. With a ``base``,
    ``deltas`` are the models' tensors and their task vectors' signs are comparisons with it: the
    same mask, without forming a single difference (NaN is neither above nor below)."""
    above = below = None
    for d in deltas:
        up, down = d > base, d < base
        above = up if above is None else above.logical_or_(up)
        below = down if below is None else below.logical_or_(down)
    if above is None or below is None:
        raise ValueError("sign_conflicts needs at least one task vector")
    return above.logical_and_(below)


class MergeStats:
    """Per-tensor and whole-model merge statistics, accumulated one tensor at a time."""

    def __init__(self, method: str, params: dict[str, Any]):
        self.method = method
        self.params = params
        self.tensors: dict[str, dict[str, Any]] = {}
        self._numel = 0
        self._zeros = 0
        self._conflicts = 0
        self._sq_base = 0.0
        self._sq_inputs: list[float] = []
        self._has_base = False

    @torch.no_grad()
    def add(self, name: str, merged: Tensor, tensors: Sequence[Tensor], base: Tensor | None) -> None:
        self.record(name, self.measure(merged, tensors, base))

    @staticmethod
    @torch.no_grad()
    def measure(merged: Tensor, tensors: Sequence[Tensor], base: Tensor | None) -> dict[str, Any]:
        """One tensor's statistics (a pure function, so a streaming merger's worker threads can
        measure while the writer writes). Row block by row block in float64: no float64 copy of a
        whole tensor, and the same sums whatever dtype the tensors are stored in."""
        zeros = conflicts = 0
        sq_base = 0.0
        sq_inputs = [0.0] * len(tensors)
        for rows in row_blocks(merged.shape, _BLOCK):
            m = merged[rows].double()
            inputs = [t[rows].double() for t in tensors]
            b = base[rows].double() if base is not None else None
            moved = m - b if b is not None else m
            zeros += int((moved == 0).sum())
            if base is not None:  # signs of the task vectors: comparisons in the stored dtypes (exact)
                conflicts += int(sign_conflicts([t[rows] for t in tensors], base[rows]).sum())
                sq_base += float(moved.square().sum())
            for i, t in enumerate(inputs):
                sq_inputs[i] += float((m - t).square().sum())
        n = merged.numel()
        row: dict[str, Any] = {"numel": n, "sparsity": zeros / max(1, n), "zeros": zeros,
                               "sq_inputs": sq_inputs}
        if base is not None:
            row.update(sign_conflict=conflicts / max(1, n), distance_from_base=math.sqrt(sq_base),
                       conflicts=conflicts, sq_base=sq_base)
        row["distance_to_inputs"] = [math.sqrt(v) for v in sq_inputs]
        return row

    def record(self, name: str, measured: dict[str, Any]) -> None:
        """Add one tensor's :meth:`measure` to the model's totals."""
        row = dict(measured)
        zeros, sq_inputs = row.pop("zeros"), row.pop("sq_inputs")
        conflicts, sq_base = row.pop("conflicts", None), row.pop("sq_base", None)
        if conflicts is not None:
            self._conflicts += conflicts
            self._sq_base += sq_base
        if not self._sq_inputs:
            self._sq_inputs = [0.0] * len(sq_inputs)
        self._sq_inputs = [a + b for a, b in zip(self._sq_inputs, sq_inputs)]
        self._numel += row["numel"]
        self._zeros += zeros
        self.tensors[name] = row
        self._has_base = conflicts is not None

    def summary(self) -> dict[str, Any]:
        """JSON for ``Model.info["merge"]``."""
        total: dict[str, Any] = {
            "numel": self._numel,
            "sparsity": self._zeros / max(1, self._numel),
            "distance_to_inputs": [math.sqrt(s) for s in self._sq_inputs],
        }
        if self._has_base:
            total["sign_conflict"] = self._conflicts / max(1, self._numel)
            total["distance_from_base"] = math.sqrt(self._sq_base)
        return {"method": self.method, "params": self.params, "total": total, "tensors": self.tensors}
