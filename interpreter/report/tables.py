"""The report's tables: the evaluation summary, barriers, merge methods, steps, and the fallback.

A sweep family is summarised by its best point (highest mean accuracy over the datasets it was
evaluated on); its sweep curve shows the rest. Every table is plain data (:class:`Table`) that the
template lays out, so the numbers in the page are text a reader can copy and a test can find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlspec.report.plots_extrap import grids
from mlspec.report.study import StepView, StudyView, fmt, number, scalars

__all__ = [
    "Cell",
    "Table",
    "barrier_table",
    "dynamics_table",
    "evaluation_table",
    "extrapolation_table",
    "fallback",
    "method_table",
    "step_table",
]


@dataclass(frozen=True)
class Cell:
    text: str
    numeric: bool = False
    title: str = ""  # shown on hover: the full value where the text is shortened


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    id: str = ""


def _num(value: Any) -> Cell:
    return Cell(fmt(value), numeric=number(value) is not None)


def _mean_accuracy(study: StudyView) -> dict[str, float]:
    per_model: dict[str, list[float]] = {}
    for ev in study.evaluations():
        if "accuracy" in ev.metrics:
            per_model.setdefault(ev.model, []).append(ev.metrics["accuracy"])
    return {m: sum(v) / len(v) for m, v in per_model.items()}


def _representatives(study: StudyView, names: list[str]) -> dict[str, str]:
    """``name -> row label``: sweep members other than their family's best are dropped."""
    mean = _mean_accuracy(study)
    keep: dict[str, str] = {}
    families = study.families()
    member_of = {m.name: f for f, ms in families.items() for m in ms}
    for name in names:
        fam = member_of.get(name)
        if fam is None:
            keep[name] = name
            continue
        scored = [m.name for m in families[fam] if m.name in mean]
        best = max(scored, key=lambda n: mean[n]) if scored else families[fam][0].name
        if name == best:
            keep[name] = f"{name} (best of {len(families[fam])} by mean accuracy)"
    return keep


def evaluation_table(study: StudyView) -> Table | None:
    evals = study.evaluations()
    if not evals:
        return None
    models = list(dict.fromkeys(ev.model for ev in evals))
    datasets = list(dict.fromkeys(ev.dataset for ev in evals))
    metrics = [m for m in ("accuracy", "loss", "error") if any(m in ev.metrics for ev in evals)]
    cell = {(ev.model, ev.dataset): ev.metrics for ev in evals}
    rows = []
    for model, label in _representatives(study, models).items():
        row = [Cell(label)]
        for ds in datasets:
            row += [_num(cell.get((model, ds), {}).get(m)) for m in metrics]
        rows.append(row)
    columns = ["model"] + [f"{m} on {ds}" for ds in datasets for m in metrics]
    return Table(
        "Evaluation",
        columns,
        rows,
        id="summary",
        caption="Test-split scores of each model on each dataset; a sweep shows its best point.",
    )


def barrier_table(study: StudyView) -> Table | None:
    keys = ("loss_max_minus_linear", "loss_max_minus_mean", "error_max_minus_linear", "error_max_minus_mean")
    rows = []
    for s in study.steps:
        rec = s.record
        if not isinstance(rec, dict) or not isinstance(rec.get("barriers"), dict):
            continue
        rows.append(
            [
                Cell(s.name),
                Cell(f"{rec.get('a', '?')} → {rec.get('b', '?')}"),
                Cell(str(rec.get("dataset", ""))),
            ]
            + [_num(rec["barriers"].get(k)) for k in keys]
        )
    if not rows:
        return None
    return Table(
        "Barriers",
        ["curve", "path", "dataset", "loss − line", "loss − mean", "error − line", "error − mean"],
        rows,
        caption="Largest rise of the loss (error) along the path above the straight line joining "
        "the endpoint values (− line) or above their mean (− mean).",
    )


def _is_stat(path: str) -> bool:
    """A merge statistic worth a column (its parameters have their own; sizes say nothing)."""
    return not path.startswith("merge.params.") and not path.endswith("numel")


def _stat_label(path: str) -> str:
    return path.removeprefix("merge.total.").removeprefix("merge.").replace("_", " ")


def method_table(study: StudyView) -> Table | None:
    merges = [s for s in study.steps if s.statement.split()[:1] == ["merge"]]
    if not merges:
        return None
    keep = _representatives(study, [s.name for s in merges])
    mean = _mean_accuracy(study)
    stats = list(
        dict.fromkeys(
            p
            for s in merges
            if s.name in keep
            for p, v in scalars(s.record)
            if number(v) is not None and _is_stat(p)
        )
    )[:4]
    rows = []
    for s in merges:
        if s.name not in keep:
            continue
        params = ", ".join(
            f"{k} = {fmt(v) if not isinstance(v, dict | list) else json.dumps(v)}"
            for k, v in s.params.items()
        )
        info = dict(scalars(s.record))
        rows.append(
            [Cell(keep[s.name]), Cell(s.op), Cell(params), _num(mean.get(s.name))]
            + [_num(info.get(p)) for p in stats]
        )
    return Table(
        "Merge methods",
        ["merge", "operator", "parameters", "mean accuracy"] + [_stat_label(p) for p in stats],
        rows,
        id="methods",
        caption="Mean accuracy over every dataset the merge was evaluated on, with the operator's "
        "own statistics (over all tensors).",
    )


def extrapolation_table(study: StudyView) -> Table | None:
    """Per model: accuracy on the easiest and the hardest cell of its grid, and the grid's mean."""
    rows = []
    for g in grids(study):
        budget = max((c["iterations"] for c in g.cells), default=None)
        top = sorted(
            (c for c in g.cells if c["iterations"] == budget), key=lambda c: [_rank(c.get(a)) for a in g.axes]
        )
        if not top:
            continue
        where = [", ".join(f"{a} = {fmt(c.get(a))}" for a in g.axes) or "—" for c in (top[0], top[-1])]
        mean = sum(c["accuracy"] for c in top) / len(top)
        rows.append(
            [
                Cell(g.model),
                Cell(fmt(budget)),
                _num(top[0]["accuracy"]),
                Cell(where[0]),
                _num(top[-1]["accuracy"]),
                Cell(where[1]),
                _num(mean),
            ]
        )
    if not rows:
        return None
    return Table(
        "Extrapolation",
        ["model", "iterations", "easiest cell", "at", "hardest cell", "at", "mean"],
        rows,
        id="extrapolation",
        caption="Exact-solve accuracy at the largest iteration budget; easiest and hardest by the axes' order.",
    )


def _rank(value: Any) -> float:
    """Axis values in difficulty order: numbers ascending, ``true`` (e.g. a dead-end start) first."""
    if isinstance(value, bool):
        return 0.0 if value else 1.0
    n = number(value)
    return n if n is not None else 0.0


def dynamics_table(study: StudyView) -> Table | None:
    """Per model: how many instances settled into each limiting behaviour."""
    counted = []
    for s in study.by_op("dynamics"):
        limit = s.record.get("limit") if isinstance(s.record, dict) else None
        if isinstance(limit, dict) and isinstance(limit.get("counts"), dict):
            counted.append((str(s.inputs.get("model") or s.record.get("model", s.name)), limit["counts"]))
    if not counted:
        return None
    kinds = list(dict.fromkeys(k for _, counts in counted for k in counts))
    rows = [[Cell(model)] + [_num(counts.get(k, 0)) for k in kinds] for model, counts in counted]
    return Table(
        "Limiting behaviour",
        ["model"] + [k.replace("_", " ") for k in kinds],
        rows,
        id="dynamics",
        caption="Number of instances whose iterates reached each kind of limit.",
    )


def step_table(study: StudyView) -> Table:
    rows = []
    for s in study.steps:
        cache = (
            s.state if s.state in ("failed", "skipped", "not run") else {True: "hit", False: "miss", None: "—"}[s.cached]
        )
        rows.append(
            [
                Cell(s.name),
                Cell(s.op),
                Cell(s.kind),
                Cell(s.key[:12], title=s.key),
                Cell(cache),
                Cell(s.computed.replace("T", " ").removesuffix("+00:00") or "—"),
                Cell(fmt(s.duration_s, 3) if s.duration_s is not None else "—", numeric=True),
                _num(s.seed),
            ]
        )
    return Table(
        "Steps",
        ["step", "operator", "kind", "key", "this run", "computed (UTC)", "seconds", "seed"],
        rows,
        id="steps",
        caption="'this run': hit when the artifact came from the cache. 'computed' and 'seconds': when the "
        "artifact was made and how long that took, kept in the cache across runs.",
    )


@dataclass
class Fallback:
    """Results no figure claimed, one block per operator: scalars as a table, records as JSON."""

    table: Table
    json: str
    notes: list[str] = field(default_factory=list)


MAX_JSON = 20_000  # characters of pretty JSON shown inline; results.json has the rest


def fallback(op: str, steps: list[StepView], notes: list[str] | None = None) -> Fallback:
    paths = list(dict.fromkeys(p for s in steps for p, _ in scalars(s.record)))[:8]
    rows = []
    for s in steps:
        values = dict(scalars(s.record))
        rows.append([Cell(s.name)] + [_num(values.get(p)) for p in paths])
    text = json.dumps({s.name: s.record for s in steps}, indent=1, default=str)
    if len(text) > MAX_JSON:
        text = text[:MAX_JSON] + f"\n… ({len(text) - MAX_JSON} more characters in results.json)"
    return Fallback(Table(op or "results", ["step"] + paths, rows), text, list(notes or []))
