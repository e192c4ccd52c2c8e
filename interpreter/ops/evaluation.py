"""Loss and accuracy of a classifier on a dataset split — the one place they are computed.

Every operator that scores a model (``evaluate``, ``interpolate``, soups, barriers, planes …)
calls :func:`evaluate_module`, so all of them agree on what "loss" and "accuracy" mean: mean
cross-entropy over the split and the fraction of argmax predictions equal to the label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mlspec.errors import StepError
from mlspec.ops.models.arch import build_module
from mlspec.ops.scoring import EvaluateParams
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model, Record

__all__ = ["evaluate_module", "evaluate_state", "evaluate", "check_fits"]


def check_fits(model: Model, x: torch.Tensor, y: torch.Tensor, data_name: object = "the data") -> None:
    """A model that declares its input width or class count must fit the data, said in the spec's terms."""
    want = model.arch.get("in_features")
    got = x[0].numel() if len(x) else None
    if want is not None and got is not None and want != got:
        raise StepError(f"the model takes {want} input features but {data_name} has {got} per sample; "
                        f"set `in = {got}` where the model is declared")
    classes = model.arch.get("out_features")
    top = int(y.max()) if len(y) else None
    if classes is not None and top is not None and top >= classes:
        raise StepError(f"the model has {classes} outputs but {data_name} has label {top}; "
                        f"set `out = {top + 1}` where the model is declared")


@torch.no_grad()
def evaluate_module(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024, device: str = "cpu"
) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": fraction correct}`` of ``module`` on ``(x, y)``."""
    was_training = module.training
    module.eval().to(device)
    total_loss = 0.0
    correct = 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        logits = module(xb).float()
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum().item())
    module.train(was_training)
    n = max(1, len(x))
    return {"loss": total_loss / n, "accuracy": correct / n}


def evaluate_state(
    model: Model, state: dict[str, torch.Tensor], data: Dataset, *, split: str = "test", device: str = "cpu"
) -> dict[str, float]:
    """Score ``model``'s architecture carrying ``state`` (used by curves and surfaces)."""
    net = build_module(model.with_state(state))
    x, y = data.split(split)
    check_fits(model, x, y)
    return evaluate_module(net, x, y, device=device)


def evaluate(ctx: StepContext, params: EvaluateParams, *, model: Model, on: Dataset) -> Record:
    x, y = on.split(params.split)
    check_fits(model, x, y, repr(ctx.input_names.get("on", "the data")))
    scores = evaluate_module(build_module(model), x, y, device=ctx.device)
    scores["error"] = 1.0 - scores["accuracy"]
    out: dict[str, Any] = {"model": ctx.input_names.get("model"), "dataset": ctx.input_names.get("on")}
    out.update({m: scores[m] for m in params.metrics})
    out["split"] = params.split
    out["n"] = len(x)
    return Record(out)
