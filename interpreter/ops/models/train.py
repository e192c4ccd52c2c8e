"""Model construction and the classifier training loop shared by every operator that trains."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset, Model
from ..evaluation import check_fits
from .builders import build, build_module
from .specs import MLPParams, TrainParams

__all__ = ["mlp", "train", "fit", "make_optimizer", "ensure_finite", "optimizer_step"]


def mlp(ctx: StepContext, params: MLPParams) -> Model:
    arch = {"type": "mlp", "in_features": params.in_features, "hidden": list(params.hidden),
            "out_features": params.out_features, "norm": params.norm}
    torch.manual_seed(ctx.seed)
    net = build(arch)
    return Model(arch=arch, state={k: v.detach().clone() for k, v in net.state_dict().items()})


#: A training loss this many times above its value at the start (at least 1) has diverged.
DIVERGED_FACTOR = 100.0


def _diverged(epoch: int, lr: float, what: str) -> StepError:
    return StepError(f"training diverged in epoch {epoch}: {what} (lr = {lr}); lower the learning rate")


def ensure_finite(loss: float, *, epoch: int, lr: float, start: float | None = None) -> None:
    """Stop a diverged run with a message a user can act on, instead of writing NaN results — or
    results at chance level: a loss far above its starting value ``start`` has diverged too."""
    if not math.isfinite(loss):
        raise _diverged(epoch, lr, f"the loss is {loss}")
    if start is not None and loss > DIVERGED_FACTOR * max(start, 1.0):
        raise _diverged(epoch, lr, f"the loss grew from {start:.4g} to {loss:.4g}")


def optimizer_step(opt: torch.optim.Optimizer, *, epoch: int, lr: float) -> None:
    """``opt.step()``; an update too large for a float is the same divergence, in the same words."""
    try:
        opt.step()
    except RuntimeError as exc:
        if "overflow" not in str(exc):
            raise
        raise _diverged(epoch, lr, "an update overflowed") from None


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
    initial: float | None = None  # the loss before the first update
    for epoch in range(params.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), params.batch):
            idx = order[start : start + params.batch]
            xb, yb = x[idx].to(device), y[idx].to(device)
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            optimizer_step(opt, epoch=epoch + 1, lr=params.lr)
            initial = loss.item() if initial is None else initial
            total += loss.item() * len(idx)
        history.append(total / max(1, len(x)))
        ensure_finite(history[-1], epoch=epoch + 1, lr=params.lr, start=initial)
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
