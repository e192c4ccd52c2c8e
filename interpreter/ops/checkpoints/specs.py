"""Declarations of the checkpoint operators (torch-free): ``load``, ``merge_checkpoints``, ``perplexity``.

``merge_checkpoints`` runs any declared merge method (``method = ties``; built in, installed or a
user's) tensor by tensor with the streaming options below, taking that method's own parameters
under the same names, defaults and ranges. Plain ``ties(...)`` calls whose inputs are checkpoints
stream through the same engine with the default options.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from ...checkpoints.layout import CheckpointError, fingerprint, locate, parse_size
from ...errors import did_you_mean
from ...registry import Kind, OpSpec, Params, Port, register
from ..merge import method as merge_method

__all__ = ["LoadParams", "MergeCheckpointsParams", "PerplexityParams", "StackParams", "StreamingParams", "DType"]

DType = Literal["float32", "float64", "bfloat16", "float16"]


class StreamingParams(Params):
    """A merge method streamed over checkpoints: its options; every other keyword is a parameter of
    the chosen method."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)

    method: str = Field(description="the merge method to apply tensor by tensor (any merge operator)")
    dtype: DType = Field(default="float32", description="the dtype the merge math runs in")
    out_dtype: DType | None = Field(
        default=None, description="dtype written (default: the base's, per tensor)"
    )
    shard_size: str = Field(default="5GB", description="largest output shard, e.g. 2GB or 500MiB")

    @field_validator("shard_size")
    @classmethod
    def _size(cls, value: str) -> str:
        parse_size(value)
        return value

    @field_validator("method")
    @classmethod
    def _known(cls, value: str) -> str:
        if merge_method.get(value) is None:
            known = sorted(merge_method.methods())
            hint = did_you_mean(value, known) or f"merge methods: {', '.join(known)}"
            raise ValueError(f"unknown merge method {value!r} ({hint})")
        return value

    @model_validator(mode="after")
    def _method_params(self) -> StreamingParams:
        method = merge_method.get(self.method)
        assert method is not None
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        normal = method.normalise(dict(extra))
        extra.clear()
        extra.update(normal)
        return self

    def method_params(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})


class MergeCheckpointsParams(StreamingParams):
    """Streaming options; every other keyword is a parameter of the chosen method."""

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


class StackParams(StreamingParams):
    """Layer stacking: the slices, the method that merges a slice's several sources (passthrough
    copies single-source slices), the streaming options, and the method's global parameters."""

    method: str = Field(default="passthrough", description="merges the sources of slices with several")
    slices: list[Any] = Field(
        min_length=1,
        description='the output\'s blocks in order: layers(model = "a", start = 0, end = 8) copies blocks '
        "[start, end) of one model; slice(sources = [layers(...), layers(...)]) merges several",
    )

    @field_validator("slices")
    @classmethod
    def _slices(cls, value: list[Any]) -> list[Any]:
        mergekit_slices(value)
        return value

    def mergekit_slices(self) -> list[dict[str, Any]]:
        return mergekit_slices(self.slices)


def _layers(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") != "layers":
        raise ValueError(f'{where}: expected layers(model = "name", start = 0, end = 8) (not {value!r})')
    rest = {k: v for k, v in value.items() if k not in ("type", "model", "start", "end")}
    model, start, end = value.get("model"), value.get("start"), value.get("end")
    if not isinstance(model, str):
        raise ValueError(f'{where}: layers(...) needs model = "name" (one of the models, as a string)')
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
        raise ValueError(f"{where}: layers(...) needs whole numbers start and end (not {start!r}, {end!r})")
    assert isinstance(start, int) and isinstance(end, int)
    if not 0 <= start < end:
        raise ValueError(f"{where}: layers(model = {model!r}, start = {start}, end = {end}) needs 0 ≤ start < end "
                         "(end is exclusive)")
    return {"model": model, "layer_range": [start, end], **({"parameters": rest} if rest else {})}


def mergekit_slices(slices: list[Any]) -> list[dict[str, Any]]:
    """The spec's ``layers(...)`` / ``slice(sources = [...], ...)`` calls as mergekit-shaped slices."""
    out = []
    for i, sl in enumerate(slices):
        where = f"slices[{i}]"
        if isinstance(sl, dict) and sl.get("type") == "slice":
            sources = sl.get("sources")
            if not isinstance(sources, list) or not sources:
                raise ValueError(f"{where}: slice(...) needs sources = [layers(...), ...]")
            rest = {k: v for k, v in sl.items() if k not in ("type", "sources", "base")}
            entry: dict[str, Any] = {"sources": [_layers(s, f"{where}.sources[{j}]") for j, s in enumerate(sources)]}
            if rest:
                entry["parameters"] = rest
            if isinstance(sl.get("base"), str):
                entry["base_model"] = sl["base"]
            out.append(entry)
        else:
            out.append({"sources": [_layers(sl, where)]})
    return out


def slice_models(slices: list[Any]) -> set[str]:
    """The model names the slices refer to (empty when they do not parse: params report that)."""
    try:
        return {s["model"] for sl in mergekit_slices(slices) for s in sl["sources"]}
    except ValueError:
        return set()


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


_IMPL = "mlspec.ops.checkpoints.loading"


def _check_merge(inputs: Any, params: Any) -> str | None:
    method = merge_method.get(str(params.get("method")))
    if method is None:
        return None
    n = len(inputs.get("models") or [])
    return method.inputs_error(n, "base" in inputs) or method.count_error(n, params)


def _check_stack(inputs: Any, params: Any) -> str | None:
    """Slices name models the call has (by their step names)."""
    known = [*(inputs.get("models") or []), *([inputs["base"]] if "base" in inputs else [])]
    unknown = sorted(slice_models(params.get("slices") or []) - set(known))
    if unknown:
        hint = did_you_mean(unknown[0], known) or f"the models are: {', '.join(map(repr, known))}"
        return f"the slices name {', '.join(map(repr, unknown))}, not among the models ({hint})"
    return None

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
        doc="""Merge checkpoints tensor by tensor with any merge method, with streaming options.

        `merge_checkpoints(method = ties, base = b, models = [x, y], density = [1, 0.5, 0.2],
        weights = [by_name(mlp = 0.7, default = 0.5), 0.5], out_dtype = bfloat16)`: the method's own
        parameters come beside the options. Parameters that vary by tensor accept a gradient over
        layer depth or `by_name(filter = value, default = v)`; per-model parameters (`weights`)
        take one such setting per model.""",
        inputs=(
            Port("base", Kind.MODEL, required=False, doc="the anchor (required by task-vector methods)"),
            Port("models", Kind.MODEL, many=True, doc="the checkpoints to merge"),
        ),
        output=Kind.MODEL,
        params=MergeCheckpointsParams,
        impl=f"{_IMPL}:merge_checkpoints",
        check_inputs=_check_merge,
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="stack",
        doc="""Layer stacking (mergekit `slices`): an output made of blocks of several checkpoints.

        `stack(models = [a, b], slices = [layers(model = "a", start = 0, end = 16),
        layers(model = "b", start = 8, end = 24)])` copies blocks [0, 16) of a, then [8, 24) of b
        (a frankenmerge; `end` is exclusive). `slice(sources = [layers(model = "a", start = 0, end = 12),
        layers(model = "b", start = 0, end = 12)], t = [0, 1])` merges its sources block by block with
        `method` (e.g. `method = slerp, base = a, t = 0.5`); extra keywords of `layers(...)` are
        per-model parameters of that source, of `slice(...)` the slice's, of `stack(...)` global ones.
        Gradients run over each slice's own blocks. Embeddings come from the first slice's sources,
        the final norm and head from the last's; `num_hidden_layers` is the total block count.""",
        inputs=(
            Port("base", Kind.MODEL, required=False, doc="the base of merged slices (its config is the output's)"),
            Port("models", Kind.MODEL, many=True, doc="the checkpoints; slices name them as strings"),
        ),
        output=Kind.MODEL,
        params=StackParams,
        impl=f"{_IMPL}:stack",
        check_inputs=_check_stack,
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
        impl="mlspec.ops.checkpoints.perplexity:perplexity",
        dialects=frozenset({"merge"}),
    )
)
