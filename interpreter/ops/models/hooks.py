"""Reading what a network computes inside: one forward pass with temporary hooks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["run_with_hooks"]

Hook = Callable[[nn.Module, tuple[Tensor, ...], Any], None]


@torch.no_grad()
def run_with_hooks(net: nn.Module, x: Tensor, hooks: list[tuple[nn.Module, Hook]]) -> None:
    """Run ``net`` in eval mode on ``x`` with forward ``hooks`` attached; they are always removed."""
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    net.eval()
    try:
        net(x)
    finally:
        for handle in handles:
            handle.remove()
