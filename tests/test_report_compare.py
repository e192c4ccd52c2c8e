"""compare(): two results.json side by side, differences flagged, nothing silently dropped."""

from __future__ import annotations

import pytest

from mlspec.errors import MlspecError
from mlspec.report import compare

A = {
    "study": {"name": "digits", "seed": 0},
    "results": {
        "evaluate(a, low)": {"model": "a", "dataset": "low", "accuracy": 0.9867, "loss": 0.0174},
        "raw": {"alphas": [0.0, 1.0], "barriers": {"loss_max_minus_linear": 1.868}},
        "gone": {"value": 3},
    },
}
B = {
    "study": {"name": "digits", "seed": 1},
    "results": {
        "evaluate(a, low)": {"model": "a", "dataset": "low", "accuracy": 0.9733, "loss": 0.0174},
        "raw": {"alphas": [0.0, 1.0], "barriers": {"loss_max_minus_linear": 0.25}},
        "new": {"value": 7},
    },
}


def rows(table: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| step"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            out[(cells[0], cells[1])] = cells[2:]
    return out


def test_values_sit_side_by_side_with_their_difference() -> None:
    table = compare(A, B)
    assert "A = digits (seed 0)" in table and "B = digits (seed 1)" in table
    r = rows(table)
    assert r[("evaluate(a, low)", "accuracy")] == ["0.9867", "0.9733", "-0.0134", "*"]
    assert r[("evaluate(a, low)", "loss")] == ["0.0174", "0.0174", "0", ""]
    assert r[("raw", "barriers.loss_max_minus_linear")][:3] == ["1.868", "0.25", "-1.618"]
    assert r[("gone", "value")] == ["3", "(absent)", "", "*"] and r[("new", "value")] == [
        "(absent)",
        "7",
        "",
        "*",
    ]
    assert ("raw", "alphas") not in r  # curves belong to the reports
    assert "4 of 7 values differ." in table


def test_every_row_has_the_same_number_of_columns() -> None:
    lines = [ln for ln in compare(A, B).splitlines() if ln.startswith("|")]
    assert len({ln.count(" | ") for ln in lines[2:]}) == 1


def test_a_run_compared_with_itself_differs_nowhere() -> None:
    assert compare(A, A).endswith("0 of 6 values differ.\n")


def test_a_file_that_is_not_results_json_is_a_clear_error() -> None:
    with pytest.raises(MlspecError, match='no "results" object'):
        compare({"steps": []}, B)
