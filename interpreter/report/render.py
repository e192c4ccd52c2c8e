"""Bundle in, report out: the one function the runner calls, and the only one that writes files.

:func:`render_report` is pure in the sense that matters for ``mlspec report SPEC``: it reads only
the bundle (never the cache, never the spec file), so re-rendering from cached results recomputes
nothing and the same bundle always gives the same bytes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from mlspec.report import graph, plots_extrap, plots_merge, plots_studies, sweeps  # noqa: F401  (they register figures)
from mlspec.report.figures import STUDY_FIGURES, Figure, RenderedFigure, handler_for, render_figure
from mlspec.report.study import StepView, StudyView, fmt
from mlspec.report.tables import (
    Fallback,
    Table,
    barrier_table,
    dynamics_table,
    evaluation_table,
    extrapolation_table,
    fallback,
    method_table,
    step_table,
)

__all__ = ["render_report"]

SECTIONS = (
    "Answer",  # a study-wide figure that answers the question comes first
    "Training",
    "Sweeps",
    "Loss landscape",
    "Task vectors",
    "Extrapolation",
    "Dynamics",
    "Mazes",
    "Results",
)
FIGURE_FORMATS = (".svg", ".png", ".pdf")
DRAWING_ERRORS = (KeyError, IndexError, TypeError, ValueError, AttributeError, ZeroDivisionError)


@dataclass
class Section:
    title: str
    anchor: str
    figures: list[RenderedFigure]


def render_report(bundle: dict[str, Any], out_dir: Path, *, report_name: str = "report.html") -> Path:
    """Write ``out_dir/report_name`` (self-contained) and ``figures/*.{svg,png,pdf}`` beside it."""
    path = Path(out_dir) / report_name
    path.parent.mkdir(parents=True, exist_ok=True)  # `report "sub/r.html"` in a spec
    study = StudyView(bundle)
    figures, fallbacks = _collect(study)
    figures_dir = path.parent / "figures"  # beside the report, so its relative links hold
    rendered = []
    for i, fig in enumerate(_unique_slugs(figures), start=1):
        try:
            rendered.append(render_figure(fig, i, figures_dir))
        except DRAWING_ERRORS as err:
            fallbacks.append(Fallback(Table(fig.title, [], []), "", [f"figure could not be drawn: {err}"]))
    _remove_stale(figures_dir, {Path(f).name for r in rendered for f in r.files.values()})
    html = _template().render(
        study=study,
        s=study.study,
        prov=study.provenance,
        fmt=fmt,
        css=Markup(_asset("report.css")),
        tables=[
            t
            for t in (
                evaluation_table(study),
                barrier_table(study),
                method_table(study),
                extrapolation_table(study),
                dynamics_table(study),
            )
            if t
        ],
        sections=_sections([r for r in rendered if r.section != "Provenance"]),
        provenance_figures=[r for r in rendered if r.section == "Provenance"],
        fallbacks=fallbacks,
        steps=step_table(study),
        seeds=sorted({s.seed for s in study.steps if s.seed is not None}),
        failures=[s for s in study.steps if s.error],
    )
    _write_atomic(path, html)
    return path


def _collect(study: StudyView) -> tuple[list[Figure], list[Fallback]]:
    """Figures from every handler; a fallback block for each operator whose results none shows."""
    groups: dict[Any, list[StepView]] = {}
    for s in study.steps:
        if s.record is not None and (handler := handler_for(s.op, s.record)) is not None:
            groups.setdefault(handler, []).append(s)
    figures: list[Figure] = []
    notes: dict[str, str] = {}
    for handler, steps in groups.items():
        try:
            made = handler(study, steps)
        except DRAWING_ERRORS as err:
            notes.update(
                {s.name: f"{s.name}: figure could not be drawn ({type(err).__name__}: {err})" for s in steps}
            )
            continue
        figures += made
    for handler in STUDY_FIGURES:
        figures += handler(study)
    shown = {name for f in figures for name in f.steps} | {s.name for s in study.by_op("evaluate")}
    unshown: dict[str, list[StepView]] = {}
    for s in study.steps:
        if s.name not in shown and s.record not in (None, {}, []) and s.kind not in ("Dataset", "Task"):
            unshown.setdefault(s.op, []).append(s)
    return figures, [
        fallback(op, steps, [notes[s.name] for s in steps if s.name in notes])
        for op, steps in unshown.items()
    ]


def _unique_slugs(figures: list[Figure]) -> list[Figure]:
    seen: dict[str, int] = {}
    for fig in figures:
        n = seen.get(fig.slug, 0)
        seen[fig.slug] = n + 1
        if n:
            fig.slug = f"{fig.slug}-{n + 1}"
    return figures


def _sections(rendered: list[RenderedFigure]) -> list[Section]:
    order = list(SECTIONS) + sorted({r.section for r in rendered} - set(SECTIONS))
    out = []
    for title in order:
        figs = [r for r in rendered if r.section == title]
        if figs:
            out.append(Section(title, "sec-" + title.lower().replace(" ", "-"), figs))
    return out


def _remove_stale(figures_dir: Path, keep: set[str]) -> None:
    """A re-render with fewer figures must not leave last run's files looking current."""
    if figures_dir.is_dir():
        for f in figures_dir.iterdir():
            if f.suffix in FIGURE_FORMATS and f.name not in keep:
                f.unlink()


def _asset(name: str) -> str:
    return resources.files("mlspec.reports").joinpath(name).read_text(encoding="utf-8")


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_asset),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2")


def _write_atomic(path: Path, text: str) -> None:
    """Temp file + rename: a crash never leaves half a report. Readable like any other file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
