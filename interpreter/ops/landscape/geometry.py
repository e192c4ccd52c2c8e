"""Two-dimensional slices of the loss landscape: the plane through three models and the
filter-normalised random plane around one model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...run.context import StepContext
from ...values import Dataset, Model, Record
from ..evaluation import evaluate_state
from ..merge.merging import check_compatible
from .specs import PlaneParams, SurfaceParams

__all__ = ["filter_normalised", "flatten", "plane", "score_grid", "surface", "unflatten"]


def flatten(state: dict[str, Tensor]) -> Tensor:
    """The floating tensors of a state, concatenated in state order (float64)."""
    return torch.cat([v.detach().double().flatten() for v in state.values() if v.is_floating_point()])


def unflatten(vector: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse of :func:`flatten`; non-floating tensors are taken from ``like``."""
    out, offset = {}, 0
    for name, tensor in like.items():
        if tensor.is_floating_point():
            out[name] = vector[offset : offset + tensor.numel()].reshape(tensor.shape).to(tensor.dtype)
            offset += tensor.numel()
        else:
            out[name] = tensor
    return out


def score_grid(
    ctx: StepContext, model: Model, origin: Tensor, u: Tensor, v: Tensor, xs: list[float], ys: list[float],
    data: Dataset, split: str,
) -> dict[str, list[list[float]]]:
    """Loss and accuracy at origin + x·u + y·v for every grid point; rows follow ``ys``."""
    loss = [[0.0] * len(xs) for _ in ys]
    acc = [[0.0] * len(xs) for _ in ys]
    with ctx.progress(len(xs) * len(ys), "grid") as advance:
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                state = unflatten(origin + x * u + y * v, model.state)
                scores = evaluate_state(model, state, data, split=split, device=ctx.device)
                loss[i][j], acc[i][j] = scores["loss"], scores["accuracy"]
                advance()
    return {"loss": loss, "accuracy": acc}


def _axis(lo: float, hi: float, steps: int) -> list[float]:
    return torch.linspace(lo, hi, steps, dtype=torch.float64).tolist()


def plane(ctx: StepContext, params: PlaneParams, *, a: Model, b: Model, c: Model, on: Dataset) -> Record:
    """Gram–Schmidt basis of span(b − a, c − a); coordinates are Euclidean distances in weight space."""
    check_compatible([a, b, c], ["a", "b", "c"])
    wa, wb, wc = flatten(a.state), flatten(b.state), flatten(c.state)
    u = wb - wa
    bx = float(u.norm())
    u = u / bx
    v = (wc - wa) - torch.dot(wc - wa, u) * u
    cy = float(v.norm())
    v = v / cy
    cx = float(torch.dot(wc - wa, u))
    points = [("a", 0.0, 0.0), ("b", bx, 0.0), ("c", cx, cy)]
    lo_x, hi_x = min(0.0, cx), max(bx, cx)
    pad_x, pad_y = params.margin * (hi_x - lo_x), params.margin * cy
    xs = _axis(lo_x - pad_x, hi_x + pad_x, params.steps)
    ys = _axis(-pad_y, cy + pad_y, params.steps)
    grid = score_grid(ctx, a, wa, u, v, xs, ys, on, params.split)
    names = [ctx.input_names.get(k, k) for k in ("a", "b", "c")]
    out: dict[str, Any] = {"dataset": ctx.input_names.get("on"), "split": params.split, "xs": xs, "ys": ys, **grid,
                           "points": [{"name": n, "x": x, "y": y} for n, (_, x, y) in zip(names, points)]}
    return Record(out)


def filter_normalised(state: dict[str, Tensor], generator: torch.Generator) -> Tensor:
    """A Gaussian direction rescaled filter by filter (row by row of dim 0) to the norms of the
    weights' filters; 1-D tensors (biases, normalisation) get a zero direction (Li et al. 2018)."""
    parts = []
    for tensor in state.values():
        if not tensor.is_floating_point():
            continue
        if tensor.dim() <= 1:
            parts.append(torch.zeros(tensor.numel(), dtype=torch.float64))
            continue
        w = tensor.detach().double().reshape(tensor.shape[0], -1)
        d = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12) * w.norm(dim=1, keepdim=True)
        parts.append(d.flatten())
    return torch.cat(parts)


def surface(ctx: StepContext, params: SurfaceParams, *, model: Model, on: Dataset) -> Record:
    g = ctx.generator()
    u, v = filter_normalised(model.state, g), filter_normalised(model.state, g)
    axis = _axis(-params.extent, params.extent, params.steps)
    grid = score_grid(ctx, model, flatten(model.state), u, v, axis, axis, on, params.split)
    out: dict[str, Any] = {"dataset": ctx.input_names.get("on"), "split": params.split, "xs": axis, "ys": axis,
                           **grid, "points": [{"name": ctx.input_names.get("model", "model"), "x": 0.0, "y": 0.0}]}
    return Record(out)
