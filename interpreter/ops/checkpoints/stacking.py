"""Layer stacking streamed: a :class:`~mlspec.checkpoints.slices.StackPlan` turned into the
engine's jobs (copies read byte-exact from the source that the plan names; merged tensors call the
method with the plan's parameters), written by the same runner as every streamed merge."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ...checkpoints import hfdir
from ...checkpoints.engine import DTYPES, StreamOptions, dtype_name, merge_info, run_jobs
from ...checkpoints.layout import CheckpointError
from ...checkpoints.slices import PlannedTensor, plan_slices
from ...checkpoints.source import Checkpoint
from ...checkpoints.validate import Job, merged_dtype
from ..merge.apply import BoundMethod
from ..merge.method import MergeMethod, kernel_of

__all__ = ["stream_stack"]


def _overrides(method: MergeMethod, planned: PlannedTensor, n: int, first: int) -> dict[str, Any]:
    """The method's parameters for one tensor with the plan's precedence (source, slice, stack);
    the models are the sources from ``first`` on (``first`` = 1 when the first is the base)."""
    out: dict[str, Any] = {}
    for key in method.params.model_fields:
        if key in method.per_model:
            each = [planned.parameter(key, source=first + i) for i in range(n)]
            if all(v is not None for v in each):
                out[key] = each
        else:
            value = planned.parameter(key)
            if value is not None:
                out[key] = value
    return out


def stream_stack(
    method: MergeMethod,
    values: Mapping[str, Any],
    slices: Sequence[Mapping[str, Any]],
    paths: Mapping[str, str | Path],
    base: str | None,
    out_dir: Path,
    *,
    options: StreamOptions,
    seed: int = 0,
    progress: Callable[[int, str], Any] | None = None,
) -> dict[str, Any]:
    """Stack the checkpoints at ``paths`` (by label) as mergekit's ``slices`` say into ``out_dir``.

    Merged slices give the method their sources in order as its models; a method that requires a
    base gets the slice's base (which must be one of its sources) as the base and the others as
    models. Raises :class:`CheckpointError`."""
    labels = list(paths)
    started = time.perf_counter()
    out_dtype = DTYPES[options.out_dtype] if options.out_dtype else None
    with ExitStack() as stack:
        inputs = [stack.enter_context(Checkpoint.open(paths[label])) for label in labels]
        plan = plan_slices(slices, {label: ck.names for label, ck in zip(labels, inputs)},
                           method=method.name, base_model=base, parameters=values)
        bounds: dict[int, BoundMethod] = {}
        jobs = []
        notes: dict[str, list[str]] = {"copied": []}  # as a plain merge's plan notes them
        for pt in plan.tensors:
            reads = [labels.index(s.model) for s in pt.sources]
            names = [s.tensor for s in pt.sources]
            infos = [inputs[r].info(n) for r, n in zip(reads, names)]
            if len({tuple(i.shape) for i in infos}) > 1:
                found = ", ".join(f"{s.model} {list(i.shape)}" for i, s in zip(infos, pt.sources))
                raise CheckpointError(f"cannot stack layers: slice {pt.slice}: {pt.name!r} has different shapes "
                                      f"in its sources ({found})")
            dtype, floating = merged_dtype([i.dtype for i in infos], out_dtype)  # as a plain merge does
            common = dict(name=pt.name, shape=tuple(infos[0].shape), out_dtype=dtype, layer=pt.layer)
            if pt.copied or not floating:
                jobs.append(Job(**common, sources=(names[0],), copy_from=0, reads=(reads[0],)))
                if pt.copied:
                    notes["copied"].append(pt.name)
                else:
                    notes.setdefault("not merged (not floating point)", []).append(pt.name)
                continue
            has_base = method.base == "required"
            if has_base:
                if pt.base not in [s.model for s in pt.sources]:
                    raise CheckpointError(f"slice {pt.slice}: {method.name} needs a base among the slice's "
                                          f"sources (base = {pt.base!r})")
                at = [s.model for s in pt.sources].index(pt.base)
                reads.insert(0, reads.pop(at))
                names.insert(0, names.pop(at))
                pt = dataclasses.replace(pt, sources=(pt.sources[at], *pt.sources[:at], *pt.sources[at + 1:]))
            n = len(names) - has_base
            problem = method.inputs_error(n, has_base) or method.count_error(n, dict(values))
            if problem:
                raise CheckpointError(f"slice {pt.slice}: {problem}")
            bound = bounds.setdefault(n, BoundMethod(method, values, n, seed=seed))
            jobs.append(Job(**common, sources=tuple(names), reads=tuple(reads), has_base=has_base,
                            overrides=_overrides(method, pt, n, int(has_base)), merge=bound))
        local = any(pt.slice_parameters or any(src.parameters for src in pt.sources) for pt in plan.tensors
                    if not pt.copied)
        prepare = kernel_of(method.prepare)
        if local and prepare is not None and prepare(method, values, lambda: iter(())):
            # A whole-model pass (TIES' trim = model) ranks with the stack's own parameters: slice and
            # source parameters would be silently ignored by it, so they are refused.
            raise CheckpointError(f"{method.name} with these parameters ranks whole task vectors at the stack's "
                                  "parameters; slice or source parameters need a per-tensor form "
                                  "(for ties: trim = tensor)")
        if method.prepare is not None and len(bounds) > 1:
            raise CheckpointError(f"{method.name} has a whole-model pass: every merged slice must merge the same "
                                  f"number of models (not {sorted(bounds)})")
        # The runner's merge runs the whole-model pass and names the work (merged jobs carry theirs).
        lead = next(iter(bounds.values()), None) or BoundMethod(method, values, 1, seed=seed)
        run_jobs(lead, inputs, jobs, out_dir, options=options, progress=progress)
        reference = inputs[labels.index(plan.config_from)]
        config = {**reference.config, "num_hidden_layers": plan.num_hidden_layers} if reference.config else {}
        hfdir.write_config(out_dir, config, dtype=dtype_name({j.out_dtype for j in jobs}), untied=False)
        hfdir.copy_companions(reference.layout.directory, out_dir)
    merged = [j for j in jobs if j.copy_from is None]
    info = merge_info(lead, options, sum(math.prod(j.shape) for j in merged), started,
                 notes, [paths[x] for x in labels], len(jobs))
    info.update(num_hidden_layers=plan.num_hidden_layers, slices=list(slices))
    return info
