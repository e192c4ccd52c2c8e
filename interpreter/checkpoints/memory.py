"""The C allocator's policy for the streamed merge's temporaries.

A row chunk's kernels allocate and free a dozen temporaries of 0.5-2 MB each, chunk after chunk.
glibc serves blocks above its mmap threshold (128 KB at start, raised as large blocks are freed)
with fresh ``mmap`` calls, and gives the top of a heap back to the system once more than twice that
is free. Either way the next chunk's temporaries land on pages never touched, and every 4 KiB page
faults: measured here, the TIES kernel on 512K-entry chunks ran at 36 ns an entry, against 4.5 ns
once freed memory is kept for reuse. :func:`keep_freed_memory` sets both thresholds so that blocks
up to 32 MB (glibc's ceiling for the mmap threshold) come from the heaps and stay there.

While a merge runs the process keeps what it frees rather than handing it back, so its resident
size stays at its peak, which is what a merge's peak memory measures anyway; :func:`give_back`
returns it when the merge ends (:func:`reused_while_merging` does both). Large tensors come from
:func:`empty`. Where the C library is not glibc the allocator settings do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["keep_freed_memory", "give_back", "reused_while_merging", "empty"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def _libc(name: str, *argtypes: Any) -> Any:
    """The C library's function ``name`` returning an int, on Linux; None elsewhere or when absent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = list(argtypes), ctypes.c_int
    return function


@functools.cache
def keep_freed_memory() -> bool:
    """Keep blocks up to 32 MB in the heaps once freed (glibc ``mallopt``); True when it applied.
    Once per process: the setting is process-wide and lasts."""
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def give_back() -> bool:
    """Hand the freed memory that :func:`keep_freed_memory` kept back to the system (glibc
    ``malloc_trim``): a merge's chunk temporaries are done with once it ends, and a run that goes on
    to train or evaluate should not carry them. True when it applied."""
    malloc_trim = _libc("malloc_trim", ctypes.c_size_t)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


@contextmanager
def reused_while_merging() -> Iterator[None]:
    """:func:`keep_freed_memory` for the block, :func:`give_back` after it (also on an error)."""
    keep_freed_memory()
    try:
        yield
    finally:
        give_back()


#: Tensors this large come from numpy, which asks the kernel for transparent huge pages on them.
_HUGE = 4 << 20


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU; from 4 MiB up in memory numpy allocated.

    Blocks above the mmap threshold are mapped afresh for every tensor, and each 4 KiB page of
    them faults on first touch: reading a 65 MB embedding took 16K faults, and two threads faulting
    at once queue on the process's memory map. numpy advises huge pages for large arrays
    (``madvise(MADV_HUGEPAGE)``), so the same tensor takes about 32 faults. The tensor keeps the
    array alive; its bytes are torch's to view as any dtype."""
    size = dtype.itemsize * math.prod(shape)
    if size < _HUGE:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.empty(size, dtype=np.uint8)).view(dtype).view(shape)
