"""Sweep curves: a metric against the swept parameter, for every family of sweep steps.

A family is the set of steps one sweep statement expanded into (``merge ta[s] = ... for s in ...``);
each member carries its point (``{"s": 0.5}``). Models are measured by the ``evaluate`` records
that name them (one line per dataset, one panel per metric); records are measured by their own
numeric scalars (one panel each, e.g. a barrier against a width). With two or more swept
parameters the first numeric one is the x axis and each combination of the others is its own line.

The x axis names the operator's parameter the loop variable sets (``scale (s)``), not only the
variable. Baselines the study measured are drawn as horizontal lines in each dataset's colour: the
models the sweep combines (endpoints, base) and a plain ``average`` of the same models; the point
selected on the validation split is marked.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from .bundle import StepView, StudyView, fmt, number, scalars
from .draw import series
from .figures import LINESTYLES, Figure, new_figure, slugify, study_figure, style

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
    """The x variable, each member's x value, and each member's label for the other variables."""
    keys = list(members[0].sweep or {})
    numeric = [k for k in keys if all(number((m.sweep or {}).get(k)) is not None for m in members)]
    varying = [k for k in numeric if len({(m.sweep or {}).get(k) for m in members}) > 1]
    x = (varying or numeric or keys)[0]
    rest = {
        m.name: ", ".join(f"{k} = {fmt(v)}" for k, v in (m.sweep or {}).items() if k != x) for m in members
    }
    return x, {m.name: (m.sweep or {}).get(x) for m in members}, rest


def parameter_name(members: list[StepView], variable: str) -> str:
    """The operator parameter that ``variable`` sets in every member (``scale`` for ``s``), or the
    variable itself when none or several do."""
    names = [
        k for k in members[0].params
        if all(m.params.get(k) == (m.sweep or {}).get(variable) for m in members)
    ]
    return names[0] if len(names) == 1 and names[0] != variable else variable


def baselines(study: StudyView, members: list[StepView]) -> dict[str, str]:
    """``model -> role`` of the measured models a sweep should be read against: its own inputs
    (``base``, the endpoints) and a plain average of the same models."""
    roles: dict[str, str] = {}
    for port, names in members[0].inputs.items():
        for name in names if isinstance(names, list) else [names]:
            if all(name in (m.inputs.get(port) if isinstance(m.inputs.get(port), list) else [m.inputs.get(port)])
                   for m in members):
                roles[name] = "base" if port == "base" else "endpoint"
    endpoints = {n for n, role in roles.items() if role == "endpoint"}
    for s in study.by_op("average"):
        used = {n for names in s.inputs.values() for n in (names if isinstance(names, list) else [names])}
        if endpoints and used == endpoints:
            roles[s.name] = "plain average"
    measured = {ev.model for ev in study.evaluations()}
    return {n: role for n, role in roles.items() if n in measured}


@study_figure
def sweep_curves(study: StudyView) -> list[Figure]:
    out = []
    selections = study.selections()
    for family, members in study.families().items():
        panels = measurements(study, members)
        if not panels:
            continue
        x, xvalue, rest = _axis(members)
        name = parameter_name(members, x)
        xlabel = f"{name} ({x})" if name != x else x
        categorical = any(number(v) is None for v in xvalue.values())
        chosen = list(panels.items())[:MAX_PANELS]
        refs = baselines(study, members)
        measured = {(ev.model, ev.dataset): ev.metrics for ev in study.evaluations() if ev.model in refs}
        selected = selections.get(family)
        fig = new_figure(
            4.0 * min(2, len(chosen)),
            3.2 * ((len(chosen) + 1) // 2) + (0.5 if refs or selected else 0.0),
            ncols=min(2, len(chosen)),
            nrows=(len(chosen) + 1) // 2,
        )
        sentences = []
        drawn_refs: dict[str, dict[str, dict[str, float]]] = {}
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
                    sentences.append(f"{panel} {label} is highest ({fmt(best[1])}) at {xlabel} = {fmt(best[0])}")
                    if categorical:
                        ax.set_xticks(xs, [str(p[0]) for p in points], rotation=30)
                    i += 1
                for j, model in enumerate(refs):  # baselines in the dataset's colour
                    value = measured.get((model, line), {}).get(panel)
                    if value is None:
                        continue
                    ax.axhline(value, color=style(i - 1)["color"], linestyle=LINESTYLES[(j + 1) % len(LINESTYLES)],
                               linewidth=0.9, alpha=0.8)
                    drawn_refs.setdefault(panel, {}).setdefault(line, {})[model] = value
            if selected is not None and not categorical:
                ax.axvline(xvalue[selected], color="black", linestyle=":", linewidth=1.2)
            ax.set(xlabel=xlabel, ylabel=panel, title=panel)
            ax.legend(fontsize=7)
        handles = [
            ax.plot([], [], color="#555555", linestyle=LINESTYLES[(j + 1) % len(LINESTYLES)], linewidth=0.9,
                    label=f"{model} ({role})")[0]
            for j, (model, role) in enumerate(refs.items())
            if any(model in by_line for by_panel in drawn_refs.values() for by_line in by_panel.values())
        ]
        if selected is not None and not categorical:
            handles.append(fig.axes[0].plot([], [], color="black", linestyle=":", linewidth=1.2,
                                            label=f"{selected}: selected on validation")[0])
        if handles:
            fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=7)
        for ax in fig.axes[len(chosen) :]:
            ax.set_visible(False)
        shown_refs = [f"{m} ({r})" for m, r in refs.items()
                      if any(m in by_line for by_panel in drawn_refs.values() for by_line in by_panel.values())]
        out.append(
            Figure(
                slug=slugify(f"sweep-{family}"),
                title=f"Sweep {family}[{x}] over {name}",
                section="Sweeps",
                mpl=fig,
                alt=f"{', '.join(p for p, _ in chosen)} against {xlabel} over {len(members)} points of the "
                f"{family} sweep. " + "; ".join(sentences) + ". "
                + (f"Horizontal lines, in each dataset's colour: {', '.join(shown_refs)}. " if shown_refs else "")
                + (f"Dotted vertical line: {selected}, selected on the validation split." if selected else ""),
                caption=(f"Baselines (horizontal lines): {', '.join(shown_refs)}. " if shown_refs else "")
                + (f"Dotted line: {selected}, selected on validation (best mean validation accuracy)."
                   if selected else ""),
                data={
                    "family": family,
                    "variable": x,
                    "parameter": name,
                    "points": [{"step": m.name, **(m.sweep or {})} for m in members],
                    "measurements": {p: {ln: dict(v) for ln, v in lines.items()} for p, lines in chosen},
                    "baselines": {"roles": refs, "values": drawn_refs},
                    "selected_on_validation": selected,
                },
            )
        )
    return out
