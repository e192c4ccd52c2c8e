"""Sweep curves: a metric against the swept parameter, for every family of sweep steps.

A family is the set of steps one sweep statement expanded into (``merge ta[s] = ... for s in ...``);
each member carries its point (``{"s": 0.5}``). Models are measured by the ``evaluate`` records
that name them (one line per dataset, one panel per metric); records are measured by their own
numeric scalars (one panel each, e.g. a barrier against a width). With two or more swept
parameters the first numeric one is the x axis and each combination of the others is its own line.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from mlspec.report.draw import series
from mlspec.report.figures import Figure, new_figure, slugify, study_figure
from mlspec.report.study import StepView, StudyView, fmt, number, scalars

__all__ = ["measurements", "sweep_curves"]

MAX_PANELS = 4


def measurements(study: StudyView, members: list[StepView]) -> dict[str, dict[str, dict[str, float]]]:
    """``panel -> line -> member name -> value`` for one family."""
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    names = {m.name for m in members}
    for ev in study.evaluations():
        if ev.model in names:
            for metric, value in ev.metrics.items():
                out[metric][ev.dataset][ev.model] = value
    if not out:
        for m in members:
            for path, value in scalars(m.record):
                if (v := number(value)) is not None:
                    out[path][""][m.name] = v
    return out


def _axis(members: list[StepView]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The x parameter, each member's x value, and each member's label for the other parameters."""
    keys = list(members[0].sweep or {})
    numeric = [k for k in keys if all(number((m.sweep or {}).get(k)) is not None for m in members)]
    varying = [k for k in numeric if len({(m.sweep or {}).get(k) for m in members}) > 1]
    x = (varying or numeric or keys)[0]
    rest = {
        m.name: ", ".join(f"{k} = {fmt(v)}" for k, v in (m.sweep or {}).items() if k != x) for m in members
    }
    return x, {m.name: (m.sweep or {}).get(x) for m in members}, rest


@study_figure
def sweep_curves(study: StudyView) -> list[Figure]:
    out = []
    for family, members in study.families().items():
        panels = measurements(study, members)
        if not panels:
            continue
        x, xvalue, rest = _axis(members)
        categorical = any(number(v) is None for v in xvalue.values())
        chosen = list(panels.items())[:MAX_PANELS]
        fig = new_figure(
            4.0 * min(2, len(chosen)),
            3.2 * ((len(chosen) + 1) // 2),
            ncols=min(2, len(chosen)),
            nrows=(len(chosen) + 1) // 2,
        )
        sentences = []
        for ax, (panel, lines) in zip(fig.axes, chosen):
            i = 0
            for line, values in lines.items():
                by_rest: dict[str, list[tuple[Any, float]]] = defaultdict(list)
                for m in members:
                    if m.name in values:
                        by_rest[rest[m.name]].append((xvalue[m.name], values[m.name]))
                for other, points in by_rest.items():
                    xs = [p[0] for p in points] if not categorical else list(range(len(points)))
                    label = " · ".join(t for t in (f"on {line}" if line else "", other) if t) or family
                    series(ax, xs, [p[1] for p in points], i, label)
                    best = max(points, key=lambda p: p[1])
                    sentences.append(f"{panel} {label} is highest ({fmt(best[1])}) at {x} = {fmt(best[0])}")
                    if categorical:
                        ax.set_xticks(xs, [str(p[0]) for p in points], rotation=30)
                    i += 1
            ax.set(xlabel=x, ylabel=panel, title=panel)
            if i > 1 or any(lines):
                ax.legend(fontsize=7)
        for ax in fig.axes[len(chosen) :]:
            ax.set_visible(False)
        out.append(
            Figure(
                slug=slugify(f"sweep-{family}"),
                title=f"Sweep {family}[{x}]",
                section="Sweeps",
                mpl=fig,
                alt=f"{', '.join(p for p, _ in chosen)} against {x} over {len(members)} points of the "
                f"{family} sweep. " + "; ".join(sentences) + ".",
                data={
                    "family": family,
                    "parameter": x,
                    "points": [{"step": m.name, **(m.sweep or {})} for m in members],
                    "measurements": {p: {ln: dict(v) for ln, v in lines.items()} for p, lines in chosen},
                },
            )
        )
    return out
