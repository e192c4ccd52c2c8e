"""Model construction and the classifier training loop shared by every operator that trains."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mlspec.errors import StepError
from mlspec.ops.evaluation import check_fits
from mlspec.ops.models.arch import build, build_module
from mlspec.ops.models.specs import MLPParams, TrainParams
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model

__all__ = ["mlp", "train", "fit", "make_optimizer", "ensure_finite"]


def mlp(ctx: StepContext, params: MLPParams) -> Model:
    arch = {"type": "mlp", "in_features": params.in_features, "hidden": list(params.hidden),
            "out_features": params.out_features, "norm": params.norm}
    torch.manual_seed(ctx.seed)
    net = build(arch)
    return Model(arch=arch, state={k: v.detach().clone() for k, v in net.state_dict().items()})


def ensure_finite(loss: float, *, epoch: int, lr: float) -> None:
    """Stop a diverged run with a message a user can act on, instead of writing NaN results."""
    if not math.isfinite(loss):
        raise StepError(f"training diverged in epoch {epoch}: the loss is {loss} (lr = {lr}); "
                        "lower the learning rate")


def make_optimizer(module: nn.Module, params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "adam":
        return torch.optim.AdamW(module.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    return torch.optim.SGD(module.parameters(), lr=params.lr, momentum=params.momentum,
                           weight_decay=params.weight_decay)


def fit(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    params: TrainParams,
    *,
    generator: torch.Generator,
    device: str = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Mini-batch cross-entropy training; returns the mean training loss of each epoch."""
    module.to(device).train()
    opt = make_optimizer(module, params)
    history: list[float] = []
    for epoch in range(params.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), params.batch):
            idx = order[start : start + params.batch]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append(total / max(1, len(x)))
        ensure_finite(history[-1], epoch=epoch + 1, lr=params.lr)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return history


def train(ctx: StepContext, params: TrainParams, *, model: Model, on: Dataset) -> Model:
    torch.manual_seed(ctx.seed)  # dropout and friends, if an architecture has them
    net = build_module(model)
    x, y = on.split("train")
    check_fits(model, x, y, repr(ctx.input_names.get("on", "the data")))
    with ctx.progress(params.epochs, "train") as advance:
        history = fit(net, x, y, params, generator=ctx.generator(), device=ctx.device,
                      on_epoch=lambda _e, loss: advance(loss=loss))
    state = {k: v.detach().to("cpu").clone() for k, v in net.state_dict().items()}
    return model.with_state(state, train_loss=history)
