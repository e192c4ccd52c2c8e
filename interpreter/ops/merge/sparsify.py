"""Sparsifying task vectors: magnitude trims, DARE's random drop, and the whole-model threshold.

Trims use linear-time selection (:func:`kth_smallest`), never a full sort. "Keep the top k" is
implemented as "keep |x| ≥ the k-th largest |x|", so ties at the threshold are all kept (the TIES
reference code and FusionBench do the same); k = ⌊density·n⌋ as in mergekit and the TIES code.

:class:`MagnitudeThreshold` finds the exact k-th largest magnitude over a *stream* of tensors with
O(1) memory: pass one histograms the high 16 bits of each float32 magnitude's bit pattern (for
non-negative IEEE floats the bit pattern orders like the value), pass two histograms the low 16
bits inside the one bucket that holds the k-th value. A streaming merger reads each task vector
twice; an in-memory merge calls :func:`model_threshold`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MagnitudeThreshold",
    "keep_band",
    "keep_top",
    "kept_count",
    "magnitude_threshold",
    "model_threshold",
    "random_drop",
]


def kept_count(density: float, n: int) -> int:
    """⌊density·n⌋, robust to 0.29·100 = 28.999…"""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1] (not {density!r})")
    return min(n, int(density * n + 1e-9))


def kth_smallest(values: Tensor, k: int) -> float:
    """The k-th smallest (1-based) entry. On the CPU numpy's introselect is several times faster than
    ``torch.kthvalue`` on large tensors and returns the identical value."""
    flat = values.detach().flatten()
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return float(np.partition(flat.numpy(), k - 1)[k - 1])
    return float(flat.kthvalue(k).values.item())


def magnitude_threshold(x: Tensor, density: float) -> float:
    """The k-th largest |x| with k = ⌊density·numel⌋: inf keeps nothing, 0 keeps everything."""
    return threshold_of_magnitudes(x.detach().abs(), density)


def threshold_of_magnitudes(magnitude: Tensor, density: float) -> float:
    """:func:`magnitude_threshold` for a tensor of magnitudes already at hand (saves a pass)."""
    n = magnitude.numel()
    k = kept_count(density, n)
    if k == 0:
        return math.inf
    if k == n:
        return 0.0
    return kth_smallest(magnitude, n - k + 1)


def keep_top(x: Tensor, threshold: float) -> Tensor:
    """x where |x| ≥ threshold, else 0."""
    return x * (x.abs() >= threshold)


def keep_band(x: Tensor, *, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs' mask: drop the top ``gamma`` fraction of magnitudes (outliers) and the
    bottom, keeping ``density``; when both exceed the tensor the outlier cut shrinks (mergekit)."""
    n = x.numel()
    keep = kept_count(density, n)
    top = kept_count(gamma, n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    if keep == 0:
        return torch.zeros_like(x)
    mags = x.detach().abs().flatten()
    upper = kth_smallest(mags, bottom + keep)
    mask = x.abs() <= upper
    if bottom > 0:
        mask &= x.abs() > kth_smallest(mags, bottom)
    return x * mask


def random_drop(
    x: Tensor,
    density: float,
    *,
    rescale: Literal["inverse", "l1", "none"] = "inverse",
    generator: torch.Generator | None = None,
) -> Tensor:
    """DARE: keep each entry with probability ``density`` and rescale the survivors — by
    1/density (``inverse``) or so that the L1 norm is unchanged (``l1``)."""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1] (not {density!r})")
    mask = torch.rand(x.shape, generator=generator, device=x.device) < density
    kept = x * mask
    if rescale == "inverse":
        return kept / density if density > 0 else kept
    if rescale == "l1":
        kept_norm = kept.abs().sum()
        return kept * (x.abs().sum() / kept_norm) if kept_norm > 1e-7 else kept
    return kept


_HI = 1 << 15  # high halves of non-negative float32 bit patterns lie in [0, 2**15)
_LO = 1 << 16


def _bits(x: Tensor) -> Tensor:
    return x.detach().abs().flatten().to(torch.float32).contiguous().view(torch.int32).to(torch.int64)


class MagnitudeThreshold:
    """Exact whole-model top-k magnitude threshold, fed tensor by tensor in two passes.

    >>> th = MagnitudeThreshold(0.2)
    >>> for t in deltas: th.observe(t)
    >>> for t in deltas: th.refine(t)     # skipped when th.needs_refine is False
    >>> th.value
    Values are ranked at float32 precision.
    """

    def __init__(self, density: float):
        kept_count(density, 1)  # validates
        self.density = density
        self._n = 0
        self._hi = torch.zeros(_HI, dtype=torch.int64)
        self._lo = torch.zeros(_LO, dtype=torch.int64)
        self._bucket: int | None = None
        self._rank = 0  # rank of the k-th largest inside the bucket, counted from its top (1-based)
        self._value: float | None = None

    def observe(self, x: Tensor) -> None:
        if self._bucket is not None or self._value is not None:
            raise RuntimeError("observe() after the first pass finished")
        bits = _bits(x)
        self._n += bits.numel()
        self._hi += torch.bincount((bits >> 16).clamp_max(_HI - 1), minlength=_HI)

    @property
    def needs_refine(self) -> bool:
        self._finish_first_pass()
        return self._value is None

    def refine(self, x: Tensor) -> None:
        if not self.needs_refine:
            return
        bits = _bits(x)
        inside = bits[(bits >> 16) == self._bucket]
        self._lo += torch.bincount(inside & 0xFFFF, minlength=_LO)

    @property
    def value(self) -> float:
        if self.needs_refine:
            low = self._locate(self._lo, self._rank)[0]
            pattern = torch.tensor([(self._bucket << 16) | low], dtype=torch.int32)  # type: ignore[operator]
            self._value = float(pattern.view(torch.float32).item())
        assert self._value is not None
        return self._value

    def _finish_first_pass(self) -> None:
        if self._value is not None or self._bucket is not None:
            return
        k = kept_count(self.density, self._n)
        if k == 0:
            self._value = math.inf
        elif k == self._n:
            self._value = 0.0
        else:
            self._bucket, self._rank = self._locate(self._hi, k)

    @staticmethod
    def _locate(counts: Tensor, k: int) -> tuple[int, int]:
        """The bin holding the k-th largest entry and that entry's rank from the bin's top."""
        from_top = counts.flip(0).cumsum(0)
        idx = int(torch.searchsorted(from_top, torch.tensor(k)).item())
        above = int(from_top[idx - 1].item()) if idx > 0 else 0
        return len(counts) - 1 - idx, k - above


def model_threshold(tensors: Callable[[], Iterable[Tensor]], density: float) -> float:
    """Whole-model threshold of an in-memory model: ``tensors()`` is called once per pass."""
    th = MagnitudeThreshold(density)
    for t in tensors():
        th.observe(t)
    if th.needs_refine:
        for t in tensors():
            th.refine(t)
    return th.value
