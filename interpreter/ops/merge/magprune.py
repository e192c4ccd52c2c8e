"""DELLA (Deep et al. 2024, arXiv 2406.11617): MagPrune's magnitude-ranked random drop, then
TIES' elect-and-fuse (``della``) or a plain weighted sum (``della_linear``).

MagPrune keeps each entry of a task vector with a probability that grows with its magnitude:
within each row (a 1-D tensor is one row; otherwise dimension 1 is ranked, as mergekit does) the
entries are ranked by |δ| and their keep probabilities spread linearly over
[density − ε, density + ε], the smallest magnitude getting density − ε. The survivors are
rescaled: by 1/pᵢ, their own keep probability (``inverse``, the paper's 1/(1 − pᵢ) with pᵢ the
drop probability; the expectation of every entry is unchanged), so that the tensor's L1 norm is
unchanged (``l1``, mergekit's ``rescale: true``), or not at all.

Kernels follow the engine's calling convention ``kernel(tensors, base, *, …)``; per-model
parameters (``weights``, ``density``, ``epsilon``) are lists with one value per model. The random
draws come from ``generator`` only: one ``torch.rand`` of each task vector's shape, model by model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .kernels import Election, WeightsAt, _combine, _deltas, l1_factor, per_model

__all__ = ["della", "della_linear", "keep_probabilities", "magprune"]

Rescale = Literal["inverse", "l1", "none"]


def _check(density: float, epsilon: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"della: density must lie in [0, 1] (not {density!r})")
    if epsilon < 0.0:
        raise ValueError(f"della: epsilon must be ≥ 0 (not {epsilon!r})")
    if 0.0 < density < 1.0 and not (density - epsilon > 0.0 and density + epsilon < 1.0):
        raise ValueError(
            f"della: density ± epsilon must lie inside (0, 1), but {density!r} ± {epsilon!r} spans "
            f"[{density - epsilon:.6g}, {density + epsilon:.6g}]; choose epsilon < {min(density, 1 - density):.6g}"
        )


def keep_probabilities(x: Tensor, density: float, epsilon: float) -> Tensor:
    """Each entry's keep probability, density − ε + 2ε·rank/(n − 1) with rank 0 the smallest |x| of
    its row (equal magnitudes ranked by position). A row of one entry keeps it with ``density``."""
    _check(density, epsilon)
    rows = x if x.dim() >= 2 else x.reshape(1, -1)
    n = rows.shape[1]
    order = rows.abs().argsort(dim=1, stable=True)
    ranks = order.argsort(dim=1).to(rows.dtype)
    spread = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return ((density - epsilon) + 2 * epsilon * spread).reshape(x.shape)


def magprune(
    x: Tensor, density: float, epsilon: float, *, rescale: Rescale = "inverse", generator: torch.Generator
) -> Tensor:
    """MagPrune one task vector: random drop with magnitude-ranked keep probabilities, then rescale.
    ``density`` 1 keeps everything, 0 nothing (whatever ``epsilon``)."""
    _check(density, epsilon)
    if density == 1.0:
        return x
    if density == 0.0:
        return torch.zeros_like(x)
    probs = keep_probabilities(x, density, epsilon)
    kept = x * (torch.rand(x.shape, generator=generator, device=x.device) < probs)
    if rescale == "inverse":
        return kept / probs
    if rescale == "l1":
        return kept * l1_factor(kept, x)
    return kept


def _pruned(
    tensors: Sequence[Tensor],
    base: Tensor,
    density: Sequence[float],
    epsilon: Sequence[float],
    rescale: Rescale,
    generator: torch.Generator,
) -> list[Tensor]:
    """Each model's task vector after MagPrune, drawn model by model."""
    if base is None:
        raise ValueError("della needs a base model: it merges task vectors θᵢ − θ_base")
    n = len(tensors)
    spec = zip(_deltas(base, tensors), per_model(density, n, "densities"), per_model(epsilon, n, "epsilons"))
    return [magprune(d, k, e, rescale=rescale, generator=generator) for d, k, e in spec]


def della(
    tensors: Sequence[Tensor],
    base: Tensor,
    *,
    weights: Sequence[float],
    density: Sequence[float],
    epsilon: Sequence[float],
    scale: float = 1.0,
    normalize: bool = True,
    rescale: Rescale = "inverse",
    elect: Election = "mass",
    weights_at: WeightsAt = "after",
    generator: torch.Generator,
) -> Tensor:
    """DELLA: MagPrune each task vector, elect a sign per entry (``elect``, as TIES), take the
    (weighted) mean of the agreeing entries (``normalize``; their sum otherwise), add
    ``scale``·(merged task vector) to the base.

    mergekit's ``della`` is ``rescale = l1, weights_at = before`` (weights sway the vote) with its
    ``lambda`` as ``scale``; the defaults here are the paper's."""
    pruned = _pruned(tensors, base, density, epsilon, rescale, generator)
    return _combine(base, pruned, weights, consensus=elect, weights_at=weights_at, normalize=normalize, scale=scale)


def della_linear(
    tensors: Sequence[Tensor],
    base: Tensor,
    *,
    weights: Sequence[float],
    density: Sequence[float],
    epsilon: Sequence[float],
    scale: float = 1.0,
    normalize: bool = False,
    rescale: Rescale = "inverse",
    generator: torch.Generator,
) -> Tensor:
    """DELLA without sign election: base + ``scale``·Σ wᵢ·MagPrune(τᵢ) (divided by Σ wᵢ when
    ``normalize``). mergekit's ``della_linear`` is ``rescale = l1``."""
    pruned = _pruned(tensors, base, density, epsilon, rescale, generator)
    return _combine(base, pruned, weights, consensus=None, weights_at="after", normalize=normalize, scale=scale)
