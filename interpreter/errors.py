"""Spans, diagnostics and the exceptions that carry them.

::

    MlspecError
    ├── SpecError      one or more Diagnostics that point into spec text (exit code 2)
    └── StepError      a step failed while running (exit code 1); earlier results are kept

The library raises; the CLI renders (:func:`render`). No lark or pydantic internals reach a user.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "Span",
    "Diagnostic",
    "MlspecError",
    "SpecError",
    "StepError",
    "did_you_mean",
    "render",
]


@dataclass(frozen=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __init__(self, file: str, line: int, col: int, end_line: int, end_col: int):
        # The parser makes one per node; the generated frozen __init__ (five object.__setattr__
        # calls) took a third of the time of building a 1,000-line spec's AST.
        self.__dict__.update(file=file, line=line, col=col, end_line=end_line, end_col=end_col)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    message: str
    span: Span | None
    help: str | None = None
    # Secondary spans with a label each, e.g. the first definition of a duplicate name.
    labels: list[tuple[Span, str]] = field(default_factory=list)
    severity: str = "error"


class MlspecError(Exception):
    pass


class SpecError(MlspecError):
    def __init__(self, diagnostics: Diagnostic | list[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = diagnostics if isinstance(diagnostics, list) else [diagnostics]
        self.sources = sources or {}
        super().__init__("; ".join(d.message for d in self.diagnostics))

    def render(self) -> str:
        return "\n".join(render(d, self.sources) for d in self.diagnostics)


class StepError(MlspecError):
    pass


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate, or None."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in pool}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"did you mean '{close[0]}'?" if close else None


def _snippet(span: Span, source: str, marker: str, label: str = "") -> list[str]:
    lines = source.splitlines()
    if not (1 <= span.line <= len(lines)):
        return []
    text = lines[span.line - 1].expandtabs(1)
    end = span.end_col if span.end_line == span.line else len(text) + 1
    width = max(1, end - span.col)
    gutter = str(span.line)
    pad = " " * len(gutter)
    underline = " " * (span.col - 1) + marker * width
    return [
        f"{pad} |",
        f"{gutter} | {text}",
        f"{pad} | {underline}" + (f" {label}" if label else ""),
    ]


def render(diag: Diagnostic, sources: dict[str, str]) -> str:
    out = [f"{diag.severity}: {diag.message}"]
    if diag.span is not None:
        out.append(f"  --> {diag.span}")
        out += ["  " + s for s in _snippet(diag.span, sources.get(diag.span.file, ""), "^")]
    for span, label in diag.labels:
        out.append(f"  --> {span}: {label}")
        out += ["  " + s for s in _snippet(span, sources.get(span.file, ""), "-", label)]
    if diag.help:
        out.append(f"  = help: {diag.help}")
    return "\n".join(out)
