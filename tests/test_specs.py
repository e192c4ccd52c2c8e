"""Every study shipped in specs/ passes `mlspec check` (the quickstarts are also run elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlspec

SPECS = sorted(p for p in (Path(__file__).parent.parent / "specs").iterdir() if p.suffix in (".merge", ".extrap"))


def test_specs_exist() -> None:
    assert any(p.name == "quickstart.merge" for p in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_checks_and_plans(spec: Path) -> None:
    plan = mlspec.load(spec).plan
    assert len(plan.graph) > 0
    assert all(step.key for step in plan.steps)
