"""What a spec's text may contain, checked before anything is built from it.

A spec may come from a stranger, so every limit of the machinery behind the language is a spec
error here rather than a crash later: characters no file system or terminal takes (NUL, lone
surrogates), nesting deeper than the recursive stages handle, and numbers outside what a float or
a 64-bit integer holds. Each check is one linear pass.
"""

from __future__ import annotations

import math
import re

from ..errors import Diagnostic, Span, SpecError

__all__ = ["MAX_NESTING", "MAX_INT", "check_characters", "too_deep", "number"]

#: Levels of the parse tree a statement may nest (brackets, calls, method chains). Real specs use
#: under ten; every later stage recurses a few frames per level, well inside Python's limit.
MAX_NESTING = 64
#: The largest integer a spec may write: what a 64-bit integer holds.
MAX_INT = 2**63 - 1

_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def check_characters(text: str, file: str) -> None:
    """NUL and lone surrogates are refused: they cannot name a file, print, or encode as UTF-8."""
    found = _FORBIDDEN.search(text)
    if found is None:
        return
    line, col = _position(text, found.start())
    what = "a NUL character" if found.group() == "\x00" else f"a lone surrogate (U+{ord(found.group()):04X})"
    printable = _FORBIDDEN.sub("\N{REPLACEMENT CHARACTER}", text)
    raise SpecError(Diagnostic(f"the spec contains {what}", Span(file, line, col, line, col + 1),
                               help="remove it; a spec is plain UTF-8 text"), {file: printable})


def too_deep(extent: tuple[int, int, int, int] | None, file: str, text: str) -> None:
    """Refuse a statement nested deeper than :data:`MAX_NESTING`: the parser calls this at the smallest
    expression that is too deep by itself, before any later stage recurses into it."""
    span = Span(file, extent[0], extent[1], extent[0], extent[1] + 1) if extent is not None else None
    raise SpecError(Diagnostic(f"the spec nests deeper than {MAX_NESTING} levels from here", span,
                               help="flatten the expression; no study needs this depth"), {file: text})


def number(text: str, span: Span, source: str) -> int | float:
    """A numeric literal's value, refused (at its span) when no float or 64-bit integer holds it."""
    if re.fullmatch(r"-?\d+", text):
        digits = text.lstrip("-").lstrip("0")
        if len(digits) <= 19 and abs(int(text)) <= MAX_INT:
            return int(text)
        problem = f"the integer {_shorten(text)} is out of range (at most {MAX_INT:,})"
    else:
        value = float(text)
        if math.isfinite(value):
            return value
        problem = f"the number {_shorten(text)} is out of range (a float holds at most about 1.8e308)"
    raise SpecError(Diagnostic(problem, span), {span.file: source})


def _shorten(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:10]}…{text[-6:]} ({len(text)} characters)"
