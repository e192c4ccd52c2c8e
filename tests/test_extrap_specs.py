"""The GPU-scale .extrap studies, run end to end on the CPU at a reduced size.

Each study's text is shrunk by exact substitutions (widths, counts, epochs, axes, budgets); a
substitution that no longer matches fails the test, so the shipped spec and this check stay in step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mlspec

SPECS = Path(__file__).resolve().parent.parent / "specs"

REDUCED = {
    "maze-axes.extrap": [
        ("dt_net(width = 128", "dt_net(width = 8"),
        ("implicit_net(width = 128", "implicit_net(width = 8"),
        ("mazes(count = 50000) epochs 50", "mazes(count = 64) epochs 1 batch 32 warmup 0"),
        ("axis size = [9, 19, 29, 39, 49, 59, 69, 79, 89, 99]", "axis size = [5, 7]"),
        ("axis percolation = [0.0, 0.01, 0.1, 0.3, 0.5]", "axis percolation = [0.0, 0.3]"),
        ("mazes(count = 100)", "mazes(count = 8)"),
        ("iterations [30, 100, 300, 1000, 3000]", "iterations [1, 4]"),
        ("iterations [30, 100, 300, 1000]", "iterations [1, 4]"),
        ("mazes(size = 33, count = 64) iterations 3400 window 400", "mazes(size = 5, count = 4) iterations 24 window 8"),
    ],
    "prefix-sums.extrap": [
        ("width = 400", "width = 8"),
        ("prefix_sums(length = 32, count = 10000)", "prefix_sums(length = 8, count = 128)"),
        ("epochs = 150", "epochs = 2"),
        ("milestones = [60, 100]", "milestones = [1], warmup = 0"),
        ("axis length = [32, 64, 128, 256, 512]", "axis length = [8, 16]"),
        ("bits(count = 1000)", "bits(count = 16)"),
        ("iterations [30, 100, 300, 1000]", "iterations [1, 4]"),
        ("bits(length = 512, count = 64) iterations 1000", "bits(length = 16, count = 4) iterations 24 window 8"),
    ],
}


def reduced(name: str) -> str:
    text = (SPECS / name).read_text()
    for old, new in REDUCED[name]:
        assert old in text, f"{name} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("name", sorted(REDUCED))
def test_gpu_study_runs_at_reduced_size(name: str, tmp_path: Path) -> None:
    spec = tmp_path / name
    spec.write_text(reduced(name))
    results = mlspec.load(spec).run(out=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert results.ok, results.failures()
    data = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    grids = [r for r in data.values() if isinstance(r, dict) and "pixel_accuracy" in r]
    axis_points = {"maze-axes.extrap": 2 * 2 * 2 + 2 * 2, "prefix-sums.extrap": 2}[name]
    assert len(grids) == axis_points  # one evaluation per model and grid point
    assert all(r["iterations"] == [1, 4] and len(r["accuracy"]) == 2 for r in grids)
    assert any("residual" in r for r in data.values() if isinstance(r, dict))
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
