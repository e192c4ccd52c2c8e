"""Step implementations: ``load`` (a reference to a checkpoint on disk) and ``merge_checkpoints``
(any declared merge method, streamed with explicit options)."""

from __future__ import annotations

from mlspec.checkpoints.layout import CheckpointError, reference
from mlspec.checkpoints.source import Checkpoint
from mlspec.errors import StepError
from mlspec.ops.checkpoints.specs import LoadParams, MergeCheckpointsParams
from mlspec.ops.merge import method as merge_method
from mlspec.run.context import StepContext
from mlspec.values import CheckpointRef

__all__ = ["load", "merge_checkpoints"]


def load(ctx: StepContext, params: LoadParams) -> CheckpointRef:
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


def merge_checkpoints(
    ctx: StepContext, params: MergeCheckpointsParams, *, models: list[CheckpointRef],
    base: CheckpointRef | None = None,
) -> CheckpointRef:
    from mlspec.checkpoints.engine import StreamOptions
    from mlspec.ops.merge.apply import stream
    from mlspec.ops.merge.stats import MergeStats

    method = merge_method.get(params.method)
    assert method is not None
    values = params.method_params()
    problem = method.inputs_error(len(models), base is not None) or method.count_error(len(models), values)
    if problem:
        raise StepError(problem)
    if not all(isinstance(m, CheckpointRef) for m in [*models, *([base] if base is not None else [])]):
        raise StepError("merge_checkpoints merges checkpoints on disk (make them with load(...)); "
                        f"for models trained in the study use {method.name}(...) directly")
    options = StreamOptions(
        dtype=params.dtype,
        out_dtype=params.out_dtype,
        shard_size=params.shard_size,
        extra=params.extra,
        tied=params.tied,
        stats=MergeStats(method.name, values) if params.stats else None,
    )
    return stream(ctx, method, values, base, models, options)
