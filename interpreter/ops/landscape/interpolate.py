"""Linear interpolation between two models and its loss/error barriers."""

from __future__ import annotations

import torch

from ...run.context import StepContext
from ...values import Dataset, Model, Record
from ..evaluation import evaluate_state
from ..merge.merging import check_compatible
from ..scoring import InterpolateParams

__all__ = ["interpolate", "barriers", "lerp_state", "profile", "path_barriers"]


def lerp_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """(1-α)·a + α·b for floating tensors; integer buffers (e.g. BatchNorm counters) come from a."""
    return {k: torch.lerp(a[k], b[k], alpha) if a[k].is_floating_point() else a[k].clone() for k in a}


def barriers(alphas: list[float], values: list[float]) -> dict[str, float]:
    """Both published barrier definitions of a curve ``values`` over ``alphas`` ∈ [0, 1].

    - ``max_minus_mean``: max_α v(α) − ½(v(0) + v(1))  (Frankle et al. 2020's instability, on error;
      the Git Re-Basin code's convention)
    - ``max_minus_linear``: max_α [v(α) − ((1−α)·v(0) + α·v(1))]  (Entezari et al. 2022)
    """
    v0, v1 = values[0], values[-1]
    return {
        "max_minus_mean": max(values) - 0.5 * (v0 + v1),
        "max_minus_linear": max(v - ((1 - a) * v0 + a * v1) for a, v in zip(alphas, values)),
    }


def profile(
    ctx: StepContext, model: Model, states: list[dict[str, torch.Tensor]], data: Dataset, split: str
) -> dict[str, list[float]]:
    """Loss and accuracy of ``model``'s architecture at each state along a path."""
    scores = []
    with ctx.progress(len(states), "evaluate path") as advance:
        for state in states:
            scores.append(evaluate_state(model, state, data, split=split, device=ctx.device))
            advance()
    return {"loss": [s["loss"] for s in scores], "accuracy": [s["accuracy"] for s in scores]}


def path_barriers(ts: list[float], prof: dict[str, list[float]]) -> dict[str, float]:
    """Both barrier definitions for loss and for error: ``loss_max_minus_mean`` … ``error_max_minus_linear``."""
    loss = barriers(ts, prof["loss"])
    err = barriers(ts, [1.0 - a for a in prof["accuracy"]])
    return {f"{m}_{k}": v for m, b in (("loss", loss), ("error", err)) for k, v in b.items()}


def interpolate(ctx: StepContext, params: InterpolateParams, *, a: Model, b: Model, on: Dataset) -> Record:
    check_compatible([a, b], [str(ctx.input_names.get("a") or "a"), str(ctx.input_names.get("b") or "b")])
    alphas = [i / (params.steps - 1) for i in range(params.steps)]
    prof = profile(ctx, a, [lerp_state(a.state, b.state, alpha) for alpha in alphas], on, params.split)
    return Record({
        "a": ctx.input_names.get("a"),
        "b": ctx.input_names.get("b"),
        "dataset": ctx.input_names.get("on"),
        "split": params.split,
        "alphas": alphas,
        **prof,
        "barriers": path_barriers(alphas, prof),
    })
