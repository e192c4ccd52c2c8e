"""Sparsifying task vectors: magnitude trims, DARE's random drop, and the whole-model threshold.

Trims select an exact k-th magnitude in linear time, never a full sort. "Keep the top k" is
implemented as "keep |x| ≥ the k-th largest |x|", so ties at the threshold are all kept (the TIES
reference code and FusionBench do the same); k = ⌊density·n⌋ as in mergekit and the TIES code.

Selection is a radix select on bit patterns: for non-negative IEEE floats (magnitudes) the pattern,
read as an integer, orders like the value. :func:`kth_smallest` histograms (``torch.bincount``) the
top 16-bit digit of every pattern, finds the bucket holding the k-th value, keeps only that bucket
and repeats on the next digit — one pass for bf16/float16, two for float32, four for float64, each
after the first over one bucket only. The result is the k-th value itself, so it equals sorting.

:class:`MagnitudeThreshold` does the same over a *stream* of tensors with O(1) memory, ranking at
float32 precision: pass one histograms the high 16 bits of each float32 pattern, pass two the low
16 bits inside the one bucket that holds the k-th value. A bf16 value's float32 pattern ends in 16
zero bits, so for bf16 streams (checkpoints) pass one is already exact and pass two is skipped. A
streaming merger reads each task vector once or twice; an in-memory merge calls :func:`model_threshold`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MagnitudeThreshold",
    "apply_drop",
    "as_multiplier",
    "band_thresholds",
    "drop_l1_factor",
    "keep_band",
    "keep_between",
    "keep_masks",
    "keep_top",
    "kept_count",
    "magnitude_threshold",
    "model_threshold",
    "row_blocks",
]


def kept_count(density: float, n: int) -> int:
    """⌊density·n⌋, robust to 0.29·100 = 28.999…"""
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must lie in [0, 1] (not {density!r})")
    return min(n, int(density * n + 1e-9))


_DIGIT = 16  # bits per radix digit: bincount over 65,536 bins
_BINS = 1 << _DIGIT
_PATTERN = {  # float dtype -> (integer dtype of the same width, bits a non-negative value's pattern uses)
    torch.bfloat16: (torch.int16, 15),
    torch.float16: (torch.int16, 15),
    torch.float32: (torch.int32, 31),
    torch.float64: (torch.int64, 63),
}


def _patterns(magnitudes: Tensor) -> Tensor:
    """The bit patterns of non-negative floats as 1-D integers (a view): they sort like the values."""
    return magnitudes.detach().flatten().contiguous().view(_PATTERN[magnitudes.dtype][0])


def _as_float(pattern: int, dtype: torch.dtype) -> float:
    return float(torch.tensor([pattern], dtype=_PATTERN[dtype][0]).view(dtype).item())


def _locate(counts: Tensor, k: int) -> tuple[int, int]:
    """The bin holding the k-th smallest (1-based) counted entry, and that entry's rank inside it."""
    below = counts.cumsum(0)
    digit = int(torch.searchsorted(below, torch.tensor(k, device=below.device)).item())
    return digit, k - (int(below[digit - 1].item()) if digit > 0 else 0)


def kth_smallest(magnitudes: Tensor, k: int) -> float:
    """The k-th smallest (1-based) of non-negative values, exactly, by radix select (module docstring).

    Linear time. On 10M-50M float32 magnitudes 1.6-3x faster than numpy's introselect and 2.5-7x
    than ``torch.kthvalue``; on bf16 (one bincount) over 10x both (``benchmarks/kth_selection.py``,
    one thread, busy 2-core machine). Other dtypes (integers) fall back to ``torch.kthvalue``."""
    return kth_smallest_of(magnitudes, [k])[0]


class BlockMagnitudes:
    """Non-negative values on the CPU (a task vector's magnitudes), computed a block of rows at a
    time each time they are iterated, never all at once. A selection over them
    (:func:`kth_smallest_of`) passes over them once, or twice when its sample misleads it. No
    tensor-sized temporary means no freshly mapped pages to fault in: the streamed TIES merge took
    half as many page faults, and 25% less time, than with its magnitudes held whole."""

    def __init__(self, blocks: Callable[[], Iterable[Tensor]], numel: int, dtype: torch.dtype,
                 sample: Callable[[int], Tensor] | None = None):
        #: ``sample(step)``: the magnitudes of every ``step``-th entry (flat order), cheaply.
        self.blocks, self.dtype, self._numel, self.sample = blocks, dtype, numel, sample

    def numel(self) -> int:
        return self._numel

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.blocks())


Magnitudes = Union[Tensor, BlockMagnitudes]  # noqa: UP007


def kth_smallest_of(magnitudes: Magnitudes, ks: Sequence[int]) -> list[float]:
    """:func:`kth_smallest` for several ranks, sharing the first (whole-tensor) histogram."""
    if isinstance(magnitudes, BlockMagnitudes):
        return _kth_smallest_of_blocks(magnitudes, ks)
    if magnitudes.dtype not in _PATTERN:
        flat = magnitudes.detach().flatten()
        return [float(flat.kthvalue(k).values.item()) for k in ks]
    patterns, (_, width) = _patterns(magnitudes), _PATTERN[magnitudes.dtype]
    top = _top_digits(patterns)
    first = torch.bincount(top, minlength=_BINS)
    shift = (width - 1) // _DIGIT * _DIGIT
    out = []
    for k in ks:
        digit, rank = _locate(first, k)
        inside = _bucket(patterns, top, digit) if shift else patterns
        out.append(_descend(inside, shift, rank, digit, magnitudes.dtype))
    return out


#: Entries a windowed selection samples to place its windows, and the windows' half-width in
#: standard deviations of a sample rank: the chance that a window misses its rank is below 1e-6.
_SAMPLES = 1 << 15
_SIGMAS = 5.0
#: A window is counted value by value when its sample holds at most this many distinct values.
_FEW = 4
#: A windowed selection gathers at most 1/_GATHER_SHARE of the entries before giving up.
_GATHER_SHARE = 8


def _kth_smallest_of_blocks(magnitudes: BlockMagnitudes, ks: Sequence[int]) -> list[float]:
    """:func:`kth_smallest_of` over blocks, exactly. With a sampler, in one pass: a strided sample
    places a window of values around each rank; the pass counts the entries below each window and
    gathers those inside, and the rank is selected among them. Should a window miss its rank (a
    chance below one in a million), or without a sampler, two passes: the first digit's histogram
    over the blocks, then within the buckets the ranks fall in the second digit's histogram (float32,
    whose patterns are two digits: memory of a block, however many entries tie in a bucket) or, for
    float64, the buckets gathered."""
    dtype = magnitudes.dtype
    if dtype not in _PATTERN:
        return kth_smallest_of(torch.cat([b.flatten() for b in magnitudes]), ks)
    n = magnitudes.numel()
    if magnitudes.sample is not None and n >= 8 * _SAMPLES:
        found = _windowed(magnitudes, ks)
        if found is not None:
            return found
    width = _PATTERN[dtype][1]
    first = torch.zeros(_BINS, dtype=torch.int64)
    for block in magnitudes:
        first += torch.bincount(_top_digits(_patterns(block)), minlength=_BINS)
    located = [_locate(first, k) for k in ks]
    shift = (width - 1) // _DIGIT * _DIGIT
    if shift == 0:  # one digit is the whole pattern (16-bit floats)
        return [_as_float(digit, dtype) for digit, _ in located]
    if shift == _DIGIT:  # float32: the second digit is the last; its histogram per bucket, nothing kept
        low = {digit: torch.zeros(_BINS, dtype=torch.int64) for digit, _ in located}
        for block in magnitudes:
            patterns = _patterns(block)
            top = _top_digits(patterns)
            for digit, counts in low.items():
                counts += torch.bincount(_bucket(patterns, top, digit) & (_BINS - 1), minlength=_BINS)
        return [_as_float(digit << _DIGIT | _locate(low[digit], rank)[0], dtype) for digit, rank in located]
    parts: dict[int, list[Tensor]] = {digit: [] for digit, _ in located}
    for block in magnitudes:
        patterns = _patterns(block)
        top = _top_digits(patterns)
        for digit, found in parts.items():
            found.append(_bucket(patterns, top, digit))
    buckets = {digit: torch.cat(found) for digit, found in parts.items()}
    return [_descend(buckets[digit], shift, rank, digit, dtype) for digit, rank in located]


def _windowed(magnitudes: BlockMagnitudes, ks: Sequence[int]) -> list[float] | None:
    """The one-pass selection of :func:`_kth_smallest_of_blocks`, on bit patterns (which order like
    the values, NaN and inf included); None when a window missed its rank or held too much.

    Magnitudes of bfloat16 task vectors take few distinct values, so a window often holds only the
    few values its sample saw there: those are counted, one comparison each (0.2 ns an entry),
    and nothing is gathered (about 1.4 ns an entry). Should a block hold a value the sample missed,
    that window gathers from then on. A window spanning few patterns is counted per pattern
    instead of gathered, so ties at the rank cost no memory; a window still gathering more than an
    eighth of the entries gives up for the two passes, whose memory is bounded."""
    assert magnitudes.sample is not None
    n, dtype = magnitudes.numel(), magnitudes.dtype
    sample = _patterns(magnitudes.sample(n // _SAMPLES))
    m = sample.numel()
    windows: list[tuple[int | None, int | None]] = []
    for k in ks:
        q = k / n
        spread = int(_SIGMAS * math.sqrt(m * q * (1 - q))) + 2
        at = min(m, max(1, round(q * m)))
        lo = int(sample.kthvalue(at - spread).values) if at - spread > 1 else None
        hi = int(sample.kthvalue(at + spread).values) if at + spread < m else None
        windows.append((lo, hi))
    below = [0] * len(ks)
    counts: list[Any] = [np.zeros(hi - lo + 1, dtype=np.int64) if lo is not None and hi is not None
                         and hi - lo < _BINS else None for lo, hi in windows]
    # The sample's distinct values inside each window (a missing bound is open), when few.
    flat_sample = sample.numpy()
    seen_values = [np.unique(flat_sample[(flat_sample >= (lo if lo is not None else flat_sample.min()))
                                         & (flat_sample <= (hi if hi is not None else flat_sample.max()))])
                   for lo, hi in windows]
    known: list[Any] = [v if 0 < v.size <= _FEW else None for v in seen_values]
    tallies = [np.zeros(v.size, dtype=np.int64) if v is not None else None for v in known]
    parts: list[list[Any]] = [[] for _ in ks]
    gathered, budget = 0, n // _GATHER_SHARE
    for block in magnitudes:
        flat = _patterns(block).numpy()
        for i, (lo, hi) in enumerate(windows):
            values = known[i]
            if values is not None:
                under = np.count_nonzero(flat < lo) if lo is not None else 0
                over = np.count_nonzero(flat > hi) if hi is not None else 0
                each = [np.count_nonzero(flat == v) for v in values]
                if sum(each) == flat.size - under - over:
                    below[i] += under
                    tallies[i] += each
                    continue
                known[i] = None  # a value the sample missed: gather this window from here on
            inside = flat <= hi if hi is not None else None
            if lo is not None:
                at_least = flat >= lo
                below[i] += flat.size - int(np.count_nonzero(at_least))
                inside = at_least if inside is None else inside & at_least
            values = flat if inside is None else flat.take(np.flatnonzero(inside))
            if counts[i] is not None:
                counts[i] += np.bincount(values - lo, minlength=counts[i].size)
            else:
                parts[i].append(values)
                gathered += values.size
                if gathered > budget:
                    return None
    out = []
    for i, k in enumerate(ks):
        rank = k - below[i]
        tally, lo = tallies[i], windows[i][0]
        if counts[i] is not None:
            assert lo is not None
            if tally is not None:
                counts[i][seen_values[i] - lo] += tally
            cumulative = counts[i].cumsum()
            if not 1 <= rank <= int(cumulative[-1]):
                return None
            out.append(_as_float(lo + int(np.searchsorted(cumulative, rank)), dtype))
            continue
        if tally is not None:  # the counted values, and whatever was gathered after a miss
            values = np.concatenate([seen_values[i], *parts[i]])
            weights = np.concatenate([tally, np.ones(values.size - tally.size, dtype=np.int64)])
            order = np.argsort(values, kind="stable")
            cumulative = weights[order].cumsum()
            if not 1 <= rank <= int(cumulative[-1]):
                return None
            out.append(_as_float(int(values[order[np.searchsorted(cumulative, rank)]]), dtype))
            continue
        inside = torch.from_numpy(np.concatenate(parts[i]))
        if not 1 <= rank <= inside.numel():
            return None
        out.append(kth_smallest_of(inside.view(dtype), [rank])[0])
    return out


def _descend(inside: Tensor, shift: int, k: int, value: int, dtype: torch.dtype) -> float:
    """The k-th smallest (1-based) pattern among ``inside``, whose digits above ``shift`` are all
    ``value``: radix select down the remaining digits, one bincount and one bucket each."""
    while shift:
        shift -= _DIGIT
        digits = (inside >> shift) & (_BINS - 1)
        digit, k = _locate(torch.bincount(digits, minlength=_BINS), k)
        value = (value << _DIGIT) | digit
        if shift:
            inside = _bucket(inside, digits, digit)
    return _as_float(value, dtype)


def _bucket(patterns: Tensor, digits: Tensor, digit: int) -> Tensor:
    """The patterns whose digit is ``digit``, in order. On CPU through numpy: the positions of the
    matches, then a gather of just those (0.54 ns an entry on 11.5M entries; numpy's boolean index
    takes 1.1 and torch's 2.2, and this selection otherwise spends most of its time here)."""
    if patterns.device.type == "cpu":
        return torch.from_numpy(patterns.numpy().take(np.flatnonzero(digits.numpy() == digit)))
    return patterns[digits == digit]


def _top_digits(patterns: Tensor) -> Tensor:
    """The top 16 bits of each pattern: its most significant int16, copied out (cheaper than a shift)."""
    if patterns.dtype == torch.int16:
        return patterns
    words = patterns.view(torch.int16).view(patterns.numel(), -1)
    return words[:, -1 if sys.byteorder == "little" else 0].contiguous()


def magnitude_threshold(x: Tensor, density: float) -> float:
    """The k-th largest |x| with k = ⌊density·numel⌋: inf keeps nothing, 0 keeps everything."""
    return threshold_of_magnitudes(x.detach().abs(), density)


def threshold_of_magnitudes(magnitude: Magnitudes, density: float) -> float:
    """:func:`magnitude_threshold` for a tensor of magnitudes already at hand (saves a pass)."""
    n = magnitude.numel()
    k = kept_count(density, n)
    if k == 0:
        return math.inf
    if k == n:
        return 0.0
    return kth_smallest(magnitude, n - k + 1)


def keep_top(x: Tensor, threshold: float) -> Tensor:
    """x where |x| ≥ threshold, else 0.

    One pass: ``hardshrink`` keeps |x| > λ, and with λ the float just below the threshold (in x's
    dtype) that is |x| ≥ threshold. A threshold x's dtype cannot hold exactly uses a mask instead."""
    if x.dtype in (torch.float32, torch.float64):
        exact = torch.tensor(threshold, dtype=x.dtype)
        if float(exact) == threshold or math.isinf(threshold):
            below = torch.nextafter(exact, torch.tensor(-math.inf, dtype=x.dtype))
            return torch.nn.functional.hardshrink(x, float(below))
    return x * (x.abs() >= threshold)


def band_thresholds(
    x: Tensor | BlockMagnitudes, *, density: float, gamma: float, magnitudes: bool = False
) -> tuple[float | None, float] | None:
    """Model Breadcrumbs' band of kept magnitudes as (lower, upper): keep lower < |x| ≤ upper
    (no lower cut when lower is None); None keeps nothing. Drops the top ``gamma`` fraction
    (outliers) and the bottom, keeping ``density``; when both exceed the tensor the outlier cut
    shrinks (mergekit). ``magnitudes``: x already holds |x| (saves a tensor-sized temporary), as
    :class:`BlockMagnitudes` always do."""
    n = x.numel()
    keep = kept_count(density, n)
    top = kept_count(gamma, n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    if keep == 0:
        return None
    mags = x if isinstance(x, BlockMagnitudes) else x.detach() if magnitudes else x.detach().abs()
    if bottom == 0:
        return None, kth_smallest(mags, keep)
    lower, upper = kth_smallest_of(mags, [bottom, bottom + keep])
    return lower, upper


def keep_between(x: Tensor, band: tuple[float | None, float] | None) -> Tensor:
    """x where lower < |x| ≤ upper (a band from :func:`band_thresholds`), else 0.

    Branch-free: ``hardshrink(x, λ)`` is x where |x| > λ, so x minus the part above ``upper`` (minus
    the part at or below ``lower``) leaves the band exactly. Thresholds x's dtype cannot hold use masks."""
    if band is None:
        return torch.zeros_like(x)
    lower, upper = band
    if x.dtype in (torch.float32, torch.float64) and _holds(x.dtype, lower) and _holds(x.dtype, upper):
        above = torch.nn.functional.hardshrink(x, upper)
        kept = x if lower is None else torch.nn.functional.hardshrink(x, lower)
        return kept - above
    mask = x.abs() <= upper
    if lower is not None:
        mask &= x.abs() > lower
    return x * mask


def _holds(dtype: torch.dtype, value: float | None) -> bool:
    return value is None or math.isinf(value) or float(torch.tensor(value, dtype=dtype)) == value


def keep_band(x: Tensor, *, density: float, gamma: float) -> Tensor:
    """Model Breadcrumbs' mask applied: :func:`keep_between` of :func:`band_thresholds`."""
    return keep_between(x, band_thresholds(x, density=density, gamma=gamma))


_BLOCK = 1 << 19  # elements per row block of the block-wise passes below


def row_blocks(shape: Sequence[int], block: int | None = None) -> list[Any]:
    """Row ranges (slices) of about ``block`` (default ``_BLOCK``) elements covering a tensor of
    ``shape``; a 0-d or 1-d tensor is one block (``...``)."""
    if len(shape) < 2 or not shape[0]:
        return [...]
    rows = max(1, (block or _BLOCK) // max(1, math.prod(shape[1:])))
    return [slice(start, start + rows) for start in range(0, shape[0], rows)]


def keep_masks(
    shape: Sequence[int], densities: Sequence[float], generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """DARE's keep-masks, one per model, each entry kept with probability ``density``.

    On the CPU each model's mask compares a stream of 32-bit uniform integers with
    ``ceil(density · 2³²)``: numpy's PCG64DXSM, seeded by one draw of ``generator``, so the same
    generator state gives the same masks on any machine. It is three times the speed of
    ``torch.rand`` (Mersenne Twister), which took a third of a streamed DARE merge. The stream is
    drawn in blocks of an even number of entries, so the masks do not depend on the block size and
    no temporary is of the tensor's size. On another device: ``torch.rand(shape) < density`` there."""
    masks = []
    for density in densities:
        if not 0.0 <= density <= 1.0:
            raise ValueError(f"density must lie in [0, 1] (not {density!r})")
        mask = torch.empty(tuple(shape), dtype=torch.bool, device=device)
        if mask.device.type != "cpu":
            for rows in row_blocks(shape):
                block = mask[rows]
                torch.lt(torch.rand(block.shape, generator=generator, device=device), density, out=block)
        else:
            _uniform_below(mask.view(-1).numpy(), density, generator)
        masks.append(mask)
    return masks


def _uniform_below(out: Any, density: float, generator: torch.Generator | None) -> None:
    """``out[i] = u[i] < ceil(density · 2³²)`` for a stream ``u`` of uniform 32-bit integers from a
    PCG64DXSM seeded by one 63-bit draw of ``generator`` (the global generator when None)."""
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))  # drawn even when not needed below:
    if density >= 1.0 or density <= 0.0:  # the next model's stream must not depend on this density
        out[:] = density >= 1.0
        return
    bits = np.random.PCG64DXSM(seed)
    threshold = np.uint32(min(2**32 - 1, math.ceil(density * 2**32)))
    step = _BLOCK - _BLOCK % 2
    for start in range(0, out.size, step):
        part = out[start : start + step]
        np.less(bits.random_raw((part.size + 1) // 2).view(np.uint32)[: part.size], threshold, out=part)


def as_multiplier(mask: Tensor) -> Tensor:
    """A boolean mask as 0/1 integers to multiply by: the same products (x·1 = x, x·0 = ±0, NaN·0 =
    NaN) at a third of the cost, torch converting a bool operand to float on every multiply."""
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def drop_l1_factor(delta: Tensor | BlockMagnitudes, mask: Tensor) -> float:
    """‖delta‖₁ / ‖delta·mask‖₁ (1 when the kept norm is below 1e-7), summed block by block in
    float64: DARE's ``rescale = l1`` multiplier, known before any row chunk is merged. ``delta`` may
    be the task vector's magnitudes as :class:`BlockMagnitudes` (in flat order, blocks of any size:
    each meets the next entries of the mask)."""
    if delta.numel() != mask.numel() or (isinstance(delta, Tensor) and delta.shape != mask.shape):
        shape = list(delta.shape) if isinstance(delta, Tensor) else f"{delta.numel()} entries"
        raise ValueError(f"the task vector ({shape}) does not match its mask ({list(mask.shape)})")
    magnitudes = delta if isinstance(delta, BlockMagnitudes) else (delta[rows].abs() for rows in row_blocks(mask.shape))
    kept = as_multiplier(mask).reshape(-1)
    before = after = 0.0
    offset = 0
    for magnitude in magnitudes:
        n = magnitude.numel()
        before += float(magnitude.sum(dtype=torch.float64))
        after += float(magnitude.mul_(kept[offset : offset + n].view(magnitude.shape)).sum(dtype=torch.float64))
        offset += n
    return before / after if after > 1e-7 else 1.0


def apply_drop(delta: Tensor, mask: Tensor, density: float, rescale: str, factor: float | None = None) -> Tensor:
    """DARE on one task vector: the kept entries of ``delta``, rescaled by 1/density (``inverse``),
    by the L1 factor (``l1``; computed here when not given) or not at all (``none``)."""
    kept = delta * as_multiplier(mask)
    if rescale == "inverse":
        return kept / density if density > 0 else kept
    if rescale == "l1":
        return kept * (factor if factor is not None else drop_l1_factor(delta, mask))
    return kept


def _float32_high_digits(x: Tensor) -> tuple[Tensor, bool]:
    """The high 16 bits of each |x|'s float32 pattern, and whether they are exact (x is bf16)."""
    magnitudes, exact = x.detach().abs(), x.dtype == torch.bfloat16
    return _top_digits(_patterns(magnitudes if exact else magnitudes.to(torch.float32))), exact  # bf16: high half


class MagnitudeThreshold:
    """Exact whole-model top-k magnitude threshold, fed tensor by tensor in two passes.

    >>> th = MagnitudeThreshold(0.2)
    >>> for t in deltas: th.observe(t)
    >>> for t in deltas: th.refine(t)     # skipped when th.needs_refine is False (e.g. bf16)
    >>> th.value
    Values are ranked at float32 precision.
    """

    def __init__(self, density: float):
        kept_count(density, 1)  # validates
        self.density = density
        self._n = 0
        self._high = torch.zeros(_BINS, dtype=torch.int64)
        self._low = torch.zeros(_BINS, dtype=torch.int64)
        self._exact = True  # every tensor so far was bf16: its float32 patterns end in 16 zero bits
        self._bucket: int | None = None
        self._rank = 0  # rank of the k-th largest among the bucket's entries, counted from the smallest
        self._value: float | None = None

    def observe(self, x: Tensor) -> None:
        if self._bucket is not None or self._value is not None:
            raise RuntimeError("observe() after the first pass finished")
        high, exact = _float32_high_digits(x)
        self._n += high.numel()
        self._exact &= exact
        self._high += torch.bincount(high, minlength=_BINS).to(self._high.device)

    @property
    def needs_refine(self) -> bool:
        self._finish_first_pass()
        return self._value is None

    def refine(self, x: Tensor) -> None:
        if not self.needs_refine:
            return
        patterns = _patterns(x.detach().abs().to(torch.float32))
        inside = _bucket(patterns, patterns >> _DIGIT, self._bucket)  # type: ignore[arg-type]
        self._low += torch.bincount(inside & (_BINS - 1), minlength=_BINS).to(self._low.device)

    @property
    def value(self) -> float:
        if self.needs_refine:
            low = _locate(self._low, self._rank)[0]
            self._value = _as_float((self._bucket << _DIGIT) | low, torch.float32)  # type: ignore[operator]
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
        else:  # the k-th largest is the (n - k + 1)-th smallest
            self._bucket, self._rank = _locate(self._high, self._n - k + 1)
            if self._exact:
                self._value = _as_float(self._bucket << _DIGIT, torch.float32)


def model_threshold(tensors: Callable[[], Iterable[Tensor]], density: float) -> float:
    """Whole-model threshold of an in-memory model: ``tensors()`` is called once per pass."""
    th = MagnitudeThreshold(density)
    for t in tensors():
        th.observe(t)
    if th.needs_refine:
        for t in tensors():
            th.refine(t)
    return th.value
