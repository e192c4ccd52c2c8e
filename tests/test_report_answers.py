"""The study-wide answer figures read the execution graph: which task carries whose head, which
models a merge contains, which dynamics runs ended where (hand-built bundles, hand-computed values)."""

from __future__ import annotations

import pytest

from mlspec.report.bundle import StudyView
from mlspec.report.plots_studies import interference_figure, limit_shares, normalised_accuracy


def step(name: str, op: str, inputs: dict, family: str | None = None, sweep: dict | None = None) -> dict:
    return {"name": name, "op": op, "inputs": inputs, "family": family, "sweep": sweep}


def test_normalised_accuracy_divides_by_the_head_donor_and_skips_foreign_tasks() -> None:
    steps = [step(f"headed[{i}]", "with_head", {"data": f"t[{i}]", "model": f"ft[{i}]"}) for i in (1, 2, 3)]
    steps += [step("m[2]", "average", {"models": ["ft[1]", "ft[2]"]}, "m", {"n": 2})]
    results = {}
    acc = {("ft[1]", 1): 0.8, ("ft[2]", 2): 0.5, ("m[2]", 1): 0.4, ("m[2]", 2): 0.5, ("m[2]", 3): 0.9}
    for (model, i), value in acc.items():
        name = f"evaluate {model} on headed[{i}]"
        steps.append(step(name, "evaluate", {"model": model, "on": f"headed[{i}]"}))
        results[name] = {"model": model, "dataset": f"headed[{i}]", "accuracy": value}
    study = StudyView({"steps": steps, "results": results})
    scores = normalised_accuracy(study)
    assert scores["m"][2]["tasks"] == {"headed[1]": 0.5, "headed[2]": 1.0}  # headed[3]: not in the merge
    assert scores["m"][2]["mean"] == pytest.approx(0.75)
    (fig,) = interference_figure(study)
    assert fig.section == "Answer" and "0.75" in fig.alt


def test_limit_shares_split_cycles_by_period() -> None:
    counts = {"fixed_point": 1, "cycle_2": 2, "cycle_longer": 1, "none": 0}
    study = StudyView({"steps": [step("dynamics dt on m", "dynamics", {"model": "dt"})],
                       "results": {"dynamics dt on m": {"limit": {"counts": counts}}}})
    assert limit_shares(study) == {"dt": {"fixed_point": 0.25, "cycle_2": 0.5, "cycle_longer": 0.25, "none": 0.0}}
