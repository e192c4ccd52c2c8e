"""Per-tensor merge kernels: the merge math, one tensor at a time.

Every kernel has the form ``kernel(base, tensors, *, <params>) -> Tensor``: ``base`` is the shared
anchor's tensor (``None`` where a method needs none), ``tensors`` the same-named tensor of each
input model. A kernel never sees more than one tensor name, so a streaming merger can feed
LLM-size checkpoints through it tensor by tensor. A statistic that needs the whole model (the TIES
trim threshold when ``trim = model``) is computed beforehand by :class:`MagnitudeThreshold`,
which is itself fed tensor by tensor, and passed in.

Signatures (stable; keyword-only parameters after ``*``)::

    linear(base, tensors, *, weights=None, normalize=True)
    task_arithmetic(base, tensors, *, scales)
    slerp(base, tensors, *, t, dot_threshold=0.9995, eps=1e-8)
    spherical_mean(base, tensors, *, weights=None, max_iter=100, tol=1e-10, eps=1e-8)
    ties(base, tensors, *, density=0.2, weights=None, thresholds=None, elect="mass",
         weights_at="after", normalize=True, scale=1.0, rescale="none", factors=None)
    dare(base, tensors, *, density=0.5, weights=None, rescale="inverse", consensus=None,
         weights_at="after", normalize=False, scale=1.0, generator=None)
    breadcrumbs(base, tensors, *, density=0.9, gamma=0.01, weights=None, consensus=None,
                weights_at="after", normalize=False, scale=1.0, rescale="none")
    model_stock(base, tensors, *, mean="cosine", eps=1e-6)
    fisher(base, tensors, *, fishers, weights=None, eps=1e-8)
    regmean(base, tensors, *, grams=None, alpha=0.9, weights=None)

    magnitude_threshold(x, density) -> float        # per-tensor top-k threshold
    MagnitudeThreshold(density).observe(x) ... .refine(x) ... .value   # whole-model, two passes

``density`` and ``gamma`` of the sparse methods are one float for every model, or one per model.

Inputs may be any floating dtype; half precision is computed in float32 and the result is cast
back to the dtype of ``base`` (or of the first tensor). The dispute points between the papers and
mergekit are explicit parameters; each docstring names which setting reproduces which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .sparsify import (
    MagnitudeThreshold,
    apply_drop,
    band_thresholds,
    keep_between,
    keep_masks,
    keep_top,
    magnitude_threshold,
    row_blocks,
)

__all__ = [
    "MagnitudeThreshold",
    "breadcrumbs",
    "consensus_sum",
    "cosine",
    "dare",
    "fisher",
    "l1_factor",
    "linear",
    "magnitude_threshold",
    "model_stock",
    "per_model",
    "regmean",
    "slerp",
    "spherical_mean",
    "task_arithmetic",
    "ties",
]

Election = Literal["mass", "count"]
WeightsAt = Literal["before", "after"]


def _work(x: Tensor) -> Tensor:
    """The dtype arithmetic happens in: half precision is widened, float64 is kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _out(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


def per_model(value: float | Sequence[float], n: int, what: str) -> list[float]:
    """One value per model: a float is shared by all ``n`` models, a sequence must have ``n`` values.
    NaN is refused (a NaN weight or density would make every merged entry NaN, silently)."""
    if isinstance(value, int | float):
        values = [float(value)] * n
    elif len(value) != n:
        raise ValueError(f"expected {n} {what}, one per model (not {list(value)!r})")
    else:
        values = [float(v) for v in value]
    if any(math.isnan(v) for v in values):
        raise ValueError(f"{what} must be numbers, not NaN (got {values!r})")
    return values


def weight_total(weights: Sequence[float], what: str = "weights") -> float:
    """Σ weights (summed in order), to normalise by: refused when (nearly) zero or not finite."""
    total = sum(float(w) for w in weights)
    if not (math.isfinite(total) and abs(total) >= 1e-12):
        sums = "zero" if math.isfinite(total) else f"{total}"
        raise ValueError(f"{what} sum to {sums}, cannot normalise by the sum (got {[float(w) for w in weights]!r})")
    return total


def _weights(weights: Sequence[float] | None, n: int) -> list[float]:
    return per_model(1.0 if weights is None else weights, n, "weights")


def _deltas(base: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    b = _work(base)
    return [_work(t) - b for t in tensors]


def _vectors(tensors: Sequence[Tensor], base: Tensor | None) -> list[Tensor]:
    """What spherical methods interpolate: the task vectors with a base, else the tensors."""
    return _deltas(base, tensors) if base is not None else [_work(x) for x in tensors]


def linear(
    base: Tensor | None, tensors: Sequence[Tensor], *, weights: Sequence[float] | None = None, normalize: bool = True
) -> Tensor:
    """Σ wᵢθᵢ, divided by Σ wᵢ when ``normalize`` (model soups, FedAvg; mergekit ``linear``)."""
    w = _weights(weights, len(tensors))
    total = sum(wi * _work(t) for wi, t in zip(w, tensors))
    if normalize:
        total = total / weight_total(w)
    return _out(total, tensors[0])


def task_arithmetic(base: Tensor, tensors: Sequence[Tensor], *, scales: Sequence[float]) -> Tensor:
    """θ_base + Σ λᵢ(θᵢ − θ_base) (Ilharco et al. 2023). Signed scales give negation (λ < 0) and
    analogies (τ_C + τ_B − τ_A)."""
    lam = _weights(scales, len(tensors))
    merged = _work(base) + sum(li * d for li, d in zip(lam, _deltas(base, tensors)))
    return _out(merged, base)


def cosine(a: Tensor, b: Tensor, base: Tensor | None = None, *, eps: float = 1e-8) -> float:
    """cos Ω = a·b / ((‖a‖ + eps)(‖b‖ + eps)) of two tensors, or of their differences from ``base``,
    clamped to [-1, 1]. Accumulated row block by row block (float32 blocks, float64 sums), widening
    each block: no temporary of the tensor's size, and the same number from the stored half-precision
    tensors (a streamed merge's whole-tensor pass) as from their float32 copies (in memory)."""
    dot = aa = bb = 0.0
    for rows in row_blocks(a.shape):
        x, y = _work(a[rows]).flatten(), _work(b[rows]).flatten()
        if base is not None:
            anchor = _work(base[rows]).flatten()
            x, y = x - anchor, y - anchor
        dot += float(torch.dot(x, y))
        aa += float(torch.dot(x, x))
        bb += float(torch.dot(y, y))
    return max(-1.0, min(1.0, dot / ((math.sqrt(aa) + eps) * (math.sqrt(bb) + eps))))


def slerp(
    base: Tensor | None, tensors: Sequence[Tensor], *, t: float, dot_threshold: float = 0.9995, eps: float = 1e-8,
    cos: float | None = None,
) -> Tensor:
    """Spherical interpolation from ``tensors[0]`` (t = 0) to ``tensors[1]`` (t = 1), per tensor.

    Falls back to lerp when |cos Ω| > ``dot_threshold`` (nearly colinear: sin Ω ≈ 0), as mergekit
    and FusionBench do. With a ``base`` the task vectors are interpolated and added back
    (mergekit's ``nuslerp`` with a base model). ``cos`` (from :func:`cosine`) may be given, computed
    on the whole tensor beforehand, so that row chunks of it interpolate by the whole tensor's angle.
    """
    if len(tensors) != 2:
        raise ValueError(f"slerp takes exactly two models (not {len(tensors)})")
    if cos is None:
        cos = cosine(tensors[0], tensors[1], base, eps=eps)
    v0, v1 = _vectors(tensors, base)
    if abs(cos) > dot_threshold:
        mixed = torch.lerp(v0, v1, t)
    else:
        omega = math.acos(cos)
        s = math.sin(omega)
        mixed = torch.add(v0 * (math.sin((1 - t) * omega) / s), v1, alpha=math.sin(t * omega) / s)
    if base is not None:
        mixed = _work(base) + mixed
    return _out(mixed, tensors[0])


def spherical_mean(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    weights: Sequence[float] | None = None,
    max_iter: int = 100,
    tol: float = 1e-10,
    eps: float = 1e-8,
) -> Tensor:
    """Weighted Karcher (Riemannian) mean of the directions, scaled by the weighted mean norm.

    The multi-model generalisation of SLERP (mergekit ``karcher``): for two unit-norm tensors and
    weights (1 − t, t) it equals ``slerp(t)``. With a ``base`` it averages task vectors.
    """
    w = torch.tensor(_weights(weights, len(tensors)), dtype=torch.float64)
    weight_total(w.tolist())
    w = w / w.sum()
    vs = _vectors(tensors, base)
    flat = torch.stack([v.flatten().double() for v in vs])  # (n, numel)
    norms = flat.norm(dim=1)
    units = flat / norms.clamp_min(eps)[:, None]
    mean = (w[:, None] * units).sum(0)
    mean = mean / mean.norm().clamp_min(eps)
    for _ in range(max_iter):
        cos = (units @ mean).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)  # (n,)
        tangent = units - cos[:, None] * mean
        scale = torch.where(theta > eps, theta / tangent.norm(dim=1).clamp_min(eps), torch.zeros_like(theta))
        step = (w[:, None] * scale[:, None] * tangent).sum(0)  # log map, weighted
        length = step.norm()
        if length < tol:
            break
        mean = torch.cos(length) * mean + torch.sin(length) * step / length  # exp map
        mean = mean / mean.norm()
    merged = (mean * (w * norms).sum()).reshape(vs[0].shape).to(vs[0].dtype)
    if base is not None:
        merged = _work(base) + merged
    return _out(merged, tensors[0])


def consensus_sum(
    deltas: Sequence[Tensor],
    weights: Sequence[float],
    *,
    elect: Election = "mass",
    weights_at: WeightsAt = "after",
    normalize: bool = True,
) -> Tensor:
    """TIES' sign election and disjoint merge of (already sparsified) task vectors.

    - ``elect``: ``mass`` (γ = sgn Σ τ̂ₜ; paper and mergekit ``sum``) or ``count`` (majority of the
      signs; mergekit ``count``). Coordinates whose vote is exactly 0 elect +, as mergekit does.
    - ``weights_at``: ``after`` (the paper's Algorithm 1: elect on the unweighted τ̂, weight in the
      merge) or ``before`` (mergekit: elect on wₜτ̂ₜ, so weights sway the vote; mergekit #474).
    - ``normalize``: the disjoint *mean* Σ wₜτ̂ₜ·m / Σ wₜ·m (paper; mergekit ``ties`` default) or the
      disjoint *sum* Σ wₜτ̂ₜ·m (FusionBench's default ``merge_func: sum``).
    Zero entries (trimmed away) never count as agreeing.

    The arithmetic is branch-free (``torch.where`` and boolean masks cost 5-15x a plain pass on
    CPU): with e the elected sign, an entry v agrees when v·e > 0, so relu(v·e) is its agreeing
    magnitude and sign(relu(v·e)) its 0/1 vote; Σ relu(vᵢ·e) · e is then exactly Σ vᵢ·maskᵢ (every
    term has the sign e, and rounding is symmetric), term by term in the same order as a stacked sum.
    """
    weighted = [d if w == 1.0 else d * w for w, d in zip(weights, deltas)]
    voters = weighted if weights_at == "before" else list(deltas)
    ballots = [v.sign() for v in voters] if elect == "count" else voters
    vote = ballots[0] + ballots[1] if len(ballots) > 1 else ballots[0].clone()
    for v in ballots[2:]:
        vote += v
    # The elected sign, + where the vote is exactly +0 (x + -x rounds to +0). A vote of -0 or NaN
    # arises only where no voter is non-zero and finite, and no entry there agrees either way.
    elected = torch.copysign(torch.ones((), dtype=vote.dtype), vote)
    del vote
    # The sums start from the first model's terms, not from zeros: 0 + t is t (up to the sign of a
    # zero, which only a base entry of -0 would show), one pass fewer each.
    mixed: Tensor | None = None
    divisor: Tensor | None = None
    for w, v in zip(weights, voters):
        agreeing = torch.mul(v, elected).relu_()  # |v| where v agrees with the elected sign, else 0
        if normalize:
            votes = agreeing.sign()  # 0 or 1: exact
            if divisor is None:
                divisor = votes if w == 1.0 else votes.mul_(w)
            else:
                divisor.add_(votes, alpha=w)
        if weights_at == "after" and w != 1.0:
            agreeing.mul_(w)
        if mixed is None:
            mixed = agreeing
        else:
            mixed += agreeing
    assert mixed is not None
    mixed *= elected
    if divisor is not None:
        if all(w >= 1e-12 for w in weights):
            # Positive weights: a divisor is 0 (nothing agrees, and the sum is ±0 there) or ≥ 1e-12.
            mixed /= divisor.clamp_min_(1e-12)
        else:
            mixed /= torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return mixed


def l1_factor(kept: Tensor, original: Tensor) -> float:
    """‖original‖₁ / ‖kept‖₁ for a sparsified ``original``; 1 when either norm is below 1e-7
    (mergekit's ``rescale: true`` for magnitude trims and MagPrune)."""
    before, after = float(original.abs().sum()), float(kept.abs().sum())
    return before / after if before >= 1e-7 and after >= 1e-7 else 1.0


def _combine(
    base: Tensor,
    deltas: Sequence[Tensor],
    weights: Sequence[float] | None,
    *,
    consensus: Election | None,
    weights_at: WeightsAt,
    normalize: bool,
    scale: float,
) -> Tensor:
    """base + λ·(merged task vectors): TIES consensus, or a plain (normalised) weighted sum."""
    w = _weights(weights, len(deltas))
    if consensus is not None:
        mixed = consensus_sum(deltas, w, elect=consensus, weights_at=weights_at, normalize=normalize)
    else:
        mixed = sum(wi * d for wi, d in zip(w, deltas))
        if normalize:
            mixed = mixed / (sum(w) if abs(sum(w)) > 1e-12 else 1.0)
    if scale != 1.0:
        mixed = scale * mixed
    return _out(_work(base) + mixed, base)


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    *,
    density: float | Sequence[float] = 0.2,
    weights: Sequence[float] | None = None,
    thresholds: Sequence[float] | None = None,
    elect: Election = "mass",
    weights_at: WeightsAt = "after",
    normalize: bool = True,
    scale: float = 1.0,
    rescale: Literal["none", "l1"] = "none",
    factors: Sequence[float] | None = None,
) -> Tensor:
    """TIES-merging (Yadav et al. 2023): trim each task vector to its top-``density`` magnitudes,
    elect a sign per coordinate, average the agreeing entries, add λ·τ_m to the base.

    Trim scope: with ``thresholds=None`` each tensor keeps its own top-k (mergekit); passing one
    whole-model threshold per task vector (from :class:`MagnitudeThreshold`) reproduces the paper
    and FusionBench, which rank all of a model's parameters together. ``density`` may be one value
    per model (mergekit's per-model ``density``). ``rescale = l1`` scales each trimmed task vector
    back to its L1 norm (mergekit's ``rescale: true``); ``factors`` gives those multipliers when
    they were computed on the whole tensor beforehand (a row chunk's own norms would differ).
    """
    deltas = _deltas(base, tensors)
    if thresholds is None:
        densities = per_model(density, len(deltas), "densities")
        trimmed = [keep_top(d, magnitude_threshold(d, k)) for d, k in zip(deltas, densities)]
    else:
        trimmed = [keep_top(d, float(thr)) for d, thr in zip(deltas, thresholds, strict=True)]
    if factors is not None:
        trimmed = [k * float(f) for k, f in zip(trimmed, factors, strict=True)]
    elif rescale == "l1":
        trimmed = [k * l1_factor(k, d) for k, d in zip(trimmed, deltas)]
    return _combine(base, trimmed, weights, consensus=elect, weights_at=weights_at, normalize=normalize, scale=scale)


def dare(
    base: Tensor,
    tensors: Sequence[Tensor],
    *,
    density: float | Sequence[float] = 0.5,
    weights: Sequence[float] | None = None,
    rescale: Literal["inverse", "l1", "none"] = "inverse",
    consensus: Election | None = None,
    weights_at: WeightsAt = "after",
    normalize: bool = False,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    masks: Sequence[Tensor] | None = None,
    factors: Sequence[float] | None = None,
) -> Tensor:
    """DARE (Yu et al. 2024): drop each delta entry with p = 1 − ``density``, rescale the rest,
    then merge by task arithmetic (``consensus=None``, mergekit ``dare_linear``) or TIES
    (``consensus="mass"``, mergekit ``dare_ties``).

    ``rescale``: ``inverse`` multiplies by 1/(1 − p) (the paper, FusionBench, mergekit before
    PR #505); ``l1`` matches the L1 norm of the kept entries to the original (mergekit today).
    ``density`` may be one value per model; the models draw from ``generator`` in order
    (:func:`~mlspec.ops.merge.sparsify.keep_masks`). ``masks`` (one keep-mask per model) and the
    ``l1`` ``factors`` may be given instead, drawn and computed on the whole tensor beforehand, so
    that row chunks of it merge with the whole tensor's draws.
    """
    deltas = _deltas(base, tensors)
    densities = per_model(density, len(deltas), "densities")
    if masks is None:
        masks = keep_masks(deltas[0].shape, densities, generator, deltas[0].device)
    each = list(factors) if factors is not None else [None] * len(deltas)
    dropped = [apply_drop(d, m, k, rescale, f) for d, m, k, f in zip(deltas, masks, densities, each)]
    return _combine(base, dropped, weights, consensus=consensus, weights_at=weights_at, normalize=normalize, scale=scale)


def breadcrumbs(
    base: Tensor,
    tensors: Sequence[Tensor],
    *,
    density: float | Sequence[float] = 0.9,
    gamma: float | Sequence[float] = 0.01,
    weights: Sequence[float] | None = None,
    consensus: Election | None = None,
    weights_at: WeightsAt = "after",
    normalize: bool = False,
    scale: float = 1.0,
    rescale: Literal["none", "l1"] = "none",
    bands: Sequence[tuple[float | None, float] | None] | None = None,
    factors: Sequence[float] | None = None,
) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023): per tensor, drop the largest ``gamma``
    fraction of each task vector's magnitudes (outliers) and the smallest, keeping ``density``;
    then task arithmetic (or TIES with ``consensus``; mergekit ``breadcrumbs_ties``). ``density``
    and ``gamma`` may each be one value per model; ``rescale = l1`` as in :func:`ties`. ``bands``
    (each model's kept magnitudes, from :func:`~mlspec.ops.merge.sparsify.band_thresholds`) and
    ``factors`` may be given, computed on the whole tensor beforehand (for row chunks)."""
    deltas = _deltas(base, tensors)
    n = len(deltas)
    if bands is None:
        levels = zip(deltas, per_model(density, n, "densities"), per_model(gamma, n, "gammas"))
        bands = [band_thresholds(d, density=k, gamma=g) for d, k, g in levels]
    kept = [keep_between(d, band) for d, band in zip(deltas, bands)]
    if factors is not None:
        kept = [k * f for k, f in zip(kept, factors)]
    elif rescale == "l1":
        kept = [k * l1_factor(k, d) for k, d in zip(kept, deltas)]
    return _combine(base, kept, weights, consensus=consensus, weights_at=weights_at, normalize=normalize, scale=scale)


def model_stock(
    base: Tensor, tensors: Sequence[Tensor], *, mean: Literal["cosine", "angle"] = "cosine", eps: float = 1e-6
) -> Tensor:
    """Model Stock (Jang et al. 2024): t = k·cos φ / (1 + (k − 1)·cos φ); θ = t·θ̄ + (1 − t)·θ_base.

    cos φ summarises the pairwise angles between the k ≥ 2 fine-tuning deltas: ``cosine`` averages
    the pairwise cosines (mergekit); ``angle`` averages the pairwise angles and takes the cosine of
    the mean (FusionBench). For k = 2 both equal the paper's single angle.
    """
    k = len(tensors)
    if k < 2:
        raise ValueError(f"model_stock needs at least two fine-tuned models (not {k})")
    flat = [d.flatten() for d in _deltas(base, tensors)]
    cosines = [
        (torch.dot(flat[i], flat[j]) / (flat[i].norm() * flat[j].norm()).clamp_min(eps)).clamp(-1.0, 1.0).item()
        for i in range(k)
        for j in range(i + 1, k)
    ]
    if mean == "cosine":
        cos = sum(cosines) / len(cosines)
    else:
        cos = math.cos(sum(math.acos(c) for c in cosines) / len(cosines))
    t = k * cos / (1 + (k - 1) * cos) if abs(1 + (k - 1) * cos) > eps else 0.0
    centre = sum(_work(x) for x in tensors) / k
    return _out(t * centre + (1 - t) * _work(base), base)


def fisher(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    fishers: Sequence[Tensor],
    weights: Sequence[float] | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Fisher merging (Matena & Raffel 2022): θ* = Σ λᵢFᵢθᵢ / Σ λᵢFᵢ with diagonal Fisher Fᵢ,
    floored at ``eps`` so that a parameter no model is sensitive to is plainly averaged."""
    w = _weights(weights, len(tensors))
    floors = [_work(f).clamp_min(eps) for f in fishers]
    num = sum(wi * f * _work(x) for wi, f, x in zip(w, floors, tensors))
    den = sum(wi * f for wi, f in zip(w, floors))
    return _out(num / den, tensors[0])


def regmean(
    base: Tensor | None,
    tensors: Sequence[Tensor],
    *,
    grams: Sequence[Tensor] | None = None,
    alpha: float = 0.9,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """RegMean (Jin et al. 2023) for a linear layer's weight W (out × in, y = xWᵀ):
    Wᵀ = (Σ G̃ᵢ)⁻¹ Σ G̃ᵢWᵢᵀ with Gram matrices Gᵢ = XᵢᵀXᵢ of the layer's inputs and
    G̃ = αG + (1 − α)·diag(G) (off-diagonals scaled by α). Without ``grams`` (biases, norms and
    every other non-linear parameter) the tensors are averaged."""
    if grams is None:
        return linear(base, tensors, weights=weights, normalize=True)
    w = _weights(weights, len(tensors))
    scaled = []
    for wi, g in zip(w, grams):
        g = g.double()
        scaled.append(wi * (alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))))
    lhs = sum(scaled)
    rhs = sum(g @ x.double().T for g, x in zip(scaled, tensors))
    # gelsd (SVD) also copes with singular Grams, e.g. an input feature that is always zero.
    merged = torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution.T
    return _out(merged, tensors[0])
