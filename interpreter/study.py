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

from mlspec.check.lower import lower
from mlspec.plan.graph import Plan, build_plan
from mlspec.run.cache import Cache, default_cache_dir
from mlspec.run.context import Progress
from mlspec.syntax.ast import Program
from mlspec.syntax.parser import parse, parse_file
from mlspec.values import json_safe

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
    def __init__(self, program: Program, *, allow_outside: bool = False, allow_python: bool = False):
        self.program = program
        self.allow_outside = allow_outside
        self.allow_python = allow_python
        self._plan: Plan | None = None

    @property
    def plan(self) -> Plan:
        """Checked and planned (raises SpecError with every problem found)."""
        if self._plan is None:
            self._plan = build_plan(lower(self.program, allow_outside=self.allow_outside,
                                                    allow_python=self.allow_python))
        return self._plan

    def check(self) -> Plan:
        return self.plan

    def default_out_dir(self) -> Path:
        return Path("out") / self.plan.study.name

    def run(self, *, out: str | Path | None = None, jobs: int = 1, force: bool = False,
            cache_dir: str | Path | None = None, progress: Progress | None = None,
            command: str | None = None, device: str | None = None, report: bool = True,
            executor: str = "local") -> Results:
        from mlspec.run.executor import Runner

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
        provenance = _provenance(command, outcome.device, started, outcome.duration_s)
        write_json(out_dir / "provenance.json", {**provenance, "steps": {
            n: {"state": o.state, "duration_s": round(o.duration_s, 4), "error": o.error}
            for n, o in outcome.outcomes.items()}})
        if report:
            results.report = render(plan, results, provenance, out_dir)
        return results


def collect(plan: Plan, cache: Cache, out_dir: Path) -> Results:
    """Read every finished step's JSON result from the cache (nothing is recomputed)."""
    study = _study_dict(plan)
    steps: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for step in plan.steps:
        steps[step.name] = {"op": step.op, "key": step.key, "params": step.params, "inputs": step.inputs,
                            "statement": step.statement, "family": step.family, "sweep": step.sweep,
                            "seed": step.seed}
        if not cache.has(step.key):
            continue
        meta = cache.load_meta(step.key)
        if meta["type"] == "Record":
            results[step.name] = meta["data"]
        elif meta["type"] == "Model":
            results[step.name] = {"arch": meta["arch"], **meta.get("info", {})}
        else:
            results[step.name] = meta.get("meta", {})
    return Results(study=study, steps=steps, results=results, out_dir=out_dir)


def _study_dict(plan: Plan) -> dict[str, Any]:
    s = plan.study
    return {"name": s.name, "seed": s.seed, "dialect": s.dialect, "spec_file": Path(s.spec_file).name,
            "spec_sha256": hashlib.sha256(s.spec_text.encode()).hexdigest(), "question": s.question}


def _provenance(command: str | None, device: str, started: _dt.datetime, duration: float) -> dict[str, Any]:
    import torch

    from mlspec import __version__

    return {"command": command or "mlspec.load(...).run()", "mlspec": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "device": device,
            "started": started.isoformat(timespec="seconds"), "duration_s": round(duration, 3)}


def render(plan: Plan, results: Results, provenance: dict[str, Any], out_dir: Path) -> Path:
    from mlspec.report import render_report

    bundle = {
        "study": {**results.study, "spec_file": plan.study.spec_file, "spec_text": plan.study.spec_text},
        "provenance": provenance,
        "steps": [{"name": name, **info, "kind": _kind(info["op"]), **_state(name, results)}
                  for name, info in results.steps.items()],
        "results": results.results,
        "graph": {"nodes": list(plan.graph.nodes), "edges": [list(e) for e in plan.graph.edges]},
    }
    return render_report(bundle, out_dir, report_name=plan.study.report_name)  # type: ignore[no-any-return]


def _state(name: str, results: Results) -> dict[str, Any]:
    """How a step fared in this run; re-rendering from the cache (no run) knows only cached or not."""
    outcome = results.outcomes.get(name)
    if outcome is None:
        state = "cached" if name in results.results else "not run"
        return {"cached": state == "cached", "duration_s": 0.0, "state": state, "error": None}
    return {"cached": outcome.state == "cached", "duration_s": outcome.duration_s, "state": outcome.state,
            "error": outcome.error}


def _kind(op: str) -> str:
    from mlspec import registry

    spec = registry.get(op)
    return spec.output.value if spec else "Any"


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def load(path: str | Path, *, allow_outside: bool = False, allow_python: bool = False) -> Study:
    return Study(parse_file(path), allow_outside=allow_outside, allow_python=allow_python)


def loads(text: str, file: str = "<spec>.merge", *, allow_outside: bool = False,
          allow_python: bool = False) -> Study:
    return Study(parse(text, file), allow_outside=allow_outside, allow_python=allow_python)
