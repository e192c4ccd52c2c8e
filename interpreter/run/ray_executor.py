"""Ray: each step to run is a Ray task, for studies that outgrow one machine.

Upstream results travel as Ray object references (tensors + JSON parts, as the cache stores them),
so workers need no shared filesystem; results already in the cache are put into the object store
by the driver. The cache stays in the driver: it looks steps up before anything is submitted and
writes each result as it arrives. Steps on CUDA ask Ray for one GPU each. A failed task's
dependents are reported as skipped; independent steps still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import MlspecError
from ..values import from_parts, to_parts
from .executor import StepOutcome, computed, try_step

if TYPE_CHECKING:
    from ..plan.steps import Step
    from .executor import Runner, RunResult

__all__ = ["run_on_ray"]

# What a task returns: (tensors, meta) of its value or None, an error or None, seconds, skipped.
Outcome = tuple[Any, str | None, float, bool]


def _ray_step(payload: dict[str, Any], *upstream: Outcome) -> Outcome:
    """A Ray task: the step's inputs arrive resolved, in the order of ``payload["upstream"]``."""
    values = {}
    for (name, key), (parts, error, _seconds, _skipped) in zip(payload["upstream"], upstream):
        if error is not None:
            return None, f"'{name}' did not finish", 0.0, True
        values[key] = from_parts(*parts)
    seconds, value, error = try_step(payload, None, values, save=False)
    return (None if value is None else to_parts(value)), error, seconds, False


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise MlspecError("--executor ray needs Ray: pip install 'mlspec[ray]'") from None
    if not ray.is_initialized():
        # RAY_ADDRESS joins a running cluster; without it Ray starts a local one.
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return ray


def run_on_ray(runner: Runner, todo: list[Step], result: RunResult, advance: Callable[..., None]) -> None:
    ray = _ray()
    task = ray.remote(_ray_step)
    refs: dict[str, Any] = {}
    for step in todo:  # topological order: every upstream reference exists before it is passed on
        upstream = list(dict.fromkeys(step.upstream()))
        for name in upstream:
            if name not in refs:  # already in the cache: hand its value to Ray once
                value = runner.cache.load(runner.plan.step(name).key)
                refs[name] = ray.put((to_parts(value), None, 0.0, False))
        payload = runner.payload(step)
        payload["upstream"] = [(name, runner.plan.step(name).key) for name in upstream]
        gpus = 1 if runner.device.startswith("cuda") else 0
        refs[step.name] = task.options(num_gpus=gpus).remote(payload, *(refs[n] for n in upstream))
    pending = {refs[step.name]: step for step in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        step = pending.pop(done[0])
        parts, error, seconds, skipped = ray.get(done[0])
        if error is None:
            runner.cache.save(step.key, from_parts(*parts), extra=computed(step.name, step.op, seconds),
                              replace=not runner.cacheable(step))
            result.outcomes[step.name] = StepOutcome(step.name, "ran", seconds)
        else:
            result.outcomes[step.name] = StepOutcome(step.name, "skipped" if skipped else "failed", 0.0, error)
        advance(finished=step.name, seconds=seconds or 0.0, **({"error": error} if error else {}))
