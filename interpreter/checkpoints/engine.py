"""The streaming merge: one output tensor at a time — read lazily, merge, write, free.

Peak memory is the handful of tensors one kernel call needs (the inputs widened to the compute
dtype and the kernel's temporaries), never a whole model. The merge math is the in-memory
operators' own per-tensor kernels (:mod:`mlspec.ops.merge.kernels`); this module only feeds them,
resolving parameters that vary by tensor name or layer depth for each tensor.

TIES with ``trim = model`` ranks all of a task vector's magnitudes together; its thresholds are
computed first by two streamed passes (:class:`~mlspec.ops.merge.sparsify.MagnitudeThreshold`).
DARE draws from one generator in tensor order, as the in-memory operator does, so both agree.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from mlspec.checkpoints import hfdir
from mlspec.checkpoints import settings as st
from mlspec.checkpoints.layout import CheckpointError, parse_size
from mlspec.checkpoints.source import Checkpoint
from mlspec.checkpoints.specs import METHODS, method_params, per_model_fields, varying_fields
from mlspec.checkpoints.validate import Job, TensorPlan, plan_tensors
from mlspec.checkpoints.writer import ShardedWriter
from mlspec.ops.merge import kernels
from mlspec.ops.merge.sparsify import MagnitudeThreshold, magnitude_threshold
from mlspec.ops.merge.stats import MergeStats

__all__ = ["StreamOptions", "stream_merge", "DTYPES", "BASE_POLICY"]

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: Whether each method needs a base ("required"), may take one ("optional") or takes none.
BASE_POLICY = {
    "average": "none",
    "spherical_mean": "none",
    "slerp": "optional",
    "task_arithmetic": "required",
    "ties": "required",
    "dare": "required",
    "breadcrumbs": "required",
    "model_stock": "required",
}
Advance = Callable[..., None]
#: Methods whose kernels are element-wise (TIES once its trim thresholds are known): large tensors are
#: merged CHUNK elements at a time, which bounds the kernels' temporaries and gives the same numbers.
ELEMENTWISE = {"average", "task_arithmetic", "ties"}
CHUNK = 1 << 19
_Merged = tuple[Tensor, list[Tensor], Tensor | None]  # the output, the models' tensors, the base's


@dataclass(frozen=True)
class StreamOptions:
    dtype: str = "float32"
    out_dtype: str | None = None
    shard_size: str | int = "5GB"
    extra: Literal["error", "base", "drop"] = "error"
    tied: Literal["error", "untie"] = "error"
    stats: bool = False
    #: Tensors merged side by side, each on one thread: per-tensor kernels are short memory-bound
    #: passes, so threads across tensors beat torch's intra-op threads (which stall on a busy CPU).
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))


def _per_tensor(params: dict[str, Any], method: str, n: int) -> Callable[[str, float], dict[str, Any]]:
    """A function giving the method's parameters resolved for one tensor name and depth."""
    model = METHODS[method]
    many, varying = per_model_fields(model), varying_fields(model)
    for key in many:
        value = params.get(key)
        if isinstance(value, list) and not st.is_rules(value) and len(value) != n:
            raise CheckpointError(
                f"{method}: {key} needs one value per model ({n}), not {len(value)} ({value!r})"
            )

    def resolve(name: str, t: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for key, value in params.items():
                if value is None or key not in varying:
                    out[key] = value
                elif key in many:
                    each = value if isinstance(value, list) and not st.is_rules(value) else [value] * n
                    out[key] = [st.resolve(v, name, t) for v in each]
                else:
                    out[key] = st.resolve(value, name, t)
        except LookupError as exc:
            raise CheckpointError(f"{method}: {key}: {exc}") from None
        return out

    return resolve


def _call(method: str, p: dict[str, Any], base: Tensor | None, xs: list[Tensor], **extra: Any) -> Tensor:
    """The kernel call for a method's operator-level parameters (``p`` resolved for this tensor)."""
    n = len(xs)
    weights = p.get("weights")
    consensus = p.get("elect") if p.get("merge") == "ties" else None
    if method == "average":
        return kernels.linear(None, xs, weights=weights, normalize=p["normalize"])
    if method == "spherical_mean":
        return kernels.spherical_mean(None, xs, weights=weights, max_iter=p["max_iter"])
    if method == "task_arithmetic":
        scale = p["scale"]
        return kernels.task_arithmetic(base, xs, scales=scale if isinstance(scale, list) else [scale] * n)
    if method == "slerp":
        return kernels.slerp(base, xs, t=p["t"], dot_threshold=p["dot_threshold"])
    if method == "model_stock":
        return kernels.model_stock(base, xs, mean=p["mean"])
    shared = dict(weights=weights, weights_at=p["weights_at"], normalize=p["normalize"], scale=p["scale"])
    assert base is not None
    if method == "ties":
        return kernels.ties(
            base, xs, density=p["density"], elect=p["elect"], thresholds=extra.get("thresholds"), **shared
        )
    if method == "dare":
        return kernels.dare(
            base,
            xs,
            density=p["density"],
            rescale=p["rescale"],
            consensus=consensus,
            generator=extra.get("generator"),
            **shared,
        )
    return kernels.breadcrumbs(
        base, xs, density=p["density"], gamma=p["gamma"], consensus=consensus, **shared
    )


def _read(ck: Checkpoint, name: str, dtype: torch.dtype) -> Tensor:
    return ck.tensor(name).to(dtype)


def _model_thresholds(
    inputs: list[Checkpoint], plan: TensorPlan, density: float, dtype: torch.dtype, advance: Advance
) -> list[float]:
    """TIES ``trim = model``: each task vector's whole-model magnitude threshold, in two passes."""
    base, models = inputs[0], inputs[1:]
    counters = [MagnitudeThreshold(density) for _ in models]

    def sweep(feed: Callable[[MagnitudeThreshold, Tensor], None]) -> None:
        for job in plan.merged:
            b = _read(base, job.sources[0], dtype)
            for counter, ck, source in zip(counters, models, job.sources[1:]):
                feed(counter, _read(ck, source, dtype) - b)
            advance()

    sweep(MagnitudeThreshold.observe)
    if any(c.needs_refine for c in counters):
        sweep(MagnitudeThreshold.refine)
    return [c.value for c in counters]


def stream_merge(
    method: str,
    base: str | Path | None,
    models: Sequence[str | Path],
    params: Mapping[str, Any],
    out_dir: Path,
    *,
    options: StreamOptions = StreamOptions(),
    labels: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Merge checkpoints at ``base`` and ``models`` into the HF directory ``out_dir``.

    ``params`` are the method's operator parameters (settings allowed); returns JSON for
    ``Model.info["merge"]``. Every checkpoint is validated before the first tensor is merged."""
    if method not in METHODS:
        raise CheckpointError(f"cannot stream {method!r} (streamed methods: {', '.join(METHODS)})")
    try:
        full = method_params(method, dict(params))
    except ValueError as exc:
        raise CheckpointError(f"{method}: {exc}") from None
    policy = BASE_POLICY[method]
    if policy == "required" and base is None:
        raise CheckpointError(f"{method} needs a base model")
    if policy == "none" and base is not None:
        raise CheckpointError(f"{method} takes no base model")
    if method == "slerp" and len(models) != 2:
        raise CheckpointError(f"slerp merges exactly two models (not {len(models)})")
    if method == "model_stock" and len(models) < 2:
        raise CheckpointError(f"model_stock needs at least two fine-tuned models (not {len(models)})")
    names = list(labels) if labels is not None else [str(m) for m in models]
    paths = ([base] if base is not None else []) + list(models)
    labelled = (["base " + (str(base))] if base is not None else []) + [f"model {n}" for n in names]
    resolve = _per_tensor(full, method, len(models))
    compute = DTYPES[options.dtype]
    started = time.perf_counter()
    with ExitStack() as stack:
        inputs = [stack.enter_context(Checkpoint.open(p)) for p in paths]
        out_dtype = DTYPES[options.out_dtype] if options.out_dtype else None
        plan = plan_tensors(
            list(zip(labelled, inputs)), extra=options.extra, tied=options.tied, out_dtype=out_dtype
        )
        trim_model = method == "ties" and full["trim"] == "model"
        if trim_model and not st.is_uniform(full["density"]):
            raise CheckpointError(
                "ties: trim = model ranks a whole task vector at one density; a density that "
                "varies by tensor needs trim = tensor"
            )
        passes = len(plan.merged) * 2 if trim_model else 0
        track = progress or (lambda total, desc: _Silent())
        with track(len(plan.jobs) + passes, f"{method} (streaming)") as advance:
            extra: dict[str, Any] = {"generator": generator}
            if trim_model:
                density = st.resolve(full["density"], "", 0.0)
                extra["thresholds"] = _model_thresholds(inputs, plan, density, compute, advance)
            stats = MergeStats(method, full) if options.stats else None
            out_dir.mkdir(parents=True, exist_ok=True)
            metadata = {"mlspec.method": method}
            # DARE draws from one generator in tensor order: only a single worker keeps that order.
            workers = 1 if method == "dare" else max(1, options.workers)
            with (
                _one_thread_per_worker(),
                ShardedWriter(
                    out_dir,
                    [j.planned for j in plan.jobs],
                    shard_bytes=parse_size(options.shard_size),
                    metadata=metadata,
                ) as writer,
                ThreadPoolExecutor(workers) as pool,
            ):
                pending: deque[tuple[Job, Future[_Merged]]] = deque()

                def finish_one() -> None:
                    job, future = pending.popleft()
                    merged, xs, b = future.result()
                    if stats is not None and job.copy_from is None:
                        stats.add(job.name, merged, xs, b)
                    writer.write(job.name, merged)
                    advance()

                # Whole-tensor kernels need many temporaries of a tensor's size: those run side by side
                # only while they add up to no more than the largest tensor. Chunked ones need few.
                budget = max(math.prod(j.shape) for j in plan.jobs) * (
                    workers if method in ELEMENTWISE else 1
                )
                for job in plan.jobs:
                    size = math.prod(job.shape)
                    while pending and (
                        len(pending) >= workers or sum(math.prod(j.shape) for j, _ in pending) + size > budget
                    ):
                        finish_one()
                    pending.append(
                        (
                            job,
                            pool.submit(
                                _merge_one,
                                job,
                                inputs,
                                plan,
                                method,
                                resolve,
                                compute,
                                extra,
                                has_base=base is not None,
                            ),
                        )
                    )
                while pending:
                    finish_one()
        reference = inputs[0]
        written = {j.out_dtype for j in plan.merged}
        hfdir.write_config(
            out_dir, reference.config, dtype=_dtype_name(written), untied=bool(plan.notes.get("untied"))
        )
        hfdir.copy_companions(reference.layout.directory, out_dir)
    numel = sum(math.prod(j.shape) for j in plan.merged)
    info: dict[str, Any] = (
        stats.summary()
        if stats is not None
        else {"method": method, "params": full, "total": {"numel": numel}}
    )
    info.update(
        streamed=True,
        seconds=round(time.perf_counter() - started, 3),
        notes=plan.notes,
        inputs=[str(Path(p).resolve()) for p in paths],
        written=len(plan.jobs),
    )
    if trim_model:
        info["thresholds"] = extra["thresholds"]
    return info


def _tensor_threshold(base: Tensor, x: Tensor, density: float, dtype: torch.dtype) -> float:
    """TIES' per-tensor trim threshold of one task vector (what the kernel computes for itself)."""
    delta = x.to(dtype, copy=True)
    delta.sub_(base.to(dtype)).abs_()
    return magnitude_threshold(delta, density)


def _merge_one(
    job: Job,
    inputs: list[Checkpoint],
    plan: TensorPlan,
    method: str,
    resolve: Callable[[str, float], dict[str, Any]],
    compute: torch.dtype,
    extra: dict[str, Any],
    *,
    has_base: bool,
) -> _Merged:
    if job.copy_from is not None:
        source = job.sources[0] if len(job.sources) == 1 else job.sources[job.copy_from]
        return inputs[job.copy_from].tensor(source), [], None
    p = resolve(job.name, st.depth(job.layer, plan.num_layers))
    chunked = method in ELEMENTWISE and len(job.shape) > 1 and math.prod(job.shape) > CHUNK
    tensors = [ck.tensor(s) if chunked else _read(ck, s, compute) for ck, s in zip(inputs, job.sources)]
    base, xs = (tensors[0], tensors[1:]) if has_base else (None, tensors)
    try:
        with torch.no_grad():
            if not chunked:
                return _call(method, p, base, xs, **extra), xs, base
            if method == "ties" and extra.get("thresholds") is None:
                assert base is not None
                extra = {
                    **extra,
                    "thresholds": [_tensor_threshold(base, x, p["density"], compute) for x in xs],
                }
            merged = torch.empty(job.shape, dtype=job.out_dtype)
            rows = max(1, CHUNK // math.prod(job.shape[1:]))
            for start in range(0, job.shape[0], rows):
                part = [t[start : start + rows].to(compute) for t in tensors]
                pb, px = (part[0], part[1:]) if has_base else (None, part)
                merged[start : start + rows] = _call(method, p, pb, px, **extra)
            return merged, xs, base
    except ValueError as exc:  # the kernels' own parameter checks
        raise CheckpointError(f"{method}: tensor {job.name!r}: {exc}") from None


def _dtype_name(dtypes: set[torch.dtype]) -> str | None:
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
