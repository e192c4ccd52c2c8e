"""Two runs' results side by side (``mlspec compare A.json B.json``), as a Markdown table.

Each ``results.json`` is ``{"study": {...}, "results": {step: record}}``. Every scalar leaf of every
record becomes a row (``ta[0.5]`` / ``accuracy``); lists such as curves are left to the reports.
Numeric rows get the difference B − A. Two numbers differ when ``|B − A| > atol + rtol·|A|`` (numpy's
``isclose`` rule); anything else differs unless equal. ``show_all=False`` (the command's default)
lists only the rows that differ, so a CI log shows what changed and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import MlspecError
from .bundle import fmt, number, scalars

__all__ = ["Row", "compare", "rows"]


def _label(run: dict[str, Any], fallback: str) -> str:
    study = run.get("study") or {}
    name = study.get("name") or fallback
    seed = study.get("seed")
    return f"{name} (seed {seed})" if seed is not None else str(name)


def _leaves(run: dict[str, Any]) -> dict[tuple[str, str], Any]:
    results = run.get("results")
    if not isinstance(results, dict):
        raise MlspecError(f'not a results.json: it has no "results" object (keys: {sorted(run)!r})')
    return {(step, path): value for step, record in results.items() for path, value in scalars(record)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class Row:
    step: str
    field: str
    a: Any
    b: Any
    in_a: bool
    in_b: bool
    differs: bool


def rows(a_json: dict[str, Any], b_json: dict[str, Any], *, rtol: float = 0.0, atol: float = 0.0) -> list[Row]:
    """Every scalar of either run, A's order first; ``differs`` beyond the tolerances."""
    a, b = _leaves(a_json), _leaves(b_json)
    out = []
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key), b.get(key)
        na, nb = number(va), number(vb)
        if key not in a or key not in b:
            differs = True
        elif na is not None and nb is not None:
            differs = abs(nb - na) > atol + rtol * abs(na)
        else:
            differs = va != vb
        out.append(Row(key[0], key[1], va, vb, key in a, key in b, differs))
    return out


def compare(a_json: dict[str, Any], b_json: dict[str, Any], *, rtol: float = 0.0, atol: float = 0.0,
            show_all: bool = True, found: list[Row] | None = None) -> str:
    """A Markdown table: step, field, A, B, B − A, and ``*`` where the two runs differ (``found``:
    the :func:`rows` already computed, tolerances included)."""
    if found is None:
        found = rows(a_json, b_json, rtol=rtol, atol=atol)
    shown = found if show_all else [r for r in found if r.differs]
    lines = [
        f"A = {_label(a_json, 'A')}  ",
        f"B = {_label(b_json, 'B')}",
        "",
        "| step | field | A | B | B − A | |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in shown:
        na, nb = number(r.a), number(r.b)
        delta = fmt(nb - na) if na is not None and nb is not None else ""
        cells = [r.step, r.field, fmt(r.a) if r.in_a else "(absent)", fmt(r.b) if r.in_b else "(absent)"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + f" | {delta} | {'*' if r.differs else ''} |")
    if not found:
        lines.append("| (no scalar results) | | | | | |")
    differing = sum(r.differs for r in found)
    tolerance = f" beyond rtol = {fmt(rtol)}, atol = {fmt(atol)}" if rtol or atol else ""
    hidden = len(found) - len(shown)
    lines += ["", f"{differing} of {len(found)} values differ{tolerance}."
              + (f" {hidden} rows that agree are not shown (--all shows them)." if hidden else "")]
    return "\n".join(lines) + "\n"
