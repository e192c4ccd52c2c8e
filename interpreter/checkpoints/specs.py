"""Declarations of the checkpoint operators (torch-free): ``load``, ``merge_checkpoints``, ``perplexity``.

``merge_checkpoints`` takes every element-wise merge operator by name (``method = ties``) with that
operator's own parameters, under the same names, defaults and ranges (they are validated by the
operator's own parameter model), except that any numeric parameter may vary by tensor (a gradient
list or ``by_name(...)``, see :mod:`mlspec.checkpoints.settings`). Plain ``ties(...)`` calls whose
inputs are checkpoints stream through the same engine with fixed parameters.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from mlspec.checkpoints import settings as st
from mlspec.checkpoints.layout import CheckpointError, fingerprint, locate, parse_size
from mlspec.errors import did_you_mean
from mlspec.ops.merge import specs as merge_specs
from mlspec.registry import Kind, OpSpec, Params, Port, register

__all__ = [
    "METHODS",
    "LoadParams",
    "MergeCheckpointsParams",
    "PerplexityParams",
    "method_params",
    "per_model_fields",
    "varying_fields",
]

#: The element-wise merge operators that stream, and their parameter models.
METHODS: dict[str, type[Params]] = {
    "average": merge_specs.AverageParams,
    "task_arithmetic": merge_specs.TaskArithmeticParams,
    "slerp": merge_specs.SlerpParams,
    "spherical_mean": merge_specs.SphericalMeanParams,
    "ties": merge_specs.TiesParams,
    "dare": merge_specs.DareParams,
    "breadcrumbs": merge_specs.BreadcrumbsParams,
    "model_stock": merge_specs.ModelStockParams,
}
Method = Literal[
    "average", "task_arithmetic", "slerp", "spherical_mean", "ties", "dare", "breadcrumbs", "model_stock"
]
DType = Literal["float32", "float64", "bfloat16", "float16"]


def _accepts(annotation: Any, kind: type) -> bool:
    if annotation is kind:
        return True
    return any(_accepts(arg, kind) or typing.get_origin(arg) is kind for arg in typing.get_args(annotation))


def per_model_fields(params: type[Params]) -> set[str]:
    """Fields that take one value per model (a list): ``weights``, task arithmetic's ``scale``."""
    return {name for name, f in params.model_fields.items() if _accepts(f.annotation, list)}


def varying_fields(params: type[Params]) -> set[str]:
    """Numeric fields, which may vary by tensor."""
    return {name for name, f in params.model_fields.items() if _accepts(f.annotation, float)}


def _leaves(setting: Any) -> list[float]:
    if isinstance(setting, int | float):
        return [float(setting)]
    if setting and isinstance(setting[0], dict):
        return [v for rule in setting for v in _leaves(rule["value"])]
    return [float(v) for v in setting]


def method_params(method: str, given: dict[str, Any]) -> dict[str, Any]:
    """Validate ``given`` against ``method``'s own parameter model, settings allowed; returns every
    parameter (defaults filled) with settings in their normal form. Raises ValueError."""
    model = METHODS[method]
    unknown = sorted(set(given) - set(model.model_fields))
    if unknown:
        hint = (
            did_you_mean(unknown[0], model.model_fields)
            or f"it takes: {', '.join(model.model_fields) or 'nothing'}"
        )
        raise ValueError(f"{method} has no parameter {unknown[0]!r} ({hint})")
    varying, many = varying_fields(model), per_model_fields(model)
    normal: dict[str, Any] = {}
    for key, value in given.items():
        if value is None:
            normal[key] = None
            continue
        if key in many and isinstance(value, list | tuple) and not st.is_rules(value):
            normal[key] = [st.normalise(v) for v in value]
            probes = [[leaf] * len(value) for leaf in {x for v in normal[key] for x in _leaves(v)}]
        elif key in varying:
            normal[key] = st.normalise(value)
            probes = [[leaf] if key in many else leaf for leaf in _leaves(normal[key])]
        else:
            normal[key] = value
            probes = [value]
        for probe in probes:  # every number a setting can take must be valid for the operator
            model.model_validate({key: probe})
    return {**model().model_dump(), **normal}


def _copy_fields() -> dict[str, Any]:
    """One optional field per parameter of any method (their own validation runs per method)."""
    fields: dict[str, Any] = {}
    for model in METHODS.values():
        for name, f in model.model_fields.items():
            fields.setdefault(name, (Any, Field(default=None, description=f.description)))
    return fields


class _StreamOptions(Params):
    method: Method = Field(description="the merge operator to apply tensor by tensor")
    dtype: DType = Field(default="float32", description="the dtype the merge math runs in")
    out_dtype: DType | None = Field(
        default=None, description="dtype written (default: the base's, per tensor)"
    )
    shard_size: str = Field(default="5GB", description="largest output shard, e.g. 2GB or 500MiB")
    extra: Literal["error", "base", "drop"] = Field(
        default="error",
        description="tensors not in every checkpoint: refuse, copy them from the base, or leave them out",
    )
    tied: Literal["error", "untie"] = Field(
        default="error",
        description="a checkpoint with tied embeddings lacks the output head the others have: refuse, or "
        "use its input embedding as its head (the output gets an untied head)",
    )
    stats: bool = Field(
        default=False,
        description="record per-tensor merge statistics (sparsity, sign conflicts, distances); they are "
        "computed in float64 on whole tensors, which costs about 2x the time and memory of the merge",
    )

    @field_validator("shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @model_validator(mode="after")
    def _method(self) -> _StreamOptions:
        given = {k: v for k, v in self.__dict__.items() if k in _METHOD_FIELDS and v is not None}
        for key, value in method_params(self.method, given).items():
            object.__setattr__(self, key, value)
        return self


_METHOD_FIELDS = set(_copy_fields())
MergeCheckpointsParams = create_model("MergeCheckpointsParams", __base__=_StreamOptions, **_copy_fields())


class LoadParams(Params):
    path: str = Field(
        description="a Hugging Face model directory, a .safetensors file or a .pt/.pth/.bin state dict",
        json_schema_extra={"file": True},
    )
    fingerprint: str = Field(
        default="", description="filled in from the files (size, mtime, first and last MiB) so edits re-run"
    )

    @model_validator(mode="before")
    @classmethod
    def _fingerprint(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            try:
                data = {**data, "fingerprint": fingerprint(locate(data["path"]))}
            except CheckpointError as exc:
                raise ValueError(str(exc)) from None
        return data


class PerplexityParams(Params):
    text: str = Field(description="a local UTF-8 text file to score", json_schema_extra={"file": True})
    context: int = Field(default=1024, ge=2, description="tokens the model sees at once")
    stride: int = Field(default=512, ge=1, description="tokens the window advances (≤ context)")
    max_tokens: int | None = Field(default=None, ge=2, description="score only the first tokens of the file")
    dtype: DType = Field(default="float32", description="dtype the model runs in")

    @model_validator(mode="after")
    def _stride(self) -> PerplexityParams:
        if self.stride > self.context:
            raise ValueError(f"stride must not exceed context ({self.context}) (not {self.stride})")
        return self


_IMPL = "mlspec.checkpoints.ops"

register(
    OpSpec(
        name="load",
        doc="""A checkpoint from disk, read lazily: `model base = load("models/llama-base")`.

        Accepts a Hugging Face model directory (config.json + model.safetensors or sharded
        safetensors with their index), a single .safetensors file, or a PyTorch state dict read with
        weights_only=True. Tensors stay on disk until a merge streams them; the cache key follows
        the files' fingerprint, so replacing a checkpoint re-runs what depends on it.""",
        inputs=(),
        output=Kind.MODEL,
        params=LoadParams,
        impl=f"{_IMPL}:load",
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="merge_checkpoints",
        doc="""Merge checkpoints tensor by tensor with any element-wise operator, streaming.

        `merge_checkpoints(method = ties, base = b, models = [x, y], density = [1, 0.5, 0.2],
        weights = [by_name(mlp = 0.7, default = 0.5), 0.5], out_dtype = bfloat16)`. Numeric
        parameters accept a gradient over layer depth or `by_name(filter = value, default = v)`;
        per-model parameters (`weights`) take one such setting per model.""",
        inputs=(
            Port("base", Kind.MODEL, required=False, doc="the anchor (required by task-vector methods)"),
            Port("models", Kind.MODEL, many=True, doc="the checkpoints to merge"),
        ),
        output=Kind.MODEL,
        params=MergeCheckpointsParams,
        impl=f"{_IMPL}:merge_checkpoints",
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="perplexity",
        doc="""Perplexity of a causal language model checkpoint on a local text file (sliding window).

        Needs the optional `transformers` package (pip install 'mlspec[lm]') and a tokenizer in the
        model's directory (merges copy the base's). `evaluate`-style: `perplexity(m, text = "wiki.txt")`.""",
        inputs=(Port("model", Kind.MODEL),),
        output=Kind.METRICS,
        params=PerplexityParams,
        impl="mlspec.checkpoints.perplexity:perplexity",
        dialects=frozenset({"merge"}),
    )
)
