from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart, run once from a cold cache for the whole session (shared by several tests)."""
    import mlspec

    base = tmp_path_factory.mktemp("quickstart")
    results = mlspec.load(SPECS / "quickstart.merge").run(out=base / "out", cache_dir=base / "cache")
    return results, base


@pytest.fixture(scope="session")
def quickstart_extrap_run(tmp_path_factory: pytest.TempPathFactory):
    """specs/quickstart.extrap, run once from a cold cache for the whole session."""
    import mlspec

    base = tmp_path_factory.mktemp("quickstart-extrap")
    results = mlspec.load(SPECS / "quickstart.extrap").run(out=base / "out", cache_dir=base / "cache")
    return results, base
