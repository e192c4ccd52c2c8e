"""Step implementations: ``load``, ``merge_checkpoints``, and the streamed form of the element-wise
merge operators (:func:`streamed`) that the executor uses when their inputs are checkpoints."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlspec.checkpoints import CHECKPOINT, is_checkpoint
from mlspec.checkpoints.engine import StreamOptions, stream_merge
from mlspec.checkpoints.layout import CheckpointError, fingerprint, locate
from mlspec.checkpoints.source import Checkpoint
from mlspec.checkpoints.specs import METHODS, LoadParams
from mlspec.errors import StepError
from mlspec.registry import Params
from mlspec.run.context import StepContext
from mlspec.values import Model

__all__ = ["load", "merge_checkpoints", "streamed", "reference", "checkpoint_path"]


def reference(path: str | Path, **info: Any) -> Model:
    """A checkpoint reference: the weights stay on disk; the fingerprint keys downstream caches."""
    layout = locate(path)
    arch = {
        "type": CHECKPOINT,
        "path": str(layout.path),
        "format": layout.kind,
        "fingerprint": fingerprint(layout),
    }
    return Model(arch=arch, state={}, info=info)


def checkpoint_path(model: Model, what: str) -> Path:
    """The directory or file a checkpoint reference points at, or a StepError saying why not."""
    if not is_checkpoint(model):
        raise StepError(f'{what} is a model held in memory, not a checkpoint (make it with load("path"))')
    path = Path(model.arch["path"])
    if not path.exists():
        raise StepError(
            f"checkpoint {str(path)!r} of {what} no longer exists (clear the cache entry or run --force)"
        )
    return path


def load(ctx: StepContext, params: LoadParams) -> Model:
    try:
        with Checkpoint.open(params.path) as ck:
            summary = {
                "tensors": len(ck.names),
                "parameters": sum(ck.info(n).numel for n in ck.names),
                "dtypes": sorted({str(ck.info(n).dtype).removeprefix("torch.") for n in ck.names}),
                "layers": ck.num_layers,
                "tied_embeddings": ck.tied_embeddings,
            }
        return reference(params.path, checkpoint=summary)
    except CheckpointError as exc:
        raise StepError(str(exc)) from None


def _labels(ctx: StepContext, n: int) -> list[str]:
    given = ctx.input_names.get("models")
    if isinstance(given, list) and len(given) == n:
        return [str(g) for g in given]
    return [f"models[{i}]" for i in range(n)]


def _run(
    ctx: StepContext,
    method: str,
    method_params: dict[str, Any],
    base: Model | None,
    models: list[Model],
    options: StreamOptions,
) -> Model:
    base_path = checkpoint_path(base, "base") if base is not None else None
    labels = _labels(ctx, len(models))
    paths = [checkpoint_path(m, label) for m, label in zip(models, labels)]
    out_dir = ctx.work_dir / "checkpoint"
    if out_dir.exists():  # a run that did not finish: start again
        shutil.rmtree(out_dir)
    try:
        info = stream_merge(
            method,
            base_path,
            paths,
            method_params,
            out_dir,
            options=options,
            labels=labels,
            generator=ctx.generator(),
            progress=ctx.progress,
        )
    except CheckpointError as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise StepError(str(exc)) from None
    return reference(out_dir, merge=info)


def merge_checkpoints(
    ctx: StepContext, params: Params, *, models: list[Model], base: Model | None = None
) -> Model:
    method = str(params.method)
    given = {k: getattr(params, k) for k in METHODS[method].model_fields if getattr(params, k) is not None}
    options = StreamOptions(
        dtype=params.dtype,
        out_dtype=params.out_dtype,
        shard_size=params.shard_size,
        extra=params.extra,
        tied=params.tied,
        stats=params.stats,
    )
    return _run(ctx, method, given, base, models, options)


def streamed(op: str) -> Callable[..., Model]:
    """The streaming implementation of the element-wise operator ``op`` (same ports and parameters),
    for calls whose inputs are checkpoint references."""
    if op not in METHODS:
        raise KeyError(f"{op!r} has no streaming implementation (streamed: {', '.join(METHODS)})")

    def run(
        ctx: StepContext,
        params: Params,
        *,
        models: list[Model] | None = None,
        base: Model | None = None,
        a: Model | None = None,
        b: Model | None = None,
    ) -> Model:
        inputs = [a, b] if op == "slerp" else list(models or [])
        everyone = [m for m in [base, *inputs] if m is not None]
        if not all(is_checkpoint(m) for m in everyone):
            raise StepError(
                f"{op}: cannot merge checkpoints with models held in memory; load them all with load(...)"
            )
        return _run(ctx, op, params.model_dump(), base, [m for m in inputs if m is not None], StreamOptions())

    run.__name__ = f"streamed_{op}"
    return run
