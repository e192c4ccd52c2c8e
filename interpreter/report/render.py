"""Bundle in, report out: the one function the runner calls, and the only one that writes files.

:func:`render_report` is pure in the sense that matters for ``mlspec report SPEC``: it reads only
the bundle (never the cache, never the spec file), so re-rendering from cached results recomputes
nothing and the same bundle always gives the same bytes.

Figures are cached by the hash of the data they are drawn from: each figure handler's call is keyed
by the handler, the study's results and plan (not the run's timings or cache hits), and the source
of the report code. A key found in ``figures/.figure-cache.json`` whose files are all still there
is reused as it is; so a re-run with nothing new draws nothing and never imports matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from . import plan_figure, plots_extrap, plots_merge, plots_studies, sweeps  # noqa: F401  (they register figures)
from .bundle import StepView, StudyView, fmt
from .figures import (
    FILE_FORMATS,
    STUDY_FIGURES,
    RenderedFigure,
    handler_for,
    render_figure,
)
from .tables import (
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
FIGURE_CACHE = ".figure-cache.json"
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
    figures_dir = path.parent / "figures"  # beside the report, so its relative links hold
    rendered, fallbacks = _figures(study, bundle, figures_dir)
    for i, r in enumerate(rendered, start=1):
        r.id = f"fig{i}"
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
        runs=study.runs(),
        seeds=sorted({s.seed for s in study.steps if s.seed is not None}),
        failures=[s for s in study.steps if s.error],
    )
    _write_atomic(path, html)
    return path


def _jobs(study: StudyView) -> list[tuple[str, Callable[[], list[Any]], list[StepView]]]:
    """Every handler call the study needs: ``(handler name, call, steps it is given)``."""
    groups: dict[Any, list[StepView]] = {}
    for s in study.steps:
        if s.record is not None and (handler := handler_for(s.op, s.record)) is not None:
            groups.setdefault(handler, []).append(s)
    jobs: list[tuple[str, Callable[[], list[Any]], list[StepView]]] = [
        (_name(h), lambda h=h, steps=steps: h(study, steps), steps) for h, steps in groups.items()
    ]
    jobs += [(_name(h), lambda h=h: h(study), []) for h in STUDY_FIGURES]
    return jobs


def _figures(study: StudyView, bundle: dict[str, Any], figures_dir: Path) -> tuple[list[RenderedFigure], list[Fallback]]:
    """Figures from every handler (from the figure cache where their data did not change), and a
    fallback block for each operator whose results no figure shows."""
    cached = _read_cache(figures_dir)
    kept: dict[str, list[dict[str, Any]]] = {}
    rendered: list[RenderedFigure] = []
    notes: dict[str, str] = {}
    broken: list[Fallback] = []
    seen: dict[str, int] = {}
    data = _data_hash(bundle)
    for name, call, steps in _jobs(study):
        key = hashlib.sha256(f"{name}\0{data}\0{_code_hash()}\0{[s.name for s in steps]}".encode()).hexdigest()
        entries = cached.get(key)
        if entries is not None and _reusable(entries, figures_dir, seen):
            made = [RenderedFigure(**e) for e in entries]
            for r in made:
                seen[r.slug] = seen.get(r.slug, 0) + 1
        else:
            try:
                figs = call()
            except DRAWING_ERRORS as err:
                problem = f"figure could not be drawn ({type(err).__name__}: {err})"
                notes.update({s.name: f"{s.name}: {problem}" for s in steps})
                if not steps:  # a study-wide figure: no step's fallback would carry the note
                    broken.append(Fallback(Table(name, [], []), "", [f"{name}: {problem}"]))
                continue
            made = []
            failed = False
            for fig in figs:
                fig.slug = _unique(fig.slug, seen)
                seen[fig.slug] = seen.get(fig.slug, 0) + 1
                try:
                    made.append(render_figure(fig, figures_dir))
                except DRAWING_ERRORS as err:
                    failed = True
                    broken.append(Fallback(Table(fig.title, [], []), "", [f"figure could not be drawn: {err}"]))
            if failed:  # never cache a partial set: the next run would drop the failure's note
                rendered += made
                continue
        kept[key] = [asdict(r) for r in made]
        rendered += made
    _write_cache(figures_dir, kept)
    shown = {name for r in rendered for name in r.steps} | {s.name for s in study.by_op("evaluate")}
    unshown: dict[str, list[StepView]] = {}
    for s in study.steps:
        if s.name not in shown and s.record not in (None, {}, []) and s.kind not in ("Dataset", "Task"):
            unshown.setdefault(s.op, []).append(s)
    fallbacks = [
        fallback(op, steps, [notes[s.name] for s in steps if s.name in notes]) for op, steps in unshown.items()
    ]
    return rendered, broken + fallbacks


def _unique(slug: str, seen: dict[str, int]) -> str:
    n = seen.get(slug, 0)
    return f"{slug}-{n + 1}" if n else slug


def _reusable(entries: list[dict[str, Any]], figures_dir: Path, seen: dict[str, int]) -> bool:
    """Cached figures can stand in for a fresh drawing when their files are all there and their file
    names are still free on this page."""
    return all(
        e.get("slug") not in seen and all((figures_dir / f"{e.get('slug')}.{ext}").is_file() for ext in FILE_FORMATS)
        for e in entries
    )


def _name(handler: Any) -> str:
    return f"{handler.__module__}.{handler.__qualname__}"


def _data_hash(bundle: dict[str, Any]) -> str:
    """What figures may draw: the study, its plan and its results; not how this run went."""
    steps = [{k: v for k, v in s.items() if k not in ("cached", "duration_s", "computed", "state", "error")}
             for s in bundle.get("steps") or []]
    view = {"study": bundle.get("study"), "steps": steps, "results": bundle.get("results"),
            "graph": bundle.get("graph")}
    text = json.dumps(view, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@cache
def _code_hash() -> str:
    """The report code's own source and matplotlib's version: a change to either redraws every figure."""
    from importlib.metadata import version

    h = hashlib.sha256(version("matplotlib").encode())
    for file in sorted(Path(__file__).parent.glob("*.py")):
        h.update(file.read_bytes())
    return h.hexdigest()


def _read_cache(figures_dir: Path) -> dict[str, list[dict[str, Any]]]:
    try:
        data = json.loads((figures_dir / FIGURE_CACHE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(figures_dir: Path, entries: dict[str, list[dict[str, Any]]]) -> None:
    """Only this render's figures are kept, so the cache never outgrows the report."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    for entry in (e for es in entries.values() for e in es):
        entry.pop("id", None)
    _write_atomic(figures_dir / FIGURE_CACHE, json.dumps(entries, separators=(",", ":")))


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
            if f.suffix.lstrip(".") in FILE_FORMATS and f.name not in keep:
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
