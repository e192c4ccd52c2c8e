"""A read-only view of a run bundle, forgiving about what is missing.

The bundle is the runner's plain JSON (see :func:`mlspec.report.render_report`). The report must
still render when a step lacks a field or an operator's record has an unfamiliar shape, so every
lookup here has a default and every number goes through :func:`number`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Evaluation", "StepView", "StudyView", "fmt", "number", "numbers", "scalars"]


def number(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (booleans and strings are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def numbers(value: Any) -> list[float] | None:
    """A flat list of numbers (``NaN`` kept, so positions still line up), or ``None``."""
    if not isinstance(value, list) or not value:
        return None
    out = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            return None
        out.append(float(item))
    return out


def scalars(record: Any, prefix: str = "", depth: int = 2) -> Iterator[tuple[str, Any]]:
    """``(dotted.path, value)`` for every number, string or boolean leaf down to ``depth`` dicts."""
    if not isinstance(record, dict):
        if isinstance(record, int | float | str | bool):
            yield prefix or "value", record
        return
    for key, value in record.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and depth > 0:
            yield from scalars(value, path, depth - 1)
        elif isinstance(value, int | float | str | bool):
            yield path, value


def fmt(value: Any, digits: int = 4) -> str:
    """A number as a reader wants it: 4 significant digits, integers as integers."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return "—" if value is None else str(value)


@dataclass(frozen=True)
class StepView:
    name: str
    op: str
    kind: str = ""
    key: str = ""
    cached: bool | None = None
    duration_s: float | None = None
    seed: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    statement: str = ""
    family: str | None = None
    sweep: dict[str, Any] | None = None
    record: Any = None
    state: str = ""  # "cached" | "ran" | "failed" | "skipped" when the runner says
    error: str | None = None
    computed: str = ""  # when the cached artifact was computed (duration_s is how long that took)

    @classmethod
    def from_bundle(cls, step: dict[str, Any], record: Any) -> StepView:
        sweep = step.get("sweep")
        if isinstance(record, dict) and "arch" in record:  # a Model's architecture is not a result
            record = {k: v for k, v in record.items() if k != "arch"}
        return cls(
            name=str(step.get("name", "?")),
            op=str(step.get("op", "")),
            kind=str(step.get("kind", "")),
            key=str(step.get("key", "")),
            cached=step.get("cached") if isinstance(step.get("cached"), bool) else None,
            duration_s=number(step.get("duration_s")),
            seed=step.get("seed") if isinstance(step.get("seed"), int) else None,
            params=dict(step.get("params") or {}),
            inputs=dict(step.get("inputs") or {}),
            statement=str(step.get("statement") or ""),
            family=step.get("family") or None,
            sweep=dict(sweep) if isinstance(sweep, dict) and sweep else None,
            record=record,
            state=str(step.get("state") or ""),
            error=str(step["error"]) if step.get("error") else None,
            computed=str(step.get("computed") or ""),
        )


@dataclass(frozen=True)
class Evaluation:
    """One ``evaluate`` record: a model scored on a dataset."""

    step: str
    model: str
    dataset: str
    metrics: dict[str, float]  # on the split the record reports (the test split unless asked otherwise)
    validation: dict[str, float] = field(default_factory=dict)  # on the validation split, when the data has one


class StudyView:
    """Steps in plan order, each with its result, plus the lookups the figures need."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self.study: dict[str, Any] = dict(bundle.get("study") or {})
        self.provenance: dict[str, Any] = dict(bundle.get("provenance") or {})
        self.results: dict[str, Any] = dict(bundle.get("results") or {})
        graph = bundle.get("graph") or {}
        self.nodes: list[str] = [str(n) for n in graph.get("nodes") or []]
        self.edges: list[tuple[str, str]] = [
            (str(e[0]), str(e[1]))
            for e in graph.get("edges") or []
            if isinstance(e, list | tuple) and len(e) == 2
        ]
        steps = [StepView.from_bundle(s, self.results.get(s.get("name"))) for s in bundle.get("steps") or []]
        known = {s.name for s in steps}
        # A result without step metadata is still a result: show it rather than drop it.
        steps += [StepView(name=n, op="", record=r) for n, r in self.results.items() if n not in known]
        self.steps: list[StepView] = steps
        self._by_name = {s.name: s for s in steps}

    @property
    def name(self) -> str:
        return str(self.study.get("name") or "study")

    def runs(self) -> list[dict[str, Any]]:
        """Every run of the study into this output directory, oldest first (provenance keeps them all)."""
        runs = self.provenance.get("runs")
        if isinstance(runs, list):
            return [r for r in runs if isinstance(r, dict)]
        return [self.provenance] if self.provenance.get("started") else []

    def step(self, name: str) -> StepView | None:
        return self._by_name.get(name)

    def by_op(self, *ops: str) -> list[StepView]:
        return [s for s in self.steps if s.op in ops]

    def evaluations(self) -> list[Evaluation]:
        out = []
        for s in self.by_op("evaluate"):
            rec = s.record
            if not isinstance(rec, dict) or "model" not in rec:
                continue
            metrics = {k: v for k in ("accuracy", "loss", "error") if (v := number(rec.get(k))) is not None}
            val = rec.get("validation") if isinstance(rec.get("validation"), dict) else {}
            validation = {k: v for k in ("accuracy", "loss") if (v := number(val.get(k))) is not None}
            out.append(Evaluation(s.name, str(rec["model"]), str(rec.get("dataset", "")), metrics, validation))
        return out

    def selections(self) -> dict[str, str]:
        """``family -> member`` with the best mean validation accuracy over the datasets it was
        evaluated on. A family some of whose evaluated members lack validation scores has no
        selection: choosing on the test split that is then reported would flatter the sweep."""
        scores: dict[str, list[float | None]] = {}
        for ev in self.evaluations():
            scores.setdefault(ev.model, []).append(ev.validation.get("accuracy"))
        out = {}
        for family, members in self.families().items():
            scored = {m.name: scores[m.name] for m in members if m.name in scores}
            if scored and all(v is not None for vs in scored.values() for v in vs):
                out[family] = max(scored, key=lambda n: sum(scored[n]) / len(scored[n]))  # type: ignore[arg-type]
        return out

    def families(self) -> dict[str, list[StepView]]:
        """Sweeps: steps sharing a family, each with its sweep point, in plan order (2+ points)."""
        groups: dict[str, list[StepView]] = {}
        for s in self.steps:
            if s.family and s.sweep:
                groups.setdefault(s.family, []).append(s)
        return {f: members for f, members in groups.items() if len(members) >= 2}
