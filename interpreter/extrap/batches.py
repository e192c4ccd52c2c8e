"""From stored task tensors to model-ready batches on a device, and the device's fast path.

Maze datasets store compact grids (``grid``, ``path``: ``N x (n+2) x (n+2)`` uint8) and are upscaled
to DeepThinking pixels on the device, batch by batch; prefix-sum datasets store ``inputs``/``targets``
as they are. Every batch comes with a *mask* of the pixels that count (non-wall for mazes), which the
loss and the per-pixel accuracy use.

On CUDA, convolutions run in bf16 autocast with channels-last memory; on CPU everything stays float32
(the path the tests check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from .mazes import to_pixels

__all__ = ["Batch", "batch", "batches", "count", "autocast", "prepare_model", "is_maze"]


class Batch(NamedTuple):
    x: torch.Tensor  # (B, C, ...) float inputs
    y: torch.Tensor  # (B, ...) int64 targets
    mask: torch.Tensor  # (B, ...) bool: pixels that count
    grid: torch.Tensor | None  # (B, n+2, n+2) compact maze grid, for path checks


def is_maze(tensors: dict[str, torch.Tensor]) -> bool:
    return "grid" in tensors


def count(tensors: dict[str, torch.Tensor]) -> int:
    return len(tensors["grid"] if is_maze(tensors) else tensors["inputs"])


def batch(tensors: dict[str, torch.Tensor], index: torch.Tensor | slice, device: str) -> Batch:
    """The samples at ``index`` as model inputs on ``device``."""
    if is_maze(tensors):
        grid = tensors["grid"][index].to(device, non_blocking=True)
        x, y = to_pixels(grid, tensors["path"][index].to(device, non_blocking=True))
        mask = x.amax(1) > 0
        if device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, mask, grid)
    x = tensors["inputs"][index].to(device).float()
    y = tensors["targets"][index].to(device).long()
    return Batch(x, y, torch.ones_like(y, dtype=torch.bool), None)


def batches(tensors: dict[str, torch.Tensor], size: int, device: str) -> Iterator[Batch]:
    """Consecutive batches of at most ``size`` samples, in order."""
    n = count(tensors)
    for start in range(0, n, size):
        yield batch(tensors, slice(start, min(n, start + size)), device)


def autocast(device: str) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA; nothing on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: str) -> nn.Module:
    """Move to ``device``; 2-D nets use channels-last memory on CUDA (faster convolutions)."""
    model = model.to(device)
    if device.startswith("cuda") and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model
