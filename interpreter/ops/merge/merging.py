"""Model-level plumbing shared by every weight-space merge: check that the inputs line up, run a
per-tensor kernel over every floating tensor, record merge statistics.

Integer buffers (BatchNorm's ``num_batches_tracked``) are not merged: they are copied from the
base, or from the first model when there is no base.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ...errors import StepError
from ...run.context import StepContext
from ...values import Model
from .stats import MergeStats

__all__ = ["TensorKernel", "check_compatible", "labels", "merge_models", "per_model"]

#: ``kernel(tensor_name, base_tensor_or_None, model_tensors) -> merged tensor``
TensorKernel = Callable[[str, Tensor | None, list[Tensor]], Tensor]


def labels(ctx: StepContext, models: Sequence[Model], base: Model | None = None) -> list[str]:
    """Names of the inputs as the spec wrote them (base first), for error messages."""
    given = ctx.input_names.get("models")
    names = list(given) if isinstance(given, list) and len(given) == len(models) else [
        f"models[{i}]" for i in range(len(models))
    ]
    if base is not None:
        names.insert(0, str(ctx.input_names.get("base") or "base"))
    return names


def check_compatible(models: Sequence[Model], names: Sequence[str]) -> None:
    """Every model must share the first one's architecture, tensor names and shapes."""
    ref, ref_name = models[0], names[0]
    for model, name in zip(models[1:], names[1:]):
        if model.arch != ref.arch:
            raise StepError(f"{name!r} and {ref_name!r} do not fit together: architectures differ "
                            f"({model.arch} vs {ref.arch})")
        missing = sorted(set(ref.state) ^ set(model.state))
        if missing:
            raise StepError(f"{name!r} and {ref_name!r} do not fit together: tensor {missing[0]!r} is in only one of them")
        for key, tensor in ref.state.items():
            if model.state[key].shape != tensor.shape:
                raise StepError(
                    f"{name!r} and {ref_name!r} do not fit together: tensor {key!r} has shape "
                    f"{tuple(model.state[key].shape)} in {name!r} but {tuple(tensor.shape)} in {ref_name!r}"
                )


def per_model(value: float | list[float] | None, n: int, what: str, default: float = 1.0) -> list[float]:
    """Broadcast a scalar to one value per model; check a list's length."""
    if value is None:
        return [default] * n
    if isinstance(value, (int, float)):
        return [float(value)] * n
    if len(value) != n:
        raise StepError(f"{what} needs one value per model ({n}), not {len(value)} (got {value!r})")
    return [float(v) for v in value]


@torch.no_grad()
def merge_models(
    ctx: StepContext,
    models: Sequence[Model],
    kernel: TensorKernel,
    *,
    method: str,
    params: dict[str, Any],
    base: Model | None = None,
) -> Model:
    """Apply ``kernel`` tensor by tensor and return the merged model with its statistics."""
    if not models:
        raise StepError(f"{method} needs at least one model")
    everyone = [base, *models] if base is not None else list(models)
    check_compatible(everyone, labels(ctx, models, base))
    ref = everyone[0]
    stats = MergeStats(method, params)
    state: dict[str, Tensor] = {}
    for name, first in ref.state.items():
        if not first.is_floating_point():
            state[name] = first.clone()
            continue
        b = base.state[name] if base is not None else None
        tensors = [m.state[name] for m in models]
        try:
            merged = kernel(name, b, tensors)
        except ValueError as exc:  # the kernels' parameter checks
            raise StepError(f"{method}: {exc}") from exc
        stats.add(name, merged, tensors, b)
        state[name] = merged.contiguous()
    return Model(arch=dict(ref.arch), state=state, info={"merge": stats.summary()})
