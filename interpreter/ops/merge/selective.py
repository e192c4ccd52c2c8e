"""Two-model merges that decide, entry by entry, how much of one model to take over the base:
mergekit's ``nearswap`` and ``arcee_fusion``.

Kernels follow the engine's calling convention ``kernel(tensors, base, *, …)``: ``tensors`` holds
the one other model's tensor, ``base`` the base model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import _out, _work
from .sparsify import kth_smallest

__all__ = ["arcee_fusion", "fusion_importance", "lower_quantile", "nearswap"]


def _pair(name: str, tensors: Sequence[Tensor], base: Tensor | None) -> tuple[Tensor, Tensor]:
    if base is None or len(tensors) != 1:
        raise ValueError(f"{name} merges exactly two models: a base and one other (not {len(tensors)} besides the base)")
    return _work(base), _work(tensors[0])


def nearswap(tensors: Sequence[Tensor], base: Tensor, *, t: float) -> Tensor:
    """Take the other model's value where it lies near the base's: per entry
    w = clamp(t / max(|θ_base − θ|, 1e-6), 0, 1) and θ_out = w·θ + (1 − w)·θ_base. Entries closer
    than ``t`` are swapped in completely, farther ones by t/|difference|."""
    if t < 0.0:
        raise ValueError(f"nearswap: t must be ≥ 0 (not {t!r})")
    b, x = _pair("nearswap", tensors, base)
    weight = (t / (b - x).abs().clamp_min(1e-6)).clamp(0.0, 1.0)
    return _out(torch.lerp(b, x, weight), base)


def lower_quantile(values: Tensor, q: float) -> float:
    """The q-quantile as the sorted entry at index ⌊q·(n − 1)⌋ (no interpolation), computed by
    selection over every entry."""
    n = values.numel()
    return kth_smallest(values, int(q * (n - 1)) + 1)


def fusion_importance(base: Tensor, x: Tensor, *, eps: float = 1e-8) -> Tensor:
    """|θ − θ_base| times the KL divergence KL(softmax(θ) ‖ softmax(θ_base)) of each row (the last
    dimension; a 1-D tensor is one row), with ``eps`` added to both distributions."""
    p = torch.softmax(x, dim=-1) + eps
    q = torch.softmax(base, dim=-1) + eps
    kl = (p * (p / q).log()).sum(dim=-1, keepdim=True)
    return (x - base).abs() * kl


def arcee_fusion(tensors: Sequence[Tensor], base: Tensor) -> Tensor:
    """Arcee Fusion: keep the other model's change only where its importance
    (:func:`fusion_importance`) reaches the dynamic threshold median + 1.5·IQR of the tensor's
    importances; elsewhere keep the base.

    The quartiles are exact, over every entry. mergekit samples 10⁶ entries (with an unseeded
    ``randperm``) when a tensor has more, so its threshold — and its merge — of big tensors is
    random; for tensors of at most 10⁶ entries both agree.
    """
    b, x = _pair("arcee_fusion", tensors, base)
    importance = fusion_importance(b, x)
    q1, median, q3 = (lower_quantile(importance, q) for q in (0.25, 0.5, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    return _out(torch.where(importance >= threshold, x, b), base)
