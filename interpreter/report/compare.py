"""Two runs' results side by side (``mlspec compare A.json B.json``), as a Markdown table.

Each ``results.json`` is ``{"study": {...}, "results": {step: record}}``. Every scalar leaf of every
record becomes a row (``ta[0.5]`` / ``accuracy``); lists such as curves are left to the reports.
Numeric rows get the difference B − A, and rows that differ are flagged so a reader scanning a long
table finds them.
"""

from __future__ import annotations

from typing import Any

from mlspec.errors import MlspecError
from mlspec.report.study import fmt, number, scalars

__all__ = ["compare"]


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


def compare(a_json: dict[str, Any], b_json: dict[str, Any]) -> str:
    """A Markdown table: step, field, A, B, B − A, and ``*`` where the two runs disagree."""
    a, b = _leaves(a_json), _leaves(b_json)
    label_a, label_b = _label(a_json, "A"), _label(b_json, "B")
    keys = list(a) + [k for k in b if k not in a]
    lines = [
        f"A = {label_a}  ",
        f"B = {label_b}",
        "",
        "| step | field | A | B | B − A | |",
        "|---|---|---:|---:|---:|---|",
    ]
    differing = 0
    for key in keys:
        va, vb = a.get(key), b.get(key)
        na, nb = number(va), number(vb)
        delta = fmt(nb - na) if na is not None and nb is not None else ""
        differs = key not in a or key not in b or va != vb
        differing += differs
        shown = [fmt(va) if key in a else "(absent)", fmt(vb) if key in b else "(absent)"]
        lines.append(
            f"| {_cell(key[0])} | {_cell(key[1])} | {_cell(shown[0])} | {_cell(shown[1])} | {delta} | "
            f"{'*' if differs else ''} |"
        )
    if not keys:
        lines.append("| (no scalar results) | | | | | |")
    lines += ["", f"{differing} of {len(keys)} values differ."]
    return "\n".join(lines) + "\n"
