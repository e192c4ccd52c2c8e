"""Run a plan: look each step up in the cache, run what is missing, in parallel where independent.

The cache lookup stays in the driver; only steps to run are executed. With ``jobs > 1`` steps run
in a pool of worker processes (spawned, so no torch state is forked); a worker receives the
step, loads its inputs from the cache by key and writes its output back, so nothing large
crosses process boundaries. A failing step never loses earlier work: its dependents are skipped,
independent steps still run, and every finished artifact stays in the cache.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .. import registry
from ..errors import Diagnostic, MlspecError, SpecError, StepError
from ..plan.graph import Plan
from ..plan.steps import Step
from ..values import Value, first_non_finite
from .cache import Cache
from .context import Progress, StepContext, file_problem

__all__ = ["StepOutcome", "RunResult", "Runner", "resolve_device", "explain", "stale", "torch_threads", "computed",
           "EXECUTORS"]

#: "local": in-process, or a pool of worker processes with --jobs; "ray": each step a Ray task.
EXECUTORS = ("local", "ray")


@dataclass
class StepOutcome:
    name: str
    state: str  # "cached" | "ran" | "failed" | "skipped"
    duration_s: float = 0.0
    error: str | None = None


@dataclass
class RunResult:
    outcomes: dict[str, StepOutcome] = field(default_factory=dict)
    device: str = "cpu"
    duration_s: float = 0.0

    @property
    def failed(self) -> list[StepOutcome]:
        return [o for o in self.outcomes.values() if o.state in ("failed", "skipped")]


def torch_threads() -> int:
    """The intra-op threads every step runs with: every usable core (``MLSPEC_THREADS`` overrides).

    One number for the in-process run, each ``--jobs`` worker and each Ray task, because a reduction
    split over another number of threads rounds differently, and the promise is the same bytes
    however a study is executed. Idle waiting threads sleep instead of spinning
    (``OMP_WAIT_POLICY=PASSIVE``, set when mlspec is imported), so a busy machine slows a run
    down in proportion instead of collapsing it: ``benchmarks/quickstart.py --busy`` measures it.
    """
    configured = os.environ.get("MLSPEC_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(device: str, *, here: bool = True) -> str:
    """``auto`` → cuda when present, else cpu. A device this machine lacks is refused here, before
    any step runs (a SpecError: exit code 2), rather than failing step after step. ``here=False``
    (Ray: the steps run on the cluster's machines) checks only the device's name. Imports torch, so
    a run calls it only once a step has to run."""
    import torch

    if device in ("auto", "cpu"):
        return "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise SpecError(Diagnostic(f"unknown device {device!r}", None, help="use auto, cpu, cuda or cuda:N"))
    if not here:
        return device
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= count:
        have = f"{count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
        raise SpecError(Diagnostic(f"device {device!r} is not available: this machine has {have}", None,
                                   help="run with --device cpu, or leave the study's device as auto"))
    return device


def computed(name: str, op: str, seconds: float | None) -> dict[str, Any]:
    """What the cache keeps about how an artifact was made; provenance reads it on later runs."""
    return {"name": name, "op": op, "duration_s": round(seconds or 0.0, 4),
            "computed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def explain(plan: Plan, cache: Cache, out_dir: Path, *, force: bool = False) -> list[tuple[Step, str, str]]:
    """For ``--dry-run``: each step with "cached" or "run" and the reason."""
    previous = cache.read_index(plan.study.name)
    out: list[tuple[Step, str, str]] = []
    rerun: set[str] = set()
    for step in plan.steps:
        reason = stale(step, cache, out_dir, force=force)
        if reason == "not in the cache":
            reason = _why(step, previous.get(step.name), rerun)
        if reason is not None:
            rerun.add(step.name)
        out.append((step, "cached" if reason is None else "run", reason or ""))
    return out


def stale(step: Step, cache: Cache, out_dir: Path, *, force: bool = False) -> str | None:
    """Why ``step`` must run, or None when its result can be used as it is. A step that writes files
    (an export) is used as it is only while the file is still the one its record describes."""
    if force:
        return "--force"
    if not cache.has(step.key):
        return "not in the cache"
    spec = registry.get(step.op)
    if spec is not None and not spec.cacheable:
        problem = file_problem(cache.load_meta(step.key).get("data", {}), out_dir)
        return None if problem is None else f"writes a file, and {problem}"
    return None


def _why(step: Step, before: dict[str, Any] | None, rerun: set[str]) -> str:
    if before is None:
        return "new step"
    changed = [n for n in step.upstream() if n in rerun]
    if changed:
        return "input changed: " + ", ".join(changed[:3]) + (" …" if len(changed) > 3 else "")
    for part in ("op", "version", "seed"):
        if before.get(part) != step.key_parts.get(part):
            return f"{part} changed: {before.get(part)!r} → {step.key_parts.get(part)!r}"
    old, new = before.get("params", {}), step.key_parts.get("params", {})
    diffs = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if diffs:
        return "parameter changed: " + "; ".join(diffs[:3])
    if before.get("inputs") != step.key_parts.get("inputs"):
        return "an input's content changed"
    return "not in the cache (cleared or never finished)"


def execute_step(payload: dict[str, Any], progress: Progress | None = None,
                 values: dict[str, Value] | None = None, *, save: bool = True) -> tuple[float | None, Value]:
    """Run one step; used in-process, in worker processes and in Ray tasks alike. Inputs come from
    ``values`` (by key) when there, else from the cache; with ``save`` the output goes to the cache,
    under the entry's lock, and the value returned is the one read back from it — so what later
    steps see is the same whether they run now, in another process, or in a resumed run. Seconds
    are None when another run computed the step while this one waited for the lock."""
    for file in payload.get("python", []):  # the spec's own operators (allowed when it was checked)
        registry.load_python(file)
    spec = registry.get(payload["op"])
    assert spec is not None
    cache = Cache(payload["cache"])
    if not save:
        return _compute(spec, payload, cache, progress, values)
    with cache.lock(payload["key"]):
        if payload.get("reuse") and cache.has(payload["key"]):
            return None, cache.load(payload["key"])
        duration, value = _compute(spec, payload, cache, progress, values)
        cache.save(payload["key"], value, extra=computed(payload["name"], payload["op"], duration),
                   replace=not spec.cacheable)
    return duration, cache.load(payload["key"])


def _compute(spec: registry.OpSpec, payload: dict[str, Any], cache: Cache, progress: Progress | None,
             values: dict[str, Value] | None) -> tuple[float, Value]:
    import torch

    memo = values if values is not None else {}

    def load(key: str) -> Value:
        return memo[key] if key in memo else cache.load(key)

    inputs = {port: [load(k) for k in keys] if isinstance(keys, list) else load(keys)
              for port, keys in payload["inputs"].items()}
    params = spec.params.model_validate(payload["params"])
    work_dir = Path(payload["cache"]) / "work" / payload["key"]  # created by the operators that use it
    ctx = StepContext(name=payload["name"], key=payload["key"], seed=payload["seed"] or 0,
                      device=payload["device"], out_dir=Path(payload["out_dir"]), work_dir=work_dir,
                      allow_outside=payload["allow_outside"], input_names=payload["input_names"],
                      _progress=progress)
    if torch.get_num_threads() != payload["threads"]:
        torch.set_num_threads(payload["threads"])
    torch.manual_seed(ctx.seed)
    start = time.perf_counter()
    value = spec.load()(ctx, params, **inputs)
    where = first_non_finite(value)
    if where is not None:
        raise StepError(f"the result is not finite: {where} is NaN or infinite (an overflow, or parameters "
                        "that push the numbers out of range)")
    return time.perf_counter() - start, value


def try_step(payload: dict[str, Any], progress: Progress | None = None, values: dict[str, Value] | None = None,
             *, save: bool = True) -> tuple[float | None, Value | None, str | None]:
    """:func:`execute_step` that reports failure instead of raising: ``(seconds, value, error)``.
    A spec's own errors keep their message; a crash inside an operator says what and where."""
    try:
        duration, value = execute_step(payload, progress, values, save=save)
    except MlspecError as exc:
        return 0.0, None, str(exc)
    except OSError as exc:  # a full or read-only disk: what failed, and which file
        return 0.0, None, f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    except Exception as exc:  # a bug or a bad input inside an operator: report it, keep the run going
        return 0.0, None, describe_crash(exc)
    return duration, value, None


def _worker(payload: dict[str, Any]) -> tuple[float | None, str | None]:
    duration, _, error = try_step(payload)
    return duration, error


def _finished(name: str, duration: float | None) -> StepOutcome:
    """A step that finished: computed here, or by another run while this one waited (None)."""
    return StepOutcome(name, "cached", 0.0) if duration is None else StepOutcome(name, "ran", duration)


def describe_crash(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Runner:
    def __init__(self, plan: Plan, cache: Cache, *, out_dir: Path, jobs: int = 1, force: bool = False,
                 allow_outside: bool = False, progress: Progress | None = None, device: str | None = None,
                 executor: str = "local"):
        if executor not in EXECUTORS:
            raise MlspecError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
        self.executor = executor
        self.plan = plan
        self.cache = cache
        self.out_dir = out_dir
        self.jobs = max(1, jobs)
        self.force = force
        self.allow_outside = allow_outside
        self.progress = progress
        self.requested_device = device or plan.study.device
        self.values: dict[str, Value] = {}  # in-process results, by key, freed after last use

    @cached_property
    def device(self) -> str:
        return resolve_device(self.requested_device, here=self.executor == "local")

    def payload(self, step: Step) -> dict[str, Any]:
        keys = {port: ([self.plan.step(n).key for n in names] if isinstance(names, list)
                       else self.plan.step(names).key) for port, names in step.inputs.items()}
        return {"name": step.name, "op": step.op, "params": step.params, "inputs": keys,
                "input_names": dict(step.inputs), "key": step.key, "seed": step.seed, "device": self.device,
                "cache": str(self.cache.root), "out_dir": str(self.out_dir), "allow_outside": self.allow_outside,
                "threads": torch_threads(), "reuse": not self.force and self.cacheable(step),
                "python": list(self.plan.study.python)}

    def cacheable(self, step: Step) -> bool:
        spec = registry.get(step.op)
        return spec is not None and spec.cacheable

    def _needs_run(self, step: Step) -> bool:
        return stale(step, self.cache, self.out_dir, force=self.force) is not None

    def run(self) -> RunResult:
        start = time.perf_counter()
        steps = self.plan.steps
        todo = [s for s in steps if self._needs_run(s)]
        # With nothing to run, torch is never imported just to name a device; a device this machine
        # lacks is refused here, before anything is written.
        result = RunResult(device=self.device if todo else f"{self.requested_device} (not needed: every step cached)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        to_run = {s.name for s in todo}
        result.outcomes.update({s.name: StepOutcome(s.name, "cached") for s in steps if s.name not in to_run})
        with self._overall(len(todo)) as advance:
            if self.executor == "ray" and todo:
                from .ray_executor import run_on_ray

                run_on_ray(self, todo, result, advance)
            elif self.jobs == 1 or len(todo) <= 1:
                self._run_serial(todo, result, advance)
            else:
                self._run_parallel(todo, result, advance)
        self.cache.write_index(self.plan.study.name, {s.name: {**s.key_parts, "key": s.key} for s in steps
                                                       if result.outcomes[s.name].state in ("cached", "ran")})
        result.duration_s = time.perf_counter() - start
        return result

    @contextmanager
    def _overall(self, total: int) -> Iterator[Callable[..., None]]:
        """One bar over all steps to run, beside each long step's own bar."""
        if self.progress is None or total == 0:
            yield lambda *a, **k: None
            return
        with self.progress(total, f"{self.plan.study.name}: steps") as advance:
            yield advance

    def _blocked(self, step: Step, result: RunResult) -> str | None:
        for up in step.upstream():
            outcome = result.outcomes.get(up)
            if outcome is not None and outcome.state in ("failed", "skipped"):
                return up
        return None

    def _run_serial(self, todo: list[Step], result: RunResult, advance: Callable[..., None]) -> None:
        remaining_uses: dict[str, int] = {}
        for s in todo:
            for up in s.upstream():
                key = self.plan.step(up).key
                remaining_uses[key] = remaining_uses.get(key, 0) + 1
        for step in todo:
            blocker = self._blocked(step, result)
            if blocker is not None:
                result.outcomes[step.name] = StepOutcome(step.name, "skipped", error=f"'{blocker}' did not finish")
                advance(finished=step.name, skipped=f"'{blocker}' did not finish")
                continue
            advance(0, started=step.name)
            duration, value, error = try_step(self.payload(step), self.progress, self.values)
            advance(finished=step.name, seconds=duration or 0.0, **({"error": error} if error else {}))
            if error is not None:
                result.outcomes[step.name] = StepOutcome(step.name, "failed", error=error)
                continue
            result.outcomes[step.name] = _finished(step.name, duration)
            if remaining_uses.get(step.key):
                self.values[step.key] = value
            for up in step.upstream():
                key = self.plan.step(up).key
                remaining_uses[key] -= 1
                if remaining_uses[key] == 0:
                    self.values.pop(key, None)

    def _run_parallel(self, todo: list[Step], result: RunResult, advance: Callable[..., None]) -> None:
        waiting = {s.name: s for s in todo}
        running: dict[Future[tuple[float, str | None]], Step] = {}
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn")) as pool:
            while waiting or running:
                for name, step in list(waiting.items()):
                    if len(running) >= self.jobs:
                        break
                    blocker = self._blocked(step, result)
                    if blocker is not None:
                        result.outcomes[name] = StepOutcome(name, "skipped", error=f"'{blocker}' did not finish")
                        del waiting[name]
                        continue
                    if all(result.outcomes.get(up) is not None for up in step.upstream()):
                        running[pool.submit(_worker, self.payload(step))] = step
                        del waiting[name]
                        advance(0, started=name)
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    step = running.pop(fut)
                    try:
                        duration, error = fut.result()
                    except Exception as exc:  # the worker process died
                        duration, error = 0.0, describe_crash(exc)
                    result.outcomes[step.name] = (StepOutcome(step.name, "failed", 0.0, error) if error
                                                  else _finished(step.name, duration))
                    advance(finished=step.name, seconds=duration or 0.0, **({"error": error} if error else {}))
