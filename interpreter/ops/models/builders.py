"""Architectures by name: a Model's ``arch`` dict is ``{"type": NAME, **kwargs}`` and
:func:`build` turns it back into an ``nn.Module``. Other capabilities add builders with
:func:`architecture` (mazes' ``dt_net``, CNNs for permutation studies, …)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...values import CheckpointRef, Model

__all__ = ["architecture", "build", "build_module", "MLP", "ARCH_MODULES"]

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

#: Modules that register architectures when imported (kept lazy: importing them costs time).
ARCH_MODULES: list[str] = ["mlspec.extrap.models", "mlspec.ops.merge.networks"]


def architecture(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[name] = fn
        return fn

    return deco


def build_module(model: Model | CheckpointRef) -> nn.Module:
    """A fresh ``nn.Module`` of the model's architecture holding its weights (a checkpoint on disk
    refuses with a clear message)."""
    net = build(model.arch)
    net.load_state_dict(model.state)
    return net


def build(arch: dict[str, Any]) -> nn.Module:
    kind = arch["type"]
    if kind not in _BUILDERS:
        for module in ARCH_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name is None or not module.startswith(exc.name):
                    raise
    if kind not in _BUILDERS:
        raise ValueError(f"unknown architecture {kind!r} (known: {', '.join(sorted(_BUILDERS))})")
    kwargs = {k: v for k, v in arch.items() if k != "type"}
    return _BUILDERS[kind](**kwargs)


class MLP(nn.Module):
    """Fully connected ReLU network: ``in -> hidden[0] -> ... -> hidden[-1] -> out``.

    Layers are named ``layers.{i}`` (``nn.Linear``) so permutation specs can address them.
    """

    def __init__(self, in_features: int, hidden: list[int], out_features: int, norm: str = "none"):
        super().__init__()
        widths = [in_features, *hidden, out_features]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.norms = nn.ModuleList(
            (nn.LayerNorm(w) if norm == "layernorm" else nn.BatchNorm1d(w) if norm == "batchnorm" else nn.Identity())
            for w in hidden
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, in) -> (N, out)
        x = x.flatten(1)
        for layer, norm in zip(self.layers[:-1], self.norms):
            x = torch.relu(norm(layer(x)))
        return self.layers[-1](x)


@architecture("mlp")
def _mlp(in_features: int, hidden: list[int], out_features: int, norm: str = "none") -> nn.Module:
    return MLP(in_features, list(hidden), out_features, norm)
