"""Architectures the merge dialect adds: output ensembles, a small ResNet for permutation studies,
and the partially zipped MLP that ZipIt! produces.

Every multi-member network returns log of the mean of its members' softmax outputs, so
``evaluate``'s cross-entropy is the negative log-likelihood of the averaged prediction and its
argmax the ensemble's vote — they evaluate exactly like any other classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...registry import NoParams
from ...run.context import StepContext
from ...values import Model
from ..models.builders import MLP, architecture, build
from .specs import ResNetParams

__all__ = ["Ensemble", "ResNet", "ZippedMLP", "ensemble", "mean_of_softmax", "resnet"]


def mean_of_softmax(logits: list[torch.Tensor]) -> torch.Tensor:
    """log(mean_i softmax(logits_i)), computed stably."""
    stacked = torch.stack([torch.log_softmax(z, dim=-1) for z in logits])  # (members, N, C)
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(logits))))


class Ensemble(nn.Module):
    def __init__(self, members: list[dict[str, Any]]):
        super().__init__()
        self.members = nn.ModuleList(build(arch) for arch in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, C) log-probabilities
        return mean_of_softmax([m(x) for m in self.members])


@architecture("ensemble")
def _ensemble(members: list[dict[str, Any]]) -> nn.Module:
    return Ensemble(members)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":  # over (C, H, W) with a per-channel affine: commutes with channel permutations
        return nn.GroupNorm(1, channels)
    raise ValueError(f"norm must be batchnorm or layernorm (not {kind!r})")


class Block(nn.Module):
    """conv-norm-relu-conv-norm plus the identity, then relu (He et al. 2016, basic block)."""

    def __init__(self, width: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm1 = _norm(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, W, H, H) -> same
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(h)))


class ResNet(nn.Module):
    """A small ResNet for square single-channel images given as flat vectors (digits: 8×8)."""

    def __init__(self, side: int, width: int, blocks: int, out_features: int, norm: str = "batchnorm"):
        super().__init__()
        self.side = side
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), _norm(norm, width), nn.ReLU())
        self.blocks = nn.ModuleList(Block(width, norm) for _ in range(blocks))
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, side²) -> (N, C)
        h = self.stem(x.reshape(-1, 1, self.side, self.side))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(dim=(2, 3)))


@architecture("resnet")
def _resnet(side: int, width: int, blocks: int, out_features: int, norm: str = "batchnorm") -> nn.Module:
    return ResNet(side, width, blocks, out_features, norm)


class ZippedMLP(nn.Module):
    """A shared trunk of zipped layers followed by one head per source model (partial zipping)."""

    def __init__(self, in_features: int, trunk: list[int], heads: list[dict[str, Any]]):
        super().__init__()
        widths = [in_features, *trunk]
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.heads = nn.ModuleList(MLP(widths[-1], list(h["hidden"]), h["out_features"]) for h in heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, C)
        h = x.flatten(1)
        for layer in self.trunk:
            h = torch.relu(layer(h))
        if len(self.heads) == 1:
            return self.heads[0](h)  # type: ignore[no-any-return]
        return mean_of_softmax([head(h) for head in self.heads])


@architecture("zipped_mlp")
def _zipped(in_features: int, trunk: list[int], heads: list[dict[str, Any]]) -> nn.Module:
    return ZippedMLP(in_features, list(trunk), list(heads))


def ensemble(ctx: StepContext, params: NoParams, *, models: list[Model]) -> Model:
    """Output averaging as a model: one module that runs every member and averages their softmax."""
    state = {f"members.{i}.{k}": v for i, m in enumerate(models) for k, v in m.state.items()}
    return Model(arch={"type": "ensemble", "members": [dict(m.arch) for m in models]}, state=state,
                 info={"ensemble": {"members": ctx.input_names.get("models")}})


def resnet(ctx: StepContext, params: ResNetParams) -> Model:
    arch = {"type": "resnet", **params.model_dump()}
    torch.manual_seed(ctx.seed)
    net = build(arch)
    return Model(arch=arch, state={k: v.detach().clone() for k, v in net.state_dict().items()})
