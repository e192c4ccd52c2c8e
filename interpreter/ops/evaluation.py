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

from ..errors import StepError
from ..run.context import StepContext
from ..values import Dataset, Model, Record
from .models.builders import build_module
from .models.heads import put_head
from .scoring import EvaluateParams

__all__ = ["attack_success", "evaluate_module", "evaluate_state", "evaluate", "check_fits", "with_task_head"]


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
    net = build_module(with_task_head(model.with_state(state), data))
    x, y = data.split(split)
    check_fits(model, x, y)
    return evaluate_module(net, x, y, device=device)


def with_task_head(model: Model, data: Dataset) -> Model:
    """``model`` carrying the head that travels with ``data`` (see ``with_head``), else unchanged."""
    head = data.meta.get("head")
    if not isinstance(head, dict):
        return model
    tensors = {k[len("head."):]: v for k, v in data.tensors.items() if k.startswith("head.")}
    return put_head(model, tensors, source=f"the head of {head.get('from') or 'the task'}")


def attack_success(module: nn.Module, data: Dataset, *, device: str = "cpu") -> float:
    """Share of the triggered test inputs of other classes that ``module`` sends to the backdoor's target."""
    backdoor = data.meta.get("backdoor")
    if not isinstance(backdoor, dict):
        raise StepError("the metric attack_success needs a dataset made by poison(...)")
    x = data["x_trigger"]
    target = torch.full((len(x),), int(backdoor["target"]), dtype=torch.int64)
    return evaluate_module(module, x, target, device=device)["accuracy"]


def evaluate(ctx: StepContext, params: EvaluateParams, *, model: Model, on: Dataset) -> Record:
    x, y = on.split(params.split)
    check_fits(model, x, y, repr(ctx.input_names.get("on", "the data")))
    module = build_module(with_task_head(model, on))
    scores = evaluate_module(module, x, y, device=ctx.device)
    scores["error"] = 1.0 - scores["accuracy"]
    if "attack_success" in params.metrics:
        scores["attack_success"] = attack_success(module, on, device=ctx.device)
    out: dict[str, Any] = {"model": ctx.input_names.get("model"), "dataset": ctx.input_names.get("on")}
    out.update({m: scores[m] for m in params.metrics})
    out["split"] = params.split
    out["n"] = len(x)
    if params.split == "test" and "x_val" in on.tensors:  # what the report selects on, never the test split
        xv, yv = on.split("val")
        val = evaluate_module(build_module(model), xv, yv, device=ctx.device)
        out["validation"] = {"accuracy": val["accuracy"], "loss": val["loss"], "n": len(xv)}
    return Record(out)
