"""The Python API: ``mlspec.load("study.merge").run()`` — the same pipeline the CLI drives.

load → (parse, check) → plan → run → results.json + provenance.json + report.html.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .check.lower import MAX_STEPS, lower
from .plan.graph import Plan, build_plan
from .run.cache import Cache, default_cache_dir, write_atomic
from .run.context import Progress
from .syntax.ast import Program
from .syntax.parser import parse, parse_file
from .values import json_safe

__all__ = ["Study", "Results", "load", "loads"]


@dataclass
class Results:
    """What a run produced: ``results[step_name]`` is that step's JSON result."""

    study: dict[str, Any]
    steps: dict[str, dict[str, Any]]
    results: dict[str, Any]
    out_dir: Path
    outcomes: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    # step -> {"computed": when, "duration_s": how long} of the run that made its cached artifact
    computed: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.results[name]

    def __contains__(self, name: str) -> bool:
        return name in self.results

    @property
    def ok(self) -> bool:
        return all(o.state in ("cached", "ran") for o in self.outcomes.values())

    def failures(self) -> dict[str, str]:
        return {n: o.error or o.state for n, o in self.outcomes.items() if o.state in ("failed", "skipped")}


class Study:
    def __init__(self, program: Program, *, allow_outside: bool = False, allow_python: bool = False,
                 max_steps: int = MAX_STEPS):
        self.program = program
        self.allow_outside = allow_outside
        self.allow_python = allow_python
        self.max_steps = max_steps
        self._plan: Plan | None = None

    @property
    def plan(self) -> Plan:
        """Checked and planned (raises SpecError with every problem found)."""
        if self._plan is None:
            self._plan = build_plan(lower(self.program, allow_outside=self.allow_outside,
                                              allow_python=self.allow_python, max_steps=self.max_steps))
        return self._plan

    def check(self) -> None:
        """Validate the spec (raises SpecError with every problem found); ``plan`` is what it plans."""
        _ = self.plan

    def default_out_dir(self) -> Path:
        return Path("out") / self.plan.study.folder

    def run(self, *, out: str | Path | None = None, jobs: int = 1, force: bool = False,
            cache_dir: str | Path | None = None, progress: Progress | None = None,
            command: str | None = None, device: str | None = None, report: bool = True,
            executor: str = "local") -> Results:
        from .run.executor import Runner

        plan = self.plan
        out_dir = Path(out) if out is not None else self.default_out_dir()
        cache = Cache(cache_dir if cache_dir is not None else default_cache_dir())
        started = _dt.datetime.now(_dt.timezone.utc)
        runner = Runner(plan, cache, out_dir=out_dir, jobs=jobs, force=force, allow_outside=self.allow_outside,
                        progress=progress, device=device, executor=executor)
        outcome = runner.run()
        results = collect(plan, cache, out_dir)
        results.outcomes = outcome.outcomes
        write_json(out_dir / "results.json", {"study": results.study, "steps": results.steps,
                                               "results": results.results})
        provenance = _provenance(command, outcome.device, started, outcome.duration_s, outcome.outcomes,
                                 read_provenance(out_dir))
        write_json(out_dir / "provenance.json", {**provenance, "steps": {
            n: {"state": o.state, "error": o.error, **results.computed.get(n, {})}
            for n, o in outcome.outcomes.items()}})
        if report:
            results.report = render(plan, results, provenance, out_dir, allow_outside=self.allow_outside)
        return results


def collect(plan: Plan, cache: Cache, out_dir: Path) -> Results:
    """Read every finished step's JSON result from the cache (nothing is recomputed)."""
    from .run.executor import stale

    study = _study_dict(plan)
    steps: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    computed: dict[str, dict[str, Any]] = {}
    for step in plan.steps:
        steps[step.name] = {"op": step.op, "key": step.key, "params": step.params, "inputs": step.inputs,
                            "statement": step.statement, "family": step.family, "sweep": step.sweep,
                            "seed": step.seed}
        if stale(step, cache, out_dir) is not None:
            continue  # not computed, or a file record that no longer describes its file
        meta = cache.load_meta(step.key)
        made = meta.get("step") or {}
        computed[step.name] = {"computed": made.get("computed"), "duration_s": made.get("duration_s")}
        if meta["type"] == "Record":
            results[step.name] = meta["data"]
        elif meta["type"] == "Model":
            results[step.name] = {"arch": meta["arch"], **meta.get("info", {})}
        else:
            results[step.name] = meta.get("meta", {})
    return Results(study=study, steps=steps, results=results, out_dir=out_dir, computed=computed)


def _study_dict(plan: Plan) -> dict[str, Any]:
    s = plan.study
    return {"name": s.name, "seed": s.seed, "dialect": s.dialect, "spec_file": Path(s.spec_file).name,
            "spec_sha256": hashlib.sha256(s.spec_text.encode()).hexdigest(), "question": s.question}


def read_provenance(out_dir: Path) -> dict[str, Any]:
    """The output directory's provenance.json, or ``{}`` when there is none (or it is unreadable)."""
    try:
        data = json.loads((out_dir / "provenance.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _provenance(command: str | None, device: str, started: _dt.datetime, duration: float,
                outcomes: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """This run's facts, and every earlier run's line kept: a warm run adds a line, never replaces one."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    try:
        torch_version = version("torch")  # read from the installed metadata: importing torch costs seconds
    except PackageNotFoundError:
        torch_version = "not installed"
    states = [o.state for o in outcomes.values()]
    this = {"command": command or "mlspec.load(...).run()", "started": started.isoformat(timespec="seconds"),
            "duration_s": round(duration, 3), "device": device,
            **{state: states.count(state) for state in ("ran", "cached", "failed", "skipped")}}
    runs = previous.get("runs")
    if not isinstance(runs, list):  # an older provenance.json described one run only
        runs = [{k: previous[k] for k in ("command", "started", "duration_s", "device") if k in previous}]
        runs = [r for r in runs if r]
    return {**this, "mlspec": __version__, "torch": torch_version, "python": platform.python_version(),
            "platform": platform.platform(), "runs": [*runs, this]}


def render(plan: Plan, results: Results, provenance: dict[str, Any], out_dir: Path, *,
           allow_outside: bool = False) -> Path:
    from .report import render_report
    from .run.context import confine

    confine(out_dir, plan.study.report_name, allow_outside=allow_outside)  # no symlink leads it out

    bundle = {
        "study": {**results.study, "spec_file": plan.study.spec_file, "spec_text": plan.study.spec_text},
        "provenance": provenance,
        "steps": [{"name": name, **info, "kind": _kind(info["op"]), **_state(name, results)}
                  for name, info in results.steps.items()],
        "results": results.results,
        "graph": {"nodes": list(plan.nodes), "edges": [list(e) for e in plan.edges]},
    }
    return render_report(bundle, out_dir, report_name=plan.study.report_name)  # type: ignore[no-any-return]


def _state(name: str, results: Results) -> dict[str, Any]:
    """How a step fared in this run, and when and in how long its artifact was first computed (kept in
    the cache, so a warm run shows the original cost); re-rendering without a run knows only cached
    or not."""
    made = results.computed.get(name, {})
    outcome = results.outcomes.get(name)
    if outcome is None:
        state = "cached" if name in results.results else "not run"
        return {"cached": state == "cached", "state": state, "error": None, **made}
    return {"cached": outcome.state == "cached", "state": outcome.state, "error": outcome.error,
            "duration_s": made.get("duration_s", outcome.duration_s), "computed": made.get("computed")}


def _kind(op: str) -> str:
    from . import registry

    spec = registry.get(op)
    return spec.output.value if spec else "Any"


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def load(path: str | Path, *, allow_outside: bool = False, allow_python: bool = False,
         max_steps: int = MAX_STEPS) -> Study:
    return Study(parse_file(path), allow_outside=allow_outside, allow_python=allow_python, max_steps=max_steps)


def loads(text: str, file: str = "<spec>.merge", *, allow_outside: bool = False, allow_python: bool = False,
          max_steps: int = MAX_STEPS) -> Study:
    return Study(parse(text, file), allow_outside=allow_outside, allow_python=allow_python, max_steps=max_steps)
