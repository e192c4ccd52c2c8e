"""RAM — Reinforced Agent Merging (Yuan et al. 2026, arXiv 2601.13572), per tensor, as mergekit's
``ram.py`` implements it.

RL fine-tuning changes few parameters, and different agents change different ones; plain averaging
dilutes an update that only one agent made. RAM splits the entries of the task vectors by how
many models changed them (|τᵢ| > ``epsilon``): an entry changed by one model keeps that model's
update in full ("unique"), an entry changed by several gets the mean of their updates ("shared"),
and an entry no model changed keeps the base. RAM+ (``ramplus_tl``, tensor-local) also scales
model i's unique updates by λᵢ = 1 + r·clamp(ρᵢ, 0, α), where ρᵢ is the ratio of its shared to
its unique changed entries in this tensor.

Kernels follow the engine's calling convention ``kernel(tensors, base, *, …)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import _deltas, _out, _work

__all__ = ["ram", "ramplus_tl"]


def _changes(tensors: Sequence[Tensor], base: Tensor | None, epsilon: float, name: str) -> tuple[Tensor, Tensor, Tensor]:
    """The flattened task vectors (models × entries), which entries each model changed, and how
    many models changed each entry."""
    if base is None:
        raise ValueError(f"{name} needs a base model: it merges task vectors θᵢ − θ_base")
    if epsilon < 0.0:
        raise ValueError(f"{name}: epsilon must be ≥ 0 (not {epsilon!r})")
    deltas = torch.stack(_deltas(base, tensors)).flatten(1)
    changed = deltas.abs() > epsilon
    return deltas, changed, changed.sum(dim=0)


def _merge(base: Tensor, deltas: Tensor, changed: Tensor, count: Tensor, unique_scale: Tensor | None) -> Tensor:
    """base + Σᵢ τᵢ·[τᵢ changed]·(sᵢ where unique, 1/count where shared), sᵢ = ``unique_scale``."""
    shared_factor = 1.0 / count.clamp_min(1).to(deltas.dtype)
    if unique_scale is None:
        factor = torch.where(count == 1, 1.0, shared_factor)
    else:
        factor = torch.where(count == 1, unique_scale.to(deltas.dtype)[:, None], shared_factor)
    merged = (deltas * changed * factor).sum(dim=0).reshape(base.shape)
    return _out(_work(base) + merged, base)


def ram(tensors: Sequence[Tensor], base: Tensor, *, epsilon: float = 1e-5) -> Tensor:
    """RAM: unique updates kept whole, shared updates averaged over the models that made them."""
    return _merge(base, *_changes(tensors, base, epsilon, "ram"), None)


def ramplus_tl(
    tensors: Sequence[Tensor], base: Tensor, *, r: float = 0.1, alpha: float = 0.2, epsilon: float = 1e-5
) -> Tensor:
    """RAM+ (tensor-local): as :func:`ram`, with model i's unique updates scaled by
    λᵢ = 1 + r·clamp(ρᵢ, 0, α), ρᵢ = (its changed entries that are shared) / max(its unique ones, ε).
    (A model without unique entries has no use for its λᵢ.)"""
    if alpha < 0.0:
        raise ValueError(f"ramplus_tl: alpha must be ≥ 0 (not {alpha!r})")
    deltas, changed, count = _changes(tensors, base, epsilon, "ramplus_tl")
    shared = (changed & (count > 1)).sum(dim=1).to(torch.float64)
    unique = (changed & (count == 1)).sum(dim=1).to(torch.float64)
    rho = shared / unique.clamp_min(max(epsilon, 1.0))
    return _merge(base, deltas, changed, count, 1.0 + r * rho.clamp(0.0, alpha))
