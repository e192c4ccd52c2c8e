"""The figure registry, the house style, and how a figure becomes inline SVG plus paper files.

A *figure handler* turns the results of the steps of one operator into :class:`Figure` values:

    @figure("interpolate")
    def interpolation_curves(study: StudyView, steps: list[StepView]) -> list[Figure]: ...

Handlers are looked up by the step's operator name; ``keys=`` adds a shape rule so that a record
whose operator is unknown but which carries those keys (``{"cells", ...}``) still gets its figure.
Study-wide figures that read many operators at once (sweep curves, the execution graph) register
with :func:`study_figure`. A step that no handler claims is shown by the generic fallback in
``tables.py`` (its scalars as a table, the whole record as collapsible JSON), so results from a new
operator are never lost from the report.

Rendering is deterministic: a fixed ``svg.hashsalt``, no dates in the metadata, text kept as SVG
``<text>`` (smaller, searchable, read by screen readers). matplotlib is imported only when a figure
is drawn, so a report whose figures all come from the figure cache never loads it. Figures are told apart by markers and
line styles as well as colour, so they survive greyscale printing and colour-blind readers.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..values import json_safe

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from .bundle import StepView, StudyView

__all__ = [
    "STUDY_FIGURES",
    "Figure",
    "RenderedFigure",
    "figure",
    "handler_for",
    "json_for_script",
    "new_figure",
    "render_figure",
    "slugify",
    "study_figure",
    "style",
]

# Okabe–Ito: distinguishable under the common colour-vision deficiencies.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")

FILE_FORMATS = ("svg", "png", "pdf")

RC = {
    "svg.hashsalt": "mlspec",
    "svg.fonttype": "none",
    "font.size": 9.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": 100,
}


@dataclass
class Figure:
    """One figure: the matplotlib drawing, its alt text, and the data it was drawn from."""

    slug: str  # file stem under figures/, unique within a report
    title: str
    alt: str  # what a reader who cannot see the picture needs to know
    mpl: MplFigure
    data: dict[str, Any]
    section: str = "Results"
    caption: str = ""
    steps: tuple[str, ...] = ()  # the steps whose results it shows (they need no fallback)


Handler = Callable[["StudyView", "list[StepView]"], "list[Figure]"]
StudyHandler = Callable[["StudyView"], "list[Figure]"]

_BY_OP: dict[str, Handler] = {}
_BY_SHAPE: list[tuple[frozenset[str], Handler]] = []
STUDY_FIGURES: list[StudyHandler] = []


def figure(*ops: str, keys: tuple[str, ...] = ()) -> Callable[[Handler], Handler]:
    """Register a handler for the records of ``ops`` (and of any op whose record has ``keys``)."""

    def register(fn: Handler) -> Handler:
        for op in ops:
            _BY_OP[op] = fn
        if keys:
            _BY_SHAPE.append((frozenset(keys), fn))
        return fn

    return register


def study_figure(fn: StudyHandler) -> StudyHandler:
    """Register a handler that looks at the whole study rather than at one operator."""
    STUDY_FIGURES.append(fn)
    return fn


def handler_for(op: str, record: Any) -> Handler | None:
    if op in _BY_OP:
        return _BY_OP[op]
    if isinstance(record, dict):
        for keys, fn in _BY_SHAPE:
            if keys <= record.keys():
                return fn
    return None


def new_figure(width: float = 6.4, height: float = 3.6, *, ncols: int = 1, nrows: int = 1) -> MplFigure:
    """A pyplot-free figure (no global state, nothing to close) with the house style applied."""
    import matplotlib
    from matplotlib.figure import Figure as MplFigure

    with matplotlib.rc_context(RC):
        fig = MplFigure(figsize=(width, height), layout="constrained")
        fig.subplots(nrows, ncols, squeeze=False)
    return fig


def style(i: int) -> dict[str, Any]:
    """Colour, marker and line style of the ``i``-th series: never colour alone."""
    return {
        "color": COLOURS[i % len(COLOURS)],
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": LINESTYLES[(i // len(COLOURS) + i) % len(LINESTYLES)],
    }


@dataclass
class RenderedFigure:
    """A figure after rendering: what the template embeds and the files written for papers. Plain
    data (the figure cache stores it as JSON); ``id`` is given when the page is assembled."""

    slug: str
    title: str
    alt: str
    caption: str
    section: str
    raw_svg: str
    data_json: str
    files: dict[str, str] = field(default_factory=dict)  # format -> path relative to the report
    steps: list[str] = field(default_factory=list)
    id: str = ""

    @property
    def svg(self) -> str:
        """The SVG for inlining: ids scoped by the figure's page id, labelled for screen readers."""
        return _inline_svg(self.raw_svg, self.id, self.title, self.alt)


_XML_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.DOTALL)
_SVG_SIZE = re.compile(r'<svg([^>]*?)\swidth="([0-9.]+)pt"\s+height="[^"]*"')


def _scoped(svg: str, prefix: str) -> str:
    """Give the SVG's ids a per-figure prefix, and number repeats: an HTML page may not repeat an
    id. (matplotlib names identical images alike; a reference to a repeat finds the same content.)"""
    seen: dict[str, int] = {}

    def unique(match: re.Match[str]) -> str:
        name = match.group(1)
        seen[name] = seen.get(name, 0) + 1
        return f'id="{prefix}-{name}"' if seen[name] == 1 else f'id="{prefix}-{name}-{seen[name]}"'

    svg = re.sub(r'\bid="([^"]*)"', unique, svg)
    svg = re.sub(r"url\(#", f"url(#{prefix}-", svg)
    return re.sub(r'href="#', f'href="#{prefix}-', svg)


def _inline_svg(raw: str, fig_id: str, title: str, alt: str) -> str:
    from markupsafe import escape

    svg = _XML_PROLOGUE.sub("", raw, count=1)
    # The viewBox stays and the page scales the figure down to fit, never up past its drawn size.
    svg = _SVG_SIZE.sub(r'<svg\1 style="max-width: \2pt"', svg, count=1)
    svg = _scoped(svg, fig_id)
    label = escape(f"{title}. {alt}")
    return svg.replace("<svg", f'<svg role="img" aria-label="{label}" class="plot"', 1)


def json_for_script(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``</`` cannot close the element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_jsonable)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot embed a {type(value).__name__} in the report")


def render_figure(fig: Figure, figures_dir: Path | None) -> RenderedFigure:
    """Render to SVG, and (when ``figures_dir`` is given) write SVG, PNG and PDF files."""
    import matplotlib

    with matplotlib.rc_context(RC):
        buffer = io.StringIO()
        fig.mpl.savefig(buffer, format="svg", metadata={"Date": None})
        raw = buffer.getvalue()
        files: dict[str, str] = {}
        if figures_dir is not None:
            figures_dir.mkdir(parents=True, exist_ok=True)
            paths = {ext: figures_dir / f"{fig.slug}.{ext}" for ext in FILE_FORMATS}
            # The SVG is deterministic, so an unchanged SVG means unchanged PNG and PDF files.
            unchanged = all(p.exists() for p in paths.values()) and paths["svg"].read_text(encoding="utf-8") == raw
            if not unchanged:
                paths["svg"].write_text(raw, encoding="utf-8")
                fig.mpl.savefig(paths["png"], format="png", dpi=150, metadata={"Software": None})
                fig.mpl.savefig(paths["pdf"], format="pdf", metadata={"CreationDate": None})
            files = {ext: f"{figures_dir.name}/{fig.slug}.{ext}" for ext in FILE_FORMATS}
    return RenderedFigure(
        slug=fig.slug,
        title=fig.title,
        alt=fig.alt,
        caption=fig.caption,
        section=fig.section,
        raw_svg=raw,
        data_json=json_for_script(json_safe(fig.data)),
        files=files,
        steps=list(fig.steps),
    )


def slugify(text: str) -> str:
    """A file-system-safe stem: ``ta[0.5]`` -> ``ta-0.5``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return slug or "figure"
