"""The three reference studies, each run at a reduced size, asserting the direction of its finding
(never a fixed number): alignment shrinks the barrier, task-aware merges beat the specialists on
the joint task, a trained curve removes the straight line's barrier."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import mlspec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def run_reduced(name: str, tmp_path: Path, replacements: list[tuple[str, str]]) -> dict[str, Any]:
    text = (SPECS / f"{name}.merge").read_text()
    for old, new in replacements:
        assert old in text, f"{name}.merge no longer contains {old!r}: update the reduction"
        text = text.replace(old, new)
    results = mlspec.loads(text, file=f"{name}.merge").run(out=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert results.ok, results.failures()
    assert (tmp_path / "out" / "report.html").exists()
    return json.loads((tmp_path / "out" / "results.json").read_text())["results"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_rebasin_alignment_shrinks_the_barrier(tmp_path: Path) -> None:
    r = run_reduced("rebasin", tmp_path, [
        ("[16, 64, 256, 512]", "[16, 64]"), ("epochs = 30", "epochs = 10"), ("steps = 25", "steps = 5"),
    ])
    for w in (16, 64):
        naive = r[f"naive[{w}]"]["barriers"]["loss_max_minus_mean"]
        assert r[f"weights[{w}]"]["barriers"]["loss_max_minus_mean"] < naive
        assert r[f"activations[{w}]"]["barriers"]["loss_max_minus_mean"] < naive
    def ev(m):
        return r[f"evaluate {m} on digits"]["loss"]
    assert ev("repaired[64]") < ev("mid[64]")  # REPAIR helps most where the net is narrow


@pytest.mark.slow
def test_task_merging_beats_the_specialists_on_the_joint_task(tmp_path: Path) -> None:
    r = run_reduced("task-merging", tmp_path, [("epochs = 15", "epochs = 6"), ("step 0.2", "step 0.4")])
    def acc(m, d="digits"):
        return r[f"evaluate {m} on {d}"]["accuracy"]
    specialists = max(acc("a"), acc("b"))
    assert acc("a", "low") > acc("a", "high") and acc("b", "high") > acc("b", "low")
    best_ta = max(acc(f"ta[{s}]") for s in ("0.2", "0.6", "1.0", "1.4"))
    for merged in ("avg", "ties20", "fisher_m", "regmean_m"):
        assert acc(merged) > specialists, merged
    assert best_ta > specialists
    assert acc("ens") > specialists  # two overconfident specialists: not the upper bound here
    assert -0.5 < r["vectors"]["cosine"][0][1] < 0.9


@pytest.mark.slow
def test_connectivity_curve_removes_the_line_barrier(tmp_path: Path) -> None:
    r = run_reduced("connectivity", tmp_path, [
        ("hidden = [64, 64]", "hidden = [32, 32]"), ("epochs = 30", "epochs = 10"),
        ("epochs = 40, lr = 1e-3", "epochs = 6, lr = 1e-2"),
        ("steps = 25", "steps = 7"),
    ])
    line = r["line"]["barriers"]["loss_max_minus_mean"]
    assert r["bezier"]["barriers"]["loss_max_minus_mean"] < 0.5 * line
    assert r["chain"]["barriers"]["loss_max_minus_mean"] < line
