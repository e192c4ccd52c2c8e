"""The streaming merge: one output tensor at a time — read lazily, merge, write, free.

Peak memory is the handful of tensors one kernel call needs (the inputs widened to the compute
dtype and the kernel's temporaries), never a whole model. The merge itself is a *bound merge
method* (:class:`~mlspec.ops.merge.apply.BoundMethod`): the same object the in-memory merge drives,
which resolves each tensor's parameters and calls the method's kernel. This module only feeds it —
checking and planning the checkpoints' tensors, reading them, writing the output — and knows nothing
about any particular method.

A method with a whole-model pass (TIES with ``trim = model``) reads the task vectors in that pass
first. Element-wise kernels merge large tensors in row chunks once the method's per-tensor
statistics (TIES' per-tensor trim threshold) are known, which bounds the temporaries and gives the
same numbers. Random kernels draw from a stream seeded per tensor name, so tensors can be merged
side by side on several threads and still agree with the in-memory merge.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from . import hfdir, memory
from .layout import CheckpointError, parse_size
from .source import Checkpoint
from .validate import Job, plan_tensors
from .writer import ShardedWriter

__all__ = ["StreamOptions", "stream_merge", "run_jobs", "merge_info", "dtype_name", "DTYPES", "TensorMerge"]

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
Advance = Callable[..., None]
#: Large tensors of element-wise methods are merged CHUNK elements at a time: a chunk's dozen
#: float32 temporaries (0.5 MB each) stay in a core's cache. On the CI machine 1 << 17 used 7% less
#: CPU than 1 << 19 for TIES and 4% for breadcrumbs; 1 << 16 pays more in per-call overhead.
CHUNK = 1 << 17
_Merged = tuple[Tensor, list[Tensor], Tensor | None]  # the output, the models' tensors, the base's
#: Jobs submitted ahead of the one written next, per worker. Outputs are written in order, so with
#: one job per worker a worker that finished a small tensor idled until the large one before it
#: (an embedding) was done: a fifth of the workers' time in a streamed TIES merge. Memory stays
#: bounded by the size budget in :func:`run_jobs`, not by this count.
_QUEUED = 4


class TensorMerge(Protocol):
    """What the engine needs of a merge (:class:`mlspec.ops.merge.apply.BoundMethod` is one)."""

    name: str
    num_layers: int
    params: dict[str, Any]
    extras: dict[str, Any]

    @property
    def elementwise(self) -> bool: ...

    def prepare(self, groups: Callable[[], Iterable[tuple[Tensor | None, list[Tensor]]]]) -> None: ...

    def tensor_extras(
        self, name: str, base: Tensor | None, tensors: Sequence[Tensor], **overrides: Any
    ) -> dict[str, Any]: ...

    def __call__(self, name: str, base: Tensor | None, tensors: Sequence[Tensor], **extra: Any) -> Tensor: ...


class Stats(Protocol):
    """Per-tensor merge statistics: ``measure`` runs on the worker that merged the tensor (it must
    not touch shared state), ``record`` on the writing thread, in tensor order."""

    def measure(self, merged: Tensor, tensors: Sequence[Tensor], base: Tensor | None) -> Any: ...

    def record(self, name: str, measured: Any) -> None: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StreamOptions:
    dtype: str = "float32"
    out_dtype: str | None = None
    shard_size: str | int = "5GB"
    extra: Literal["error", "base", "drop"] = "error"
    tied: Literal["error", "untie"] = "error"
    #: Per-tensor merge statistics (see mlspec.ops.merge.stats), or None to skip them.
    stats: Stats | None = None
    #: Tensors merged side by side, each on one thread: per-tensor kernels are short memory-bound
    #: passes, so threads across tensors beat torch's intra-op threads (which stall on a busy CPU).
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))


def _read(ck: Checkpoint, name: str, dtype: torch.dtype) -> Tensor:
    return ck.tensor(name).to(dtype)


def stream_merge(
    merge: TensorMerge,
    base: str | Path | None,
    models: Sequence[str | Path],
    out_dir: Path,
    *,
    options: StreamOptions = StreamOptions(),
    labels: Sequence[str] | None = None,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Merge the checkpoints at ``base`` and ``models`` into the directory ``out_dir`` with ``merge``.

    Returns JSON for the merged checkpoint's ``info["merge"]``. Every checkpoint is validated before
    the first tensor is merged; the output has the base's config and tokenizer when it has them."""
    names = list(labels) if labels is not None else [str(m) for m in models]
    paths = ([base] if base is not None else []) + list(models)
    labelled = (["base " + (str(base))] if base is not None else []) + [f"model {n}" for n in names]
    started = time.perf_counter()
    with ExitStack() as stack:
        inputs = [stack.enter_context(Checkpoint.open(p)) for p in paths]
        out_dtype = DTYPES[options.out_dtype] if options.out_dtype else None
        plan = plan_tensors(
            list(zip(labelled, inputs)), extra=options.extra, tied=options.tied, out_dtype=out_dtype
        )
        merge.num_layers = plan.num_layers
        has_base = base is not None
        jobs = [replace(j, has_base=has_base) if j.copy_from is None else j for j in plan.jobs]
        run_jobs(merge, inputs, jobs, out_dir, options=options, progress=progress)
        reference = inputs[0]
        written = {j.out_dtype for j in plan.merged}
        hfdir.write_config(
            out_dir, reference.config, dtype=dtype_name(written), untied=bool(plan.notes.get("untied"))
        )
        hfdir.copy_companions(reference.layout.directory, out_dir)
    numel = sum(math.prod(j.shape) for j in plan.merged)
    return merge_info(merge, options, numel, started, plan.notes, paths, len(plan.jobs))


def merge_info(merge: TensorMerge, options: StreamOptions, numel: int, started: float, notes: dict[str, Any],
          paths: Sequence[str | Path], written: int) -> dict[str, Any]:
    info: dict[str, Any] = (
        options.stats.summary()
        if options.stats is not None
        else {"method": merge.name, "params": merge.params, "total": {"numel": numel}}
    )
    info.update(
        streamed=True,
        seconds=round(time.perf_counter() - started, 3),
        notes=notes,
        inputs=[str(Path(p).resolve()) for p in paths],
        written=written,
    )
    info.update({k: v for k, v in merge.extras.items() if isinstance(v, int | float | str | list)})
    return info


def _reads(job: Job, inputs: list[Checkpoint]) -> list[Checkpoint]:
    return [inputs[i] for i in job.reads] if job.reads else inputs


@memory.reused_while_merging()  # chunk temporaries reuse pages instead of faulting in fresh ones
def run_jobs(
    merge: TensorMerge,
    inputs: list[Checkpoint],
    jobs: list[Job],
    out_dir: Path,
    *,
    options: StreamOptions,
    progress: Callable[[int, str], Any] | None = None,
) -> None:
    """Read, merge (or copy) and write ``jobs`` into ``out_dir``: the whole-model pass first (if the
    merge has one), then the tensors side by side on ``options.workers`` threads."""
    compute = DTYPES[options.dtype]
    merged_jobs = [j for j in jobs if j.copy_from is None]
    track = progress or (lambda total, desc: _Silent())

    def groups() -> Iterator[tuple[Tensor | None, list[Tensor]]]:
        with track(len(merged_jobs), f"{merge.name}: whole-model pass") as advance:
            for job in merged_jobs:
                tensors = [_read(ck, s, compute) for ck, s in zip(_reads(job, inputs), job.sources)]
                yield (tensors[0], tensors[1:]) if job.has_base else (None, tensors)
                advance()

    try:
        merge.prepare(groups)
    except ValueError as exc:
        raise CheckpointError(f"{merge.name}: {exc}") from None
    with track(len(jobs), f"{merge.name} (streaming)") as advance:
        out_dir.mkdir(parents=True, exist_ok=True)
        workers = max(1, options.workers)
        with (
            _one_thread_per_worker(),
            ShardedWriter(
                out_dir,
                [j.planned for j in jobs],
                shard_bytes=parse_size(options.shard_size),
                metadata={"mlspec.method": merge.name},
            ) as writer,
            ThreadPoolExecutor(workers) as pool,
        ):
            pending: deque[tuple[Job, Future[tuple[Tensor, Any]]]] = deque()

            def finish_one() -> None:
                job, future = pending.popleft()
                merged, measured = future.result()
                if measured is not None:
                    assert options.stats is not None
                    options.stats.record(job.name, measured)
                writer.write(job.name, merged)
                advance()

            # Whole-tensor kernels need many temporaries of a tensor's size: those run side by side
            # only while they add up to no more than the largest tensor. Chunked ones need few.
            budget = max(math.prod(j.shape) for j in jobs) * (workers if merge.elementwise else 1)
            for job in jobs:
                size = math.prod(job.shape)
                while pending and (
                    len(pending) >= _QUEUED * workers or sum(math.prod(j.shape) for j, _ in pending) + size > budget
                ):
                    finish_one()
                future = pool.submit(_merge_and_measure, job, inputs, job.merge or merge, compute, options.stats)
                pending.append((job, future))
            while pending:
                finish_one()


def _merge_and_measure(
    job: Job, inputs: list[Checkpoint], merge: TensorMerge, compute: torch.dtype, stats: Stats | None
) -> tuple[Tensor, Any]:
    merged, xs, base = _merge_one(job, inputs, merge, compute)
    measured = stats.measure(merged, xs, base) if stats is not None and job.copy_from is None else None
    return merged, measured


def _merge_one(
    job: Job,
    inputs: list[Checkpoint],
    merge: TensorMerge,
    compute: torch.dtype,
) -> _Merged:
    if job.copy_from is not None and not job.reads:
        source = job.sources[0] if len(job.sources) == 1 else job.sources[job.copy_from]
        return inputs[job.copy_from].tensor(source), [], None
    if job.copy_from is not None:  # byte-exact, from the input the job names
        return inputs[job.reads[job.copy_from]].tensor(job.sources[job.copy_from]), [], None
    has_base = bool(job.has_base)
    overrides = dict(job.overrides or {})
    chunked = merge.elementwise and len(job.shape) > 1 and math.prod(job.shape) > CHUNK
    tensors = [ck.tensor(s) if chunked else _read(ck, s, compute) for ck, s in zip(_reads(job, inputs), job.sources)]
    base, xs = (tensors[0], tensors[1:]) if has_base else (None, tensors)
    try:
        with torch.no_grad():
            if not chunked:
                return merge(job.name, base, xs, **overrides), xs, base
            whole = merge.tensor_extras(job.name, base, xs, **overrides)  # in the stored dtype: one temporary at a time
            merged = memory.empty(job.shape, job.out_dtype)
            rows = max(1, CHUNK // math.prod(job.shape[1:]))
            for start in range(0, job.shape[0], rows):
                part = [t[start : start + rows].to(compute) for t in tensors]
                pb, px = (part[0], part[1:]) if has_base else (None, part)
                these = {k: _rows(v, start, start + rows, job.shape) for k, v in whole.items()}
                merged[start : start + rows] = merge(job.name, pb, px, **these, **overrides)
            return merged, xs, base
    except ValueError as exc:  # the kernels' own parameter checks
        raise CheckpointError(f"{merge.name}: tensor {job.name!r}: {exc}") from None


def _rows(value: Any, start: int, stop: int, shape: tuple[int, ...]) -> Any:
    """A row chunk's share of a whole-tensor statistic: the rows of a per-entry tensor of the
    merged tensor's shape (or of each in a list); anything else (a threshold) as it is."""
    if isinstance(value, Tensor) and tuple(value.shape) == tuple(shape):
        return value[start:stop]
    if isinstance(value, list) and any(isinstance(v, Tensor) for v in value):
        return [_rows(v, start, stop, shape) for v in value]
    return value


def dtype_name(dtypes: set[torch.dtype]) -> str | None:
    names = {n for n, d in DTYPES.items() if d in dtypes}
    return names.pop() if len(names) == 1 else None


@contextmanager
def _one_thread_per_worker() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Silent:
    def __enter__(self) -> Advance:
        return lambda *a, **k: None

    def __exit__(self, *exc: object) -> None:
        return None
