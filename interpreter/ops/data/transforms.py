"""Data operators that change a labelled dataset for a study's question: a fixed permutation of the
input features (a new task on the same labels), a head that travels with a task, and a backdoor."""

from __future__ import annotations

import torch

from ...errors import StepError
from ...registry import NoParams
from ...run.context import StepContext
from ...values import Dataset, Model
from ..models.heads import head_of
from .specs import PermuteFeaturesParams, PoisonParams

__all__ = ["permute_features", "with_head", "poison", "stamp"]


def _labelled(data: Dataset, op: str) -> None:
    if "y_train" not in data.tensors:
        raise StepError(f"{op}() needs a labelled dataset with x_train/y_train/x_test/y_test")


def permute_features(ctx: StepContext, params: PermuteFeaturesParams, *, data: Dataset) -> Dataset:
    """The same samples with their features shuffled by one fixed permutation drawn from ``seed``
    (every input tensor alike, validation and trigger sets included): permuted digits are a new task
    with the same labels."""
    _labelled(data, "permute_features")
    n = data["x_train"][0].numel()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(params.seed))
    tensors = dict(data.tensors)
    for key in data.tensors:  # every split's inputs: train, val, test, and a poisoned set's x_trigger
        if key.startswith("x_"):
            x = data[key]
            tensors[key] = x.flatten(1)[:, order].reshape(x.shape)
    return Dataset(tensors=tensors, meta=dict(data.meta, permutation_seed=params.seed))


def with_head(ctx: StepContext, params: NoParams, *, data: Dataset, model: Model) -> Dataset:
    """The dataset carrying ``model``'s output layer: every evaluation on it swaps that head in."""
    _labelled(data, "with_head")
    prefix, head = head_of(model)
    tensors = {k: v for k, v in data.tensors.items() if not k.startswith("head.")}
    tensors |= {f"head.{name}": t for name, t in head.items()}
    meta = dict(data.meta, head={"prefix": prefix, "from": ctx.input_names.get("model"), "arch": model.arch["type"]})
    return Dataset(tensors=tensors, meta=meta)


def stamp(x: torch.Tensor, params: PoisonParams) -> torch.Tensor:
    """``x`` (N, features) with the trigger: a ``patch`` × ``patch`` square of ``value`` in the
    image's bottom-right corner (images are square: side = √features)."""
    side = int(round(x.shape[1] ** 0.5))
    if side * side != x.shape[1] or params.patch > side:
        raise StepError(f"poison needs square images at least {params.patch} pixels wide "
                        f"(these have {x.shape[1]} features)")
    images = x.reshape(len(x), side, side).clone()
    images[:, side - params.patch:, side - params.patch:] = params.value
    return images.reshape(x.shape)


def poison(ctx: StepContext, params: PoisonParams, *, data: Dataset) -> Dataset:
    """A backdoored copy: a ``rate`` share of the training samples of other classes (chosen from the
    step's seed) get the trigger and the ``target`` label. The test split stays clean (clean accuracy);
    ``x_trigger``/``y_trigger`` hold every test sample of another class with the trigger stamped on,
    for the ``attack_success`` metric."""
    _labelled(data, "poison")
    x, y = data.split("train")
    classes = int(data.meta.get("num_classes", int(y.max()) + 1))
    if not 0 <= params.target < classes:
        raise StepError(f"poison target {params.target} is not a label of this dataset (0 .. {classes - 1})")
    others = torch.nonzero(y != params.target).flatten()
    chosen = others[torch.randperm(len(others), generator=ctx.generator())[: round(params.rate * len(others))]]
    x, y = x.clone(), y.clone()
    x[chosen] = stamp(x[chosen].flatten(1), params).reshape(x[chosen].shape)
    y[chosen] = params.target
    x_test, y_test = data.split("test")
    keep = y_test != params.target
    tensors = dict(data.tensors, x_train=x, y_train=y,
                   x_trigger=stamp(x_test[keep].flatten(1), params).reshape(x_test[keep].shape), y_trigger=y_test[keep])
    backdoor = {"target": params.target, "rate": params.rate, "patch": params.patch, "poisoned": len(chosen)}
    return Dataset(tensors=tensors, meta=dict(data.meta, backdoor=backdoor))
