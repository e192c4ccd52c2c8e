"""The studies that ask the seed papers' questions, each run at a reduced size, asserting the direction
of the finding its report gives (never a fixed number): merging more tasks loses more of each task,
a backdoor is diluted by merging with clean models, and maze extrapolation breaks along percolation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_merge_studies import run_reduced

import mlspec

SPECS = Path(__file__).resolve().parent.parent / "specs"


def normalised(r: dict, family: str, n: int) -> float:
    def acc(m: str, i: int) -> float:
        return float(r[f"evaluate {m} on headed[{i}]"]["accuracy"])
    return float(np.mean([acc(f"{family}[{n}]", i) / acc(f"ft[{i}]", i) for i in range(1, n + 1)]))


@pytest.mark.slow
def test_interference_grows_with_the_number_of_tasks(tmp_path: Path) -> None:
    r = run_reduced("interference", tmp_path, [
        ("for i in 1 .. 8", "for i in 1 .. 4"), ("for n in 2 .. 8", "for n in 2 .. 4"),
        ("hidden = [128, 128]", "hidden = [64, 64]"), ("epochs = 20", "epochs = 8"),
    ])
    for i in range(1, 5):  # each fine-tune learned its task; the base cannot read permuted digits
        assert r[f"evaluate ft[{i}] on headed[{i}]"]["accuracy"] > 0.8
        assert r[f"evaluate base on headed[{i}]"]["accuracy"] < 0.4
    for family in ("avg", "ties20", "dare_ties", "fisher_m", "regmean_m"):
        assert normalised(r, family, 4) < normalised(r, family, 2), family
    for n in (2, 3, 4):  # RegMean keeps the most at every N
        assert normalised(r, "regmean_m", n) == max(normalised(r, f, n) for f in
                                                    ("avg", "ta", "ties20", "dare_ties", "fisher_m", "regmean_m"))
    conflicts = [r[f"vectors[{n}]"]["sign_conflict_all"] for n in (2, 3, 4)]
    assert conflicts == sorted(conflicts) and conflicts[0] < conflicts[-1]
    cos = np.array(r["vectors[2]"]["cosine"])
    assert abs(cos[0, 1]) < 0.2  # task vectors of different tasks: nearly orthogonal
    assert (tmp_path / "out" / "figures" / "answer-interference.svg").exists()


@pytest.mark.slow
def test_a_backdoor_is_diluted_by_merging_with_clean_models(tmp_path: Path) -> None:
    r = run_reduced("backdoor", tmp_path, [
        ("for j in 1 .. 4", "for j in 1 .. 2"), ("for k in 1 .. 4", "for k in 1 .. 2"),
        ("s in 0.2 .. 1.0 step 0.2", "s in [0.2, 1.0]"),
        ("epochs = 20", "epochs = 10"), ("epochs = 30", "epochs = 15"),
    ])
    def ev(m: str, metric: str = "attack_success") -> float:
        return float(r[f"evaluate {m} on bad"][metric])
    assert ev("bd") > 0.8 and ev("clean[1]") < 0.1  # the backdoor took, and only in bd
    for family in ("avg", "ties20", "dare50", "rebasin_avg"):
        assert ev(f"{family}[1]") < 0.5 * ev("bd"), family
        assert ev(f"{family}[2]") <= ev(f"{family}[1]") + 0.02, family
        assert ev(f"{family}[2]", "accuracy") > ev("bd", "accuracy") - 0.1, family
    assert ev("ta[1, 0.2]") < ev("ta[1, 1.0]")  # a larger merge weight carries more of the backdoor
    assert ev("ta[2, 1.0]") < ev("ta[1, 1.0]")  # more clean task vectors dilute it
    assert ev("naive_avg[2]", "accuracy") < ev("rebasin_avg[2]", "accuracy")  # unaligned: the merge breaks
    assert (tmp_path / "out" / "figures" / "answer-backdoor.svg").exists()


REDUCED_SHIFT = [
    ("mazes(count = 1500) epochs 20", "mazes(count = 1500) epochs 10"),
    ("axis size = [5, 7, 9]", "axis size = [5]"),
    ("axis percolation = [0.0, 0.1, 0.2, 0.3]", "axis percolation = [0.0, 0.3]"),
    ("mazes(count = 200)", "mazes(count = 60)"),
    ("iterations [5, 10, 20, 40]", "iterations [5, 20]"),
    ("mazes(size = 7, count = 32) iterations 400 window 100", "mazes(size = 5, count = 8) iterations 120 window 40"),
]


@pytest.mark.slow
def test_extrapolation_breaks_along_percolation(tmp_path: Path) -> None:
    text = (SPECS / "distribution-shift.extrap").read_text()
    for old, new in REDUCED_SHIFT:
        assert old in text, f"distribution-shift.extrap no longer contains {old!r}"
        text = text.replace(old, new)
    spec = tmp_path / "distribution-shift.extrap"
    spec.write_text(text)
    results = mlspec.load(spec).run(out=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert results.ok, results.failures()
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    # at this size only the implicit net learns the training distribution well enough to lose it
    trained = r["evaluate it @ size = 5, percolation = 0.0"]
    shifted = r["evaluate it @ size = 5, percolation = 0.3"]
    assert max(trained["accuracy"]) > 0.5
    assert max(shifted["accuracy"]) < max(trained["accuracy"])
    for model in ("dt", "it"):  # valid_path never scores below exact
        for p in ("0.0", "0.3"):
            rec = r[f"evaluate {model} @ size = 5, percolation = {p}"]
            assert all(v >= e for v, e in zip(rec["accuracy"], rec["exact_accuracy"]))
    for slug in ("answer-shift", "answer-limits"):
        assert (tmp_path / "out" / "figures" / f"{slug}.svg").exists()
