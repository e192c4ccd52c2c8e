"""Data-free weight-space merges: each operator is a per-tensor kernel run by :func:`merge_models`."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from torch import Tensor

from mlspec.errors import StepError
from mlspec.ops.merge import kernels
from mlspec.ops.merge.merging import merge_models, per_model
from mlspec.ops.merge.sparsify import model_threshold
from mlspec.ops.merge.specs import (
    AverageParams,
    BreadcrumbsParams,
    DareParams,
    ModelStockParams,
    SlerpParams,
    SphericalMeanParams,
    TaskArithmeticParams,
    TiesParams,
)
from mlspec.run.context import StepContext
from mlspec.values import Model

__all__ = [
    "average",
    "breadcrumbs",
    "dare",
    "model_stock",
    "model_thresholds",
    "slerp",
    "spherical_mean",
    "task_arithmetic",
    "ties",
]


def _ignore_name(kernel, **kwargs):  # type: ignore[no-untyped-def]
    """Adapt ``kernel(base, tensors, **kwargs)`` to the ``(name, base, tensors)`` calling form."""
    return lambda _name, base, tensors: kernel(base, tensors, **kwargs)


def average(ctx: StepContext, params: AverageParams, *, models: list[Model]) -> Model:
    weights = per_model(params.weights, len(models), "weights")
    kernel = _ignore_name(kernels.linear, weights=weights, normalize=params.normalize)
    return merge_models(ctx, models, kernel, method="average", params=params.model_dump())


def task_arithmetic(ctx: StepContext, params: TaskArithmeticParams, *, base: Model, models: list[Model]) -> Model:
    scales = per_model(params.scale, len(models), "scale")
    kernel = _ignore_name(kernels.task_arithmetic, scales=scales)
    return merge_models(ctx, models, kernel, method="task_arithmetic", params=params.model_dump(), base=base)


def slerp(ctx: StepContext, params: SlerpParams, *, a: Model, b: Model, base: Model | None = None) -> Model:
    kernel = _ignore_name(kernels.slerp, t=params.t, dot_threshold=params.dot_threshold)
    return merge_models(ctx, [a, b], kernel, method="slerp", params=params.model_dump(), base=base)


def spherical_mean(ctx: StepContext, params: SphericalMeanParams, *, models: list[Model]) -> Model:
    weights = per_model(params.weights, len(models), "weights")
    kernel = _ignore_name(kernels.spherical_mean, weights=weights, max_iter=params.max_iter)
    return merge_models(ctx, models, kernel, method="spherical_mean", params=params.model_dump())


def _float_deltas(base: Model, model: Model) -> Iterator[Tensor]:
    for name, tensor in base.state.items():
        if tensor.is_floating_point():
            yield model.state[name].double() - tensor.double()


def model_thresholds(base: Model, models: list[Model], density: float) -> list[float]:
    """One whole-model top-k magnitude threshold per task vector (TIES with ``trim = model``)."""
    return [model_threshold(partial(_float_deltas, base, m), density) for m in models]


def ties(ctx: StepContext, params: TiesParams, *, base: Model, models: list[Model]) -> Model:
    weights = per_model(params.weights, len(models), "weights")
    if params.trim == "model":
        if any(m.state.keys() != base.state.keys() for m in models):
            raise StepError("ties: every model must have the base's tensors")
        thresholds: list[float] | None = model_thresholds(base, models, params.density)
    else:
        thresholds = None
    kernel = _ignore_name(
        kernels.ties,
        density=params.density,
        weights=weights,
        thresholds=thresholds,
        elect=params.elect,
        weights_at=params.weights_at,
        normalize=params.normalize,
        scale=params.scale,
    )
    return merge_models(ctx, models, kernel, method="ties", params=params.model_dump(), base=base)


def _consensus(params: DareParams | BreadcrumbsParams) -> str | None:
    return params.elect if params.merge == "ties" else None


def dare(ctx: StepContext, params: DareParams, *, base: Model, models: list[Model]) -> Model:
    generator = ctx.generator()  # one stream over the tensors, in state-dict order
    kernel = _ignore_name(
        kernels.dare,
        density=params.density,
        weights=per_model(params.weights, len(models), "weights"),
        rescale=params.rescale,
        consensus=_consensus(params),
        weights_at=params.weights_at,
        normalize=params.normalize,
        scale=params.scale,
        generator=generator,
    )
    return merge_models(ctx, models, kernel, method="dare", params=params.model_dump(), base=base)


def breadcrumbs(ctx: StepContext, params: BreadcrumbsParams, *, base: Model, models: list[Model]) -> Model:
    kernel = _ignore_name(
        kernels.breadcrumbs,
        density=params.density,
        gamma=params.gamma,
        weights=per_model(params.weights, len(models), "weights"),
        consensus=_consensus(params),
        weights_at=params.weights_at,
        normalize=params.normalize,
        scale=params.scale,
    )
    return merge_models(ctx, models, kernel, method="breadcrumbs", params=params.model_dump(), base=base)


def model_stock(ctx: StepContext, params: ModelStockParams, *, base: Model, models: list[Model]) -> Model:
    if len(models) < 2:
        raise StepError(f"model_stock needs at least two fine-tuned models (not {len(models)})")
    kernel = _ignore_name(kernels.model_stock, mean=params.mean)
    return merge_models(ctx, models, kernel, method="model_stock", params=params.model_dump(), base=base)

