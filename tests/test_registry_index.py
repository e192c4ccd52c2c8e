"""The catalogue index: a check imports only the catalogues its operators come from, and an index
that is wrong, stale or hostile costs time, never a wrong answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fuzzing import SHIPPED

PROBE = """
import json, sys
from mlspec import registry, study
plan = study.load(sys.argv[1]).plan
print(json.dumps({"steps": sorted((s.name, s.op, s.key) for s in plan.steps),
                  "catalogues": sorted(m for m in registry.CATALOGUES if m in sys.modules),
                  "full": registry._LOADED, "antigravity": "antigravity" in sys.modules}))
"""


def _probe(spec: Path, cache: Path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(spec)], env=env, check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def _index_files(cache: Path) -> list[Path]:
    return sorted((cache / "mlspec").glob("catalogue-index-*.json"))


def test_a_check_imports_only_the_catalogues_it_uses(tmp_path: Path) -> None:
    spec = tmp_path / "q.merge"
    spec.write_text(SHIPPED["quickstart.merge"])
    first = _probe(spec, tmp_path)  # no index yet: every catalogue, and the index is written
    assert first["full"] and len(first["catalogues"]) > 4
    (index_file,) = _index_files(tmp_path)
    index = json.loads(index_file.read_text())
    assert index["average"] == "mlspec.ops.merge.specs" and index["maze"] == "mlspec.extrap.specs"
    second = _probe(spec, tmp_path)
    assert second["steps"] == first["steps"]
    assert not second["full"]
    assert "mlspec.extrap.specs" not in second["catalogues"]
    assert "mlspec.ops.merge.specs_mergekit" not in second["catalogues"]
    assert len(second["catalogues"]) < len(first["catalogues"])


def test_a_wrong_or_hostile_index_still_gives_the_right_operators(tmp_path: Path) -> None:
    spec = tmp_path / "q.merge"
    spec.write_text(SHIPPED["quickstart.merge"])
    expected = _probe(spec, tmp_path)["steps"]
    (index_file,) = _index_files(tmp_path)
    index = json.loads(index_file.read_text())
    index["average"] = "mlspec.extrap.specs"  # misplaced
    del index["train"]  # missing
    index["mlp"] = "antigravity"  # not a catalogue: never imported
    index_file.write_text(json.dumps(index))
    probe = _probe(spec, tmp_path)
    assert probe["steps"] == expected and not probe["antigravity"]
    index_file.write_text("{ not json")
    assert _probe(spec, tmp_path)["steps"] == expected
