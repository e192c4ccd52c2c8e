"""The promise: identical runs give byte-identical results.json and exports, serially or with
--jobs N, uninterrupted, resumed, or killed at any moment and run again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlspec

SPECS = Path(__file__).resolve().parent.parent / "specs"

SMALL = """\
study "det" (seed = 3)
data digits = digits()
data low = digits.classes(0 .. 4)
model init = mlp(in = 64, hidden = [32], out = 10)
model a = train(init, on = low, epochs = 2)
model b = train(init, on = digits, epochs = 2)
merge avg = average(a, b)
merge ta[s] = task_arithmetic(base = init, models = [a, b], scale = s) for s in 0.5 .. 1.0 step 0.5
evaluate [a, b, avg, ta] on [low, digits]
curve ab = interpolate(a, b, steps = 5) on digits
export avg to "avg.safetensors"
"""


def outputs(out: Path) -> tuple[bytes, bytes]:
    return (out / "results.json").read_bytes(), (out / "avg.safetensors").read_bytes()


def run(spec: Path, out: Path, cache: Path, **kw):
    results = mlspec.load(spec).run(out=out, cache_dir=cache, report=False, **kw)
    assert results.ok, results.failures()
    return results


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "det.merge"
    path.write_text(SMALL)
    return path


def test_serial_parallel_and_repeated_runs_give_the_same_bytes(spec: Path, tmp_path: Path) -> None:
    run(spec, tmp_path / "s1", tmp_path / "c1")
    run(spec, tmp_path / "s2", tmp_path / "c2")
    run(spec, tmp_path / "p", tmp_path / "cp", jobs=2)
    assert outputs(tmp_path / "s1") == outputs(tmp_path / "s2") == outputs(tmp_path / "p")


def test_a_resumed_run_equals_an_uninterrupted_one(spec: Path, tmp_path: Path) -> None:
    run(spec, tmp_path / "whole", tmp_path / "c1")
    # "Interrupted" after the trainings: the first part of the spec ran, then the whole spec.
    part = tmp_path / "part" / "det.merge"
    part.parent.mkdir()
    part.write_text(SMALL.split("merge avg")[0])
    run(part, tmp_path / "partout", tmp_path / "c2")
    resumed = run(spec, tmp_path / "resumed", tmp_path / "c2")
    assert {n for n, o in resumed.outcomes.items() if o.state == "cached"} >= {"a", "b", "init"}
    assert outputs(tmp_path / "whole") == outputs(tmp_path / "resumed")


def test_exports_are_byte_identical_with_sorted_metadata(spec: Path, tmp_path: Path) -> None:
    run(spec, tmp_path / "o", tmp_path / "c")
    raw = (tmp_path / "o" / "avg.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    metadata = header["__metadata__"]
    assert list(metadata) == sorted(metadata) and metadata["mlspec_step"] == "export avg to avg.safetensors"


@pytest.mark.slow
def test_kill_9_at_random_moments_then_a_rerun_gives_the_same_bytes(spec: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "mlspec", "run", str(spec), "--no-progress"]
    start = time.perf_counter()
    subprocess.run([*command, "--out", str(tmp_path / "ref"), "--cache-dir", str(tmp_path / "refcache")],
                   check=True, capture_output=True)
    duration = time.perf_counter() - start
    reference = outputs(tmp_path / "ref")
    rng = random.Random(13)
    for trial in range(20):
        out, cache = tmp_path / f"o{trial}", tmp_path / f"c{trial % 4}"  # caches reused: later kills resume
        victim = subprocess.Popen([*command, "--out", str(out), "--cache-dir", str(cache)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, duration))
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        rerun = subprocess.run([*command, "--out", str(out), "--cache-dir", str(cache)], capture_output=True,
                               text=True)
        assert rerun.returncode == 0, (trial, rerun.stderr)
        assert "damaged" not in rerun.stderr, (trial, rerun.stderr)
        assert outputs(out) == reference, f"trial {trial} differs"
        assert not [p for p in out.rglob(".*") if p.name != ".figure-cache.json"], f"trial {trial} left a temporary file"


@pytest.fixture(scope="module")
def task_merging_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    """specs/task-merging.merge at a reduced size, serially and with --jobs 2."""
    text = (SPECS / "task-merging.merge").read_text()
    for old, new in [("hidden = [128, 128]", "hidden = [32]"), ("epochs = 3", "epochs = 1"),
                     ("epochs = 15", "epochs = 2"), ("step 0.2", "step 0.6")]:
        assert old in text, f"task-merging.merge no longer contains {old!r}: update the reduction"
        text = text.replace(old, new)
    base = tmp_path_factory.mktemp("task-merging")
    spec = base / "task-merging.merge"
    spec.write_text(text)
    runs = []
    for jobs in (1, 2):
        run(spec, base / f"out{jobs}", base / f"cache{jobs}", jobs=jobs)
        runs.append(json.loads((base / f"out{jobs}" / "results.json").read_text()))
    return runs[0], runs[1]


@pytest.mark.slow
def test_task_merging_is_the_same_serially_and_with_two_jobs(task_merging_runs: tuple[dict, dict]) -> None:
    serial, parallel = task_merging_runs
    assert serial["steps"] == parallel["steps"]
    for name in serial["results"]:  # DARE's random drops included
        assert serial["results"][name] == parallel["results"][name], name
