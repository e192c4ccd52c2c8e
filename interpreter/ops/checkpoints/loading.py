"""Step implementations: ``load`` (a reference to a checkpoint on disk) and ``merge_checkpoints``
(any declared merge method, streamed with explicit options)."""

from __future__ import annotations

from ...checkpoints.layout import CheckpointError, reference
from ...checkpoints.source import Checkpoint
from ...errors import StepError
from ...run.context import StepContext
from ...values import CheckpointRef
from ..merge import method as merge_method
from .specs import LoadParams, MergeCheckpointsParams, StackParams

__all__ = ["load", "merge_checkpoints", "stack"]


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
    from ...checkpoints.engine import StreamOptions
    from ..merge.apply import stream
    from ..merge.stats import MergeStats

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


def stack(
    ctx: StepContext, params: StackParams, *, models: list[CheckpointRef], base: CheckpointRef | None = None,
) -> CheckpointRef:
    from ...checkpoints.engine import StreamOptions
    from ..merge.apply import streamed_checkpoint
    from ..merge.merging import labels
    from .stacking import stream_stack

    method = merge_method.get(params.method)
    assert method is not None
    if not all(isinstance(m, CheckpointRef) for m in [*models, *([base] if base is not None else [])]):
        raise StepError("stack stacks the layers of checkpoints on disk (make them with load(...)); "
                        "models held in memory have no layers to stack")
    names = labels(ctx, models, base)  # type: ignore[arg-type]
    base_name = names.pop(0) if base is not None else None
    paths = {name: m.existing(name) for name, m in zip(names, models)}
    if base is not None and base_name is not None:
        paths.setdefault(base_name, base.existing("base"))
    options = StreamOptions(dtype=params.dtype, out_dtype=params.out_dtype, shard_size=params.shard_size)
    return streamed_checkpoint(ctx, "stack: ", lambda out_dir: stream_stack(
        method, params.method_params(), params.mergekit_slices(), paths, base_name, out_dir,
        options=options, seed=ctx.seed, progress=ctx.progress))
