"""Spherical merges with per-model weights (mergekit ``nuslerp`` and ``multislerp``), per tensor.

Both optionally take a ``base``: then the task vectors θᵢ − θ_base are merged and added back.
Kernels follow the engine's calling convention ``kernel(tensors, base, *, …)`` with ``weights``
one value per model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import _out, _vectors, _weights, _work, weight_total

__all__ = ["multislerp", "nuslerp", "slerp_vectors"]


def _add_base(merged: Tensor, base: Tensor | None, like: Tensor) -> Tensor:
    return _out(merged if base is None else _work(base) + merged, like)


def slerp_vectors(v0: Tensor, v1: Tensor, t: float, *, eps: float = 1e-8) -> Tensor:
    """SLERP of each pair of vectors along the last dimension (…, d) × (…, d) → (…, d).

    Directions are normalised with their norms clamped at 1e-7; where sin Ω < ``eps`` (parallel or
    antiparallel) the pair is interpolated linearly — mergekit's ``nuslerp``."""
    u0 = v0 / v0.norm(dim=-1, keepdim=True).clamp_min(1e-7)
    u1 = v1 / v1.norm(dim=-1, keepdim=True).clamp_min(1e-7)
    omega = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0).arccos()
    sin = omega.sin()
    colinear = sin.abs() < eps
    safe = torch.where(colinear, torch.ones_like(sin), sin)
    curved = (torch.sin((1 - t) * omega) * v0 + torch.sin(t * omega) * v1) / safe
    return torch.where(colinear, torch.lerp(v0, v1, t), curved)


def nuslerp(
    tensors: Sequence[Tensor],
    base: Tensor | None,
    *,
    weights: Sequence[float],
    row_wise: bool = False,
    flatten: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """SLERP of two models (or of their task vectors when ``base`` is given) at t = w₁/(w₀ + w₁);
    t = 0.5 when the weights sum to (nearly) zero, as in mergekit.

    ``flatten`` (default) interpolates the whole tensor as one vector; otherwise every slice along
    the last dimension (each row of a matrix) separately, or with ``row_wise`` every slice along
    the first dimension (each column of a matrix) — mergekit's ``nuslerp_flatten`` and
    ``nuslerp_row_wise``, which do exactly this."""
    if len(tensors) != 2:
        raise ValueError(f"nuslerp merges exactly two models (plus an optional base), not {len(tensors)}")
    w0, w1 = _weights(weights, 2)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    v0, v1 = _vectors(tensors, base)
    if flatten:
        merged = slerp_vectors(v0.flatten(), v1.flatten(), t, eps=eps).reshape(v0.shape)
    elif row_wise:
        merged = slerp_vectors(v0.transpose(0, -1), v1.transpose(0, -1), t, eps=eps).transpose(0, -1)
    else:
        merged = slerp_vectors(v0, v1, t, eps=eps)
    return _add_base(merged, base, tensors[0] if base is None else base)


def multislerp(
    tensors: Sequence[Tensor],
    base: Tensor | None,
    *,
    weights: Sequence[float],
    normalize_weights: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Barycentre of several models on the hypersphere (mergekit ``multislerp``).

    The direction is the weighted mean of the unit vectors uᵢ = vᵢ/(‖vᵢ‖ + ε), projected back onto
    the sphere; the norm is the weighted mean norm Σ wᵢ‖vᵢ‖. (mergekit also takes a tangent-space
    step from that direction, but the weighted tangent vectors sum to zero at the weighted mean, so
    the step is the identity — the tests check this against its code.) Weights are normalised to
    sum 1 with ``normalize_weights``. When the weighted unit vectors cancel, two models fall back to
    the weighted sum w₀v₀ + w₁v₁ and more models are an error.
    """
    like = tensors[0] if base is None else base
    if len(tensors) == 1:
        return _out(tensors[0], like)
    w = torch.tensor(_weights(weights, len(tensors)), dtype=torch.float64)
    if normalize_weights:
        weight_total(w.tolist(), "multislerp: the weights")
        w = w / float(w.sum())
    vs = _vectors(tensors, base)
    flat = torch.stack([v.flatten() for v in vs])  # (models, entries)
    w = w.to(flat.dtype)
    norms = flat.norm(dim=1)
    mean = (w[:, None] * flat / (norms[:, None] + eps)).sum(0)
    length = float(mean.norm())
    if length < eps:
        if len(tensors) != 2:
            raise ValueError(
                "multislerp: the weighted directions cancel out (antipodal models with balancing weights); "
                "change the weights"
            )
        merged = w[0] * vs[0] + w[1] * vs[1]
    else:
        merged = (mean * ((w * norms).sum() / length)).reshape(vs[0].shape)
    return _add_base(merged, base, like)
