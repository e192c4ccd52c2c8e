"""The report's tables: the evaluation summary, barriers, merge methods, steps, and the fallback.

A sweep family is summarised by the point with the best mean accuracy on a validation split (held
out from training), reported on the test split; without a validation split every point is shown,
never one picked on the split being reported. Its sweep curve shows the rest. Every table is plain data (:class:`Table`) that the
template lays out, so the numbers in the page are text a reader can copy and a test can find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .bundle import StepView, StudyView, fmt, number, numbers, scalars
from .plots_extrap import budgets, grids

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
    """``name -> row label``: a sweep with a validation selection keeps only the selected point."""
    families = study.families()
    member_of = {m.name: f for f, ms in families.items() for m in ms}
    selected = study.selections()
    keep: dict[str, str] = {}
    for name in names:
        fam = member_of.get(name)
        if fam not in selected:
            keep[name] = name
        elif name == selected[fam]:
            keep[name] = f"{name} (selected on validation: best mean validation accuracy of {len(families[fam])})"
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
        caption="Test-split scores of each model on each dataset. "
        + (
            "A sweep is shown by the point with the best mean accuracy on the validation split (held out "
            "from training), reported here on the test split."
            if study.selections()
            else "Every sweep point is shown: no validation split to choose one on (a `validation_fraction` "
            "on the data adds one)."
        ),
    )


BARRIER_CAPTION = (
    "Barrier (Entezari et al. 2022) = max over α of [v(α) − ((1−α)·v(A) + α·v(B))]: the largest rise of "
    "the loss (error) along the path above the straight line joining its endpoint values, the number "
    "the figure marks. results.json also holds max − ½(v(A) + v(B)) (Frankle et al. 2020's instability, "
    "on error), which counts half the gap between unequal endpoints as barrier."
)


def barrier_table(study: StudyView) -> Table | None:
    rows = []
    for s in study.steps:
        rec = s.record
        if not isinstance(rec, dict) or not isinstance(rec.get("barriers"), dict):
            continue
        loss, acc = numbers(rec.get("loss")) or [], numbers(rec.get("accuracy")) or []
        ends = [loss[0], loss[-1]] if loss else [None, None]
        ends += [1.0 - acc[0], 1.0 - acc[-1]] if acc else [None, None]
        rows.append(
            [
                Cell(s.name),
                Cell(f"{rec.get('a', '?')} → {rec.get('b', '?')}"),
                Cell(str(rec.get("dataset", ""))),
                _num(ends[0]),
                _num(ends[1]),
                _num(rec["barriers"].get("loss_max_minus_linear")),
                _num(ends[2]),
                _num(ends[3]),
                _num(rec["barriers"].get("error_max_minus_linear")),
            ]
        )
    if not rows:
        return None
    return Table(
        "Barriers",
        ["curve", "path", "dataset", "loss at A", "loss at B", "loss barrier", "error at A", "error at B",
         "error barrier"],
        rows,
        id="barriers",
        caption=BARRIER_CAPTION,
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
        ["merge", "operator", "parameters", "mean test accuracy"] + [_stat_label(p) for p in stats],
        rows,
        id="methods",
        caption="Mean accuracy over every dataset the merge was evaluated on, with the operator's "
        "own statistics (over all tensors).",
    )


def extrapolation_table(study: StudyView) -> Table | None:
    """Per model and cell of its grid: accuracy at the largest budget beside the budget where it peaks."""
    rows = []
    for g in grids(study):
        shown = budgets(g)
        if not shown:
            continue
        largest = shown[-1]
        # Records that share a grid point and budget (seeds, say) are averaged, as the heatmaps do.
        found: dict[tuple[Any, ...], dict[Any, list[float]]] = {}
        for c in g.cells:
            found.setdefault(tuple(c.get(a) for a in g.axes), {}).setdefault(c["iterations"], []).append(
                float(c["accuracy"]))
        for point in sorted(found, key=lambda p: [_rank(v) for v in p]):
            by_budget = {b: sum(v) / len(v) for b, v in found[point].items()}
            peak = max(shown, key=lambda b: (by_budget.get(b, -1.0), -shown.index(b)))  # the earliest peak
            at_largest = by_budget.get(largest)
            drop = by_budget[peak] - at_largest if at_largest is not None else None
            rows.append(
                [
                    Cell(g.model),
                    Cell(", ".join(f"{a} = {fmt(v)}" for a, v in zip(g.axes, point)) or "—"),
                    Cell(fmt(largest)),
                    _num(at_largest),
                    Cell(fmt(peak)),
                    _num(by_budget[peak]),
                    Cell(fmt(drop) if drop is not None else "—", numeric=True),
                ]
            )
    if not rows:
        return None
    return Table(
        "Extrapolation",
        ["model", "cell", "largest budget", "accuracy there", "peak budget", "accuracy at the peak",
         "drop (peak − largest)"],
        rows,
        id="extrapolation",
        caption="Exact-solve accuracy on each cell's test mazes at the largest iteration budget, beside the "
        "budget where it peaks (the earliest, on the same mazes: a description of the dynamics, not a "
        "selection). A drop from the peak to the largest budget is overthinking.",
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
