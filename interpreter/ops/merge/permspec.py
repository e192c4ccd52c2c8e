"""Permutation specs: which tensor axes each hidden-unit permutation acts on, per architecture.

A permutation P of one group of hidden units acts on every (tensor, axis) the spec lists for that
group; permuting all of them at once leaves the network's function unchanged (Ainsworth et al.
2023). ``features`` names the modules whose outputs (channels on dim 1) carry each group's units —
what activation matching correlates and REPAIR re-normalises; ``affines`` names the per-channel
affine (weight, bias) that produces each feature site, where REPAIR folds its correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...errors import StepError

__all__ = ["PermSpec", "identity_perms", "permute_state", "spec_for"]

_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class PermSpec:
    groups: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # group -> [(tensor, axis)]
    features: dict[str, list[str]] = field(default_factory=dict)  # group -> feature modules
    affines: dict[str, tuple[str, str]] = field(default_factory=dict)  # feature module -> (weight, bias)

    def axes(self) -> dict[str, list[tuple[int, str]]]:
        """tensor -> [(axis, group)]"""
        out: dict[str, list[tuple[int, str]]] = {}
        for group, members in self.groups.items():
            for name, axis in members:
                out.setdefault(name, []).append((axis, group))
        return out


def _norm_members(prefix: str, state: dict[str, Tensor]) -> list[tuple[str, int]]:
    return [(f"{prefix}.{t}", 0) for t in _NORM_TENSORS if f"{prefix}.{t}" in state]


def _mlp(arch: dict[str, Any], state: dict[str, Tensor]) -> PermSpec:
    spec = PermSpec()
    for i in range(len(arch["hidden"])):
        group = f"hidden{i}"
        norm = _norm_members(f"norms.{i}", state)
        spec.groups[group] = [(f"layers.{i}.weight", 0), (f"layers.{i}.bias", 0), *norm, (f"layers.{i + 1}.weight", 1)]
        spec.features[group] = [f"norms.{i}"]
        spec.affines[f"norms.{i}"] = (f"norms.{i}.weight", f"norms.{i}.bias") if norm else (
            f"layers.{i}.weight", f"layers.{i}.bias")
    return spec


def _resnet(arch: dict[str, Any], state: dict[str, Tensor]) -> PermSpec:
    spec = PermSpec()
    residual = [("stem.0.weight", 0), *_norm_members("stem.1", state), ("head.weight", 1)]
    spec.features["residual"] = ["stem"]
    spec.affines["stem.1"] = ("stem.1.weight", "stem.1.bias")
    for j in range(arch["blocks"]):
        b = f"blocks.{j}"
        residual += [(f"{b}.conv2.weight", 0), *_norm_members(f"{b}.norm2", state), (f"{b}.conv1.weight", 1)]
        spec.features["residual"].append(b)
        spec.groups[f"block{j}"] = [(f"{b}.conv1.weight", 0), *_norm_members(f"{b}.norm1", state), (f"{b}.conv2.weight", 1)]
        spec.features[f"block{j}"] = [f"{b}.norm1"]
        spec.affines[f"{b}.norm1"] = (f"{b}.norm1.weight", f"{b}.norm1.bias")
        spec.affines[f"{b}.norm2"] = (f"{b}.norm2.weight", f"{b}.norm2.bias")
    spec.groups["residual"] = residual
    return spec


_SPECS = {"mlp": _mlp, "resnet": _resnet}


def spec_for(arch: dict[str, Any], state: dict[str, Tensor]) -> PermSpec:
    kind = arch.get("type")
    if kind not in _SPECS:
        raise StepError(f"no permutation spec for architecture {kind!r} (supported: {', '.join(sorted(_SPECS))})")
    return _SPECS[kind](arch, state)


def identity_perms(spec: PermSpec, state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {g: torch.arange(state[members[0][0]].shape[members[0][1]]) for g, members in spec.groups.items()}


def permute_state(
    spec: PermSpec, state: dict[str, Tensor], perms: dict[str, Tensor], *, skip: str | None = None
) -> dict[str, Tensor]:
    """Apply every permutation (except group ``skip``) along its axes: new[i] = old[perm[i]]."""
    out = dict(state)
    for name, pairs in spec.axes().items():
        tensor = state[name]
        for axis, group in pairs:
            if group != skip:
                tensor = tensor.index_select(axis, perms[group])
        out[name] = tensor
    return out
