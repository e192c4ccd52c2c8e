"""mergekit's ``passthrough``: one model's tensors, unchanged or scaled. (Stacking the layers of
several models — mergekit's ``slices`` — is planned by :mod:`mlspec.checkpoints.slices`, which
says which source tensor each output tensor copies or merges.)"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .kernels import _out, _work

__all__ = ["passthrough"]


def passthrough(tensors: Sequence[Tensor], *, scale: Sequence[float] | float = 1.0) -> Tensor:
    """The one model's tensor times ``scale`` (computed in float32 at least); bit-exact for 1."""
    if len(tensors) != 1:
        raise ValueError(f"passthrough takes exactly one model (not {len(tensors)})")
    factor = scale[0] if isinstance(scale, Sequence) else scale
    return tensors[0] if factor == 1.0 else _out(_work(tensors[0]) * factor, tensors[0])
