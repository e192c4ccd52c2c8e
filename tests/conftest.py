from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _cache(base: Path) -> Path:
    """``base/cache``; with MLSPEC_TEST_CACHE set, a link to that directory, so re-running the
    report tests on a slow machine need not retrain the quickstarts (unset: a cold cache)."""
    cache = base / "cache"
    shared = os.environ.get("MLSPEC_TEST_CACHE")
    if shared:
        Path(shared).mkdir(parents=True, exist_ok=True)
        cache.symlink_to(Path(shared).resolve(), target_is_directory=True)
    return cache


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory):
    """The quickstart, run once from a cold cache for the whole session (shared by several tests)."""
    import mlspec

    base = tmp_path_factory.mktemp("quickstart")
    results = mlspec.load(SPECS / "quickstart.merge").run(out=base / "out", cache_dir=_cache(base))
    return results, base


@pytest.fixture(scope="session")
def quickstart_extrap_run(tmp_path_factory: pytest.TempPathFactory):
    """specs/quickstart.extrap, run once from a cold cache for the whole session."""
    import mlspec

    base = tmp_path_factory.mktemp("quickstart-extrap")
    results = mlspec.load(SPECS / "quickstart.extrap").run(out=base / "out", cache_dir=_cache(base))
    return results, base
