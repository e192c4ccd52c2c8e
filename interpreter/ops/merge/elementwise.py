"""The kernels of the data-free merge methods declared in :mod:`mlspec.ops.merge.specs`.

Each takes one tensor group in the declaration's calling form — ``kernel(tensors, [base,] *,
<the operator's parameters by name>)``, per-model parameters as lists — and hands it to the merge
math in :mod:`mlspec.ops.merge.kernels`. TIES' trim thresholds come from its two passes:
:func:`ties_whole_model` (``trim = model``, over every task vector) and
:func:`ties_tensor_thresholds` (``trim = tensor``, over one tensor, so that it can then be merged
in row chunks). DARE's keep-masks and breadcrumbs' bands are likewise computed on the whole tensor
(:func:`dare_tensor_prepare`, :func:`breadcrumbs_tensor_prepare`) before its row chunks merge;
called without them, each kernel computes them itself, so both engines give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from ...checkpoints import settings as st
from . import kernels
from .method import MergeMethod
from .sparsify import (
    BlockMagnitudes,
    MagnitudeThreshold,
    band_thresholds,
    drop_l1_factor,
    keep_between,
    keep_masks,
    keep_top,
    row_blocks,
    threshold_of_magnitudes,
)

__all__ = [
    "average",
    "breadcrumbs",
    "breadcrumbs_tensor_prepare",
    "dare",
    "dare_tensor_prepare",
    "model_stock",
    "slerp",
    "slerp_tensor_prepare",
    "spherical_mean",
    "task_arithmetic",
    "ties",
    "ties_tensor_thresholds",
    "ties_whole_model",
]


def average(tensors: list[Tensor], *, weights: list[float], normalize: bool) -> Tensor:
    return kernels.linear(None, tensors, weights=weights, normalize=normalize)


def task_arithmetic(tensors: list[Tensor], base: Tensor, *, scale: list[float]) -> Tensor:
    return kernels.task_arithmetic(base, tensors, scales=scale)


def slerp_tensor_prepare(params: Mapping[str, Any], base: Tensor | None, tensors: list[Tensor]) -> dict[str, Any]:
    """The whole tensor's angle, before its row chunks are interpolated."""
    return {"cos": kernels.cosine(tensors[0], tensors[1], base)} if len(tensors) == 2 else {}


def slerp(tensors: list[Tensor], base: Tensor | None, *, t: float, dot_threshold: float,
          cos: float | None = None) -> Tensor:
    return kernels.slerp(base, tensors, t=t, dot_threshold=dot_threshold, cos=cos)


def spherical_mean(tensors: list[Tensor], *, weights: list[float], max_iter: int) -> Tensor:
    return kernels.spherical_mean(None, tensors, weights=weights, max_iter=max_iter)


def _delta(x: Tensor, base: Tensor) -> Tensor:
    """x − base in at least float32, into one new tensor of x's size (large tensors of a streamed
    merge arrive in their stored dtype). A half-precision base is widened a block of rows at a
    time: a whole float32 copy of it would double the memory, and subtracting it unwidened takes a
    slow mixed-dtype path."""
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    delta = x.to(wide, copy=True)
    if base.dtype == wide:
        return delta.sub_(base)
    for rows in row_blocks(delta.shape):
        delta[rows].sub_(base[rows].to(wide))
    return delta


def _magnitudes(x: Tensor, base: Tensor) -> Tensor:
    return _delta(x, base).abs_()


#: Entries per block when magnitudes only feed a selection (whose result no block size changes).
#: Smaller than the default: with a worker per core, 128K-entry blocks selected 25-30% faster than
#: 512K ones (the two cores share one cache), though alone they are 5% slower.
_SELECTION_BLOCK = 1 << 17


def _block_magnitudes(x: Tensor, base: Tensor, block: int | None = None) -> BlockMagnitudes:
    """|x − base| a block of rows (of about ``block`` entries; see :func:`row_blocks`) at a time,
    each time a selection passes over it: entry for entry what :func:`_magnitudes` holds whole."""
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype

    def blocks() -> Iterator[Tensor]:
        for rows in row_blocks(x.shape, block):
            yield _delta(x[rows], base[rows]).abs_()

    def sample(step: int) -> Tensor:
        # A step coprime with the row length visits every column alike (one that divides it would
        # sample a few columns only, whose scale may differ from the rest).
        while math.gcd(step, x.shape[-1] if x.dim() > 1 else 1) != 1:
            step += 1  # upwards: the sample only shrinks
        return _delta(x.reshape(-1)[::step], base.reshape(-1)[::step]).abs_()

    return BlockMagnitudes(blocks, x.numel(), wide, sample)


def ties_tensor_thresholds(
    params: Mapping[str, Any], base: Tensor, tensors: list[Tensor], thresholds: list[float] | None = None
) -> dict[str, Any]:
    """What TIES needs of a whole tensor: each task vector's per-tensor trim threshold
    (``trim = tensor``; none when the whole-model pass has set them) and, with ``rescale = l1``,
    each trimmed task vector's L1 factor. One task vector's magnitudes at a time."""
    given, l1 = thresholds, params.get("rescale") == "l1"
    if given is not None and not l1:
        return {}
    if not l1 and base.device.type == "cpu":  # the thresholds alone: selected block by block
        return {"thresholds": [threshold_of_magnitudes(_block_magnitudes(x, base, _SELECTION_BLOCK), density)
                               for x, density in zip(tensors, params["density"])]}
    found, factors = [], []
    for i, (x, density) in enumerate(zip(tensors, params["density"])):
        magnitudes = _magnitudes(x, base)  # once per task vector: the threshold and the L1 factor both need it
        threshold = threshold_of_magnitudes(magnitudes, density) if given is None else given[i]
        found.append(threshold)
        if l1:  # ‖τ‖₁ / ‖trimmed τ‖₁ needs only the magnitudes
            factors.append(kernels.l1_factor(keep_top(magnitudes, threshold), magnitudes))
        del magnitudes  # before the next task vector's: one tensor-sized temporary at a time
    out: dict[str, Any] = {} if given is not None else {"thresholds": found}
    if l1:
        out["factors"] = factors
    return out


def ties_whole_model(
    method: MergeMethod, params: Mapping[str, Any],
    groups: Callable[[], Iterable[tuple[Tensor | None, list[Tensor]]]],
) -> dict[str, Any]:
    """``trim = model``: each task vector's top-k threshold over all of its tensors, exactly, in two
    streamed passes (the second only when the first leaves the k-th value's bucket ambiguous)."""
    if params["trim"] != "model":
        return {}
    if not method.is_uniform(params, "density"):
        raise ValueError("trim = model ranks a whole task vector at one density; a density that varies "
                         "by tensor needs trim = tensor")
    density = params["density"]
    each = density if isinstance(density, list) and not st.is_rules(density) else None
    counters: list[MagnitudeThreshold] = []
    for base, tensors in groups():
        assert base is not None
        if not counters:
            levels = each if each is not None else [density] * len(tensors)
            counters = [MagnitudeThreshold(st.resolve(d, "", 0.0)) for d in levels]
        for counter, x in zip(counters, tensors):
            counter.observe(_magnitudes(x, base))
    if any(c.needs_refine for c in counters):
        for base, tensors in groups():
            assert base is not None
            for counter, x in zip(counters, tensors):
                counter.refine(_magnitudes(x, base))
    return {"thresholds": [c.value for c in counters]}


def ties(
    tensors: list[Tensor], base: Tensor, *, density: list[float], weights: list[float], scale: float,
    elect: str, weights_at: str, trim: str, normalize: bool, rescale: str,
    thresholds: list[float] | None = None, factors: list[float] | None = None,
) -> Tensor:
    if thresholds is None or (rescale == "l1" and factors is None):
        whole = ties_tensor_thresholds({"density": density, "rescale": rescale}, base, tensors, thresholds)
        thresholds, factors = whole.get("thresholds", thresholds), whole.get("factors", factors)
    return kernels.ties(base, tensors, thresholds=thresholds, factors=factors, weights=weights,  # type: ignore[arg-type]
                        elect=elect, weights_at=weights_at, normalize=normalize, scale=scale)  # type: ignore[arg-type]


def _consensus(merge: str, elect: str) -> str | None:
    return elect if merge == "ties" else None


def dare_tensor_prepare(
    params: Mapping[str, Any], base: Tensor, tensors: list[Tensor], generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """What DARE needs of a whole tensor before its row chunks: each model's keep-mask, drawn in
    the same order as a whole-tensor merge draws it, and with ``rescale = l1`` each model's factor."""
    masks = keep_masks(tensors[0].shape, params["density"], generator, tensors[0].device)
    out: dict[str, Any] = {"masks": masks}
    if params.get("rescale") == "l1":
        out["factors"] = [drop_l1_factor(_block_magnitudes(x, base), m) for x, m in zip(tensors, masks)]
    return out


def dare(
    tensors: list[Tensor], base: Tensor, *, density: list[float], weights: list[float], scale: float,
    elect: str, weights_at: str, rescale: str, merge: str, normalize: bool, generator: torch.Generator,
    masks: list[Tensor] | None = None, factors: list[float] | None = None,
) -> Tensor:
    if masks is None:
        whole = dare_tensor_prepare({"density": density, "rescale": rescale}, base, tensors, generator)
        masks, factors = whole["masks"], whole.get("factors")
    return kernels.dare(base, tensors, density=density, weights=weights, rescale=rescale,  # type: ignore[arg-type]
                        consensus=_consensus(merge, elect), weights_at=weights_at,  # type: ignore[arg-type]
                        normalize=normalize, scale=scale, masks=masks, factors=factors)


def breadcrumbs_tensor_prepare(params: Mapping[str, Any], base: Tensor, tensors: list[Tensor]) -> dict[str, Any]:
    """What breadcrumbs needs of a whole tensor: each task vector's band of kept magnitudes and,
    with ``rescale = l1``, its L1 factor. One task vector at a time."""
    if params.get("rescale") != "l1" and base.device.type == "cpu":  # the bands alone: block by block
        return {"bands": [band_thresholds(_block_magnitudes(x, base, _SELECTION_BLOCK), density=d, gamma=g)
                          for x, d, g in zip(tensors, params["density"], params["gamma"])]}
    bands, factors = [], []
    for x, d, g in zip(tensors, params["density"], params["gamma"]):
        magnitudes = _magnitudes(x, base)  # once per task vector: the band and the L1 factor both need it
        band = band_thresholds(magnitudes, density=d, gamma=g, magnitudes=True)
        bands.append(band)
        if params.get("rescale") == "l1":
            factors.append(kernels.l1_factor(keep_between(magnitudes, band), magnitudes))
        del magnitudes  # before the next task vector's: one tensor-sized temporary at a time
    out: dict[str, Any] = {"bands": bands}
    if params.get("rescale") == "l1":
        out["factors"] = factors
    return out


def breadcrumbs(
    tensors: list[Tensor], base: Tensor, *, density: list[float], gamma: list[float], weights: list[float],
    scale: float, elect: str, weights_at: str, merge: str, normalize: bool, rescale: str,
    bands: list[tuple[float | None, float] | None] | None = None, factors: list[float] | None = None,
) -> Tensor:
    if bands is None:
        whole = breadcrumbs_tensor_prepare({"density": density, "gamma": gamma, "rescale": rescale}, base, tensors)
        bands, factors = whole["bands"], whole.get("factors")
    return kernels.breadcrumbs(base, tensors, density=density, gamma=gamma, weights=weights,
                               consensus=_consensus(merge, elect), weights_at=weights_at,  # type: ignore[arg-type]
                               normalize=normalize, scale=scale, rescale=rescale,  # type: ignore[arg-type]
                               bands=bands, factors=factors)


def model_stock(tensors: list[Tensor], base: Tensor, *, mean: str) -> Tensor:
    return kernels.model_stock(base, tensors, mean=mean)  # type: ignore[arg-type]
