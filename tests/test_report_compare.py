"""compare(): two results.json side by side, differences flagged, nothing silently dropped."""

from __future__ import annotations

import pytest

from mlspec.errors import MlspecError
from mlspec.report import compare
from mlspec.report.compare import rows as compare_rows

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


def test_tolerances_decide_what_differs_and_only_differences_are_listed_by_default() -> None:
    near = {"study": A["study"], "results": {"e": {"accuracy": 0.5, "loss": 1.0, "model": "a"}}}
    far = {"study": A["study"], "results": {"e": {"accuracy": 0.5 + 4e-7, "loss": 1.01, "model": "a"}}}
    assert [r.field for r in compare_rows(near, far) if r.differs] == ["accuracy", "loss"]
    # |B − A| > atol + rtol·|A|: 4e-7 is within atol 1e-6; 0.01 on 1.0 is outside rtol 1e-3
    assert [r.field for r in compare_rows(near, far, rtol=1e-3, atol=1e-6) if r.differs] == ["loss"]
    assert [r.field for r in compare_rows(near, far, rtol=0.02) if r.differs] == []
    table = compare(near, far, rtol=1e-3, atol=1e-6, show_all=False)
    assert set(rows(table)) == {("e", "loss")}
    assert "1 of 3 values differ beyond rtol = 0.001, atol = 1e-06. 2 rows that agree are not shown" in table


def test_the_command_exits_non_zero_only_when_values_differ(tmp_path) -> None:
    import json

    from click.testing import CliRunner

    from mlspec.cli import main

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(A))
    b.write_text(json.dumps(B))
    same = CliRunner().invoke(main, ["compare", str(a), str(a)])
    assert same.exit_code == 0 and "0 of 6 values differ" in same.output
    differ = CliRunner().invoke(main, ["compare", str(a), str(b)])
    assert differ.exit_code == 1 and ("evaluate(a, low)", "loss") not in rows(differ.output)
    every = CliRunner().invoke(main, ["compare", str(a), str(b), "--all", "--atol", "2"])
    assert every.exit_code == 1 and ("evaluate(a, low)", "loss") in rows(every.output)  # "gone" is absent in B
    assert "beyond rtol = 0, atol = 2." in every.output  # the tolerance used is said
