"""Running studies: the quickstart end to end, caching, determinism, parallel jobs, failures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import mlspec
from mlspec.cli import main
from mlspec.run.cache import Cache
from mlspec.values import Record

SMALL = """\
# A small study for run tests.
study "small" (seed = 1)
data digits = digits()
data low = digits.classes(0 .. 4)
model init = mlp(in = 64, hidden = [16], out = 10)
model a = train(init, on = low, epochs = 2)
model b = train(init, on = digits, epochs = 2)
merge avg = average(a, b)
evaluate [a, b, avg] on [low, digits]
curve ab = interpolate(a, b, steps = 3) on digits
"""


def write(tmp_path: Path, text: str, name: str = "small.merge") -> Path:
    spec = tmp_path / name
    spec.write_text(text)
    return spec


def test_quickstart_writes_report_and_results(quickstart_run) -> None:
    results, base = quickstart_run
    out = base / "out"
    assert results.ok, results.failures()
    data = json.loads((out / "results.json").read_text())
    assert data["study"]["name"] == "quickstart"
    evals = {k: v for k, v in data["results"].items() if k.startswith("evaluate ")}
    assert len(evals) == 11 * 3  # base, a, b, avg, 7 sweep members × 3 datasets
    for v in evals.values():
        assert 0.0 <= v["accuracy"] <= 1.0 and v["loss"] > 0
    # Each specialist knows its half; the average recovers much of both (the quickstart's finding).
    r = data["results"]
    assert r["evaluate a on low"]["accuracy"] > 0.9 and r["evaluate a on high"]["accuracy"] < 0.5
    assert r["evaluate avg on digits"]["accuracy"] > max(r["evaluate a on digits"]["accuracy"],
                                                          r["evaluate b on digits"]["accuracy"])
    curve = r["ab"]
    assert len(curve["alphas"]) == 21 and set(curve["barriers"]) >= {"loss_max_minus_mean", "error_max_minus_linear"}
    report = (out / "report.html").read_text()
    assert "<svg" in report and "quickstart" in report
    exported = load_file(str(out / "avg.safetensors"))
    a, b = (Cache(base / "cache").load(data["steps"][n]["key"]) for n in ("a", "b"))
    for name, tensor in exported.items():  # the file holds the averaged weights
        torch.testing.assert_close(tensor, (a.state[name] + b.state[name]) / 2)
    assert (out / "provenance.json").exists()


def test_warm_rerun_does_no_work(quickstart_run) -> None:
    results, base = quickstart_run
    again = mlspec.load(Path(__file__).parent.parent / "specs" / "quickstart.merge").run(
        out=base / "out2", cache_dir=base / "cache")
    states = {o.state for n, o in again.outcomes.items() if not n.startswith("export ")}
    assert states == {"cached"}
    assert again.outcomes["export avg to avg.safetensors"].state == "ran"  # a new output directory has no avg.safetensors yet
    first, second = (json.loads((base / d / "results.json").read_text())["results"] for d in ("out", "out2"))
    # The export record names the file it wrote; its digest is per write until exports are byte-identical.
    assert {n: r for n, r in first.items() if not n.startswith("export ")} == {
        n: r for n, r in second.items() if not n.startswith("export ")}


WARM_RUN = """
import sys
from mlspec.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    assert not exit.code, exit.code
print(sorted(m for m in ("torch", "matplotlib", "networkx") if m in sys.modules))
"""


def test_a_run_with_nothing_to_do_imports_no_torch_and_redraws_nothing(quickstart_run, tmp_path: Path) -> None:
    import subprocess
    import sys

    _, base = quickstart_run
    out = tmp_path / "out"
    command = [sys.executable, "-c", WARM_RUN, "run", str(Path(__file__).parent.parent / "specs" / "quickstart.merge"),
               "--out", str(out), "--cache-dir", str(base / "cache"), "--quiet"]
    subprocess.run(command, check=True, capture_output=True)  # writes the export and draws the figures here
    figures = {p: p.stat().st_mtime_ns for p in (out / "figures").iterdir()}
    export = (out / "avg.safetensors").stat().st_mtime_ns
    warm = subprocess.run(command, check=True, capture_output=True, text=True)
    assert warm.stdout.strip().splitlines()[-1] == "[]", warm.stdout
    assert (out / "avg.safetensors").stat().st_mtime_ns == export
    assert {p: p.stat().st_mtime_ns for p in (out / "figures").iterdir() if p.suffix != ".json"} == {
        p: t for p, t in figures.items() if p.suffix != ".json"}
    provenance = json.loads((out / "provenance.json").read_text())
    assert [r["cached"] for r in provenance["runs"]] == [49, 50]  # the export ran once, then nothing did
    assert "not needed" in provenance["runs"][-1]["device"]
    step = provenance["steps"]["a"]
    assert step["state"] == "cached" and step["duration_s"] > 0 and step["computed"]
    (out / "avg.safetensors").write_bytes(b"edited")  # an edited export is written again
    subprocess.run(command, check=True, capture_output=True)
    assert load_file(str(out / "avg.safetensors"))


def test_changing_one_parameter_reruns_only_dependents(tmp_path: Path) -> None:
    spec = write(tmp_path, SMALL)
    mlspec.load(spec).run(out=tmp_path / "o", cache_dir=tmp_path / "c", report=False)
    spec.write_text(SMALL.replace("model b = train(init, on = digits, epochs = 2)",
                                  "model b = train(init, on = digits, epochs = 3)"))
    result = mlspec.load(spec).run(out=tmp_path / "o", cache_dir=tmp_path / "c", report=False)
    ran = {n for n, o in result.outcomes.items() if o.state == "ran"}
    assert ran == {"b", "avg", "ab", "evaluate b on low", "evaluate b on digits",
                   "evaluate avg on low", "evaluate avg on digits"}


def test_dry_run_lists_state_and_reason(tmp_path: Path) -> None:
    spec = write(tmp_path, SMALL)
    cache = tmp_path / "c"
    mlspec.load(spec).run(out=tmp_path / "o", cache_dir=cache, report=False)
    spec.write_text(SMALL.replace("steps = 3", "steps = 4"))
    out = CliRunner().invoke(main, ["run", str(spec), "--dry-run", "--cache-dir", str(cache)])
    assert out.exit_code == 0, out.output
    lines = {line.split()[1]: line for line in out.output.splitlines() if line.startswith(("run", "cached"))}
    assert lines["ab"].startswith("run") and "parameter changed: steps: 3 → 4" in lines["ab"]
    assert lines["avg"].startswith("cached")
    assert "1 to run" in out.output


def test_a_failing_step_keeps_everything_else(tmp_path: Path) -> None:
    spec = write(tmp_path, SMALL + "data none = digits.classes(11)\nmodel c = train(init, on = none)\n")
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o"),
                                    "--cache-dir", str(tmp_path / "c")])
    assert out.exit_code == 1
    assert "class 11 does not occur" in out.stderr and "'c'" in out.stderr and "Traceback" not in out.output
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "evaluate avg on digits" in data["results"] and "c" not in data["results"]
    assert (tmp_path / "o" / "report.html").exists()


def test_cache_never_trusts_a_half_written_artifact(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = "ab" * 32
    partial = cache.path(key)
    partial.mkdir(parents=True)
    (partial / "tensors.safetensors").write_bytes(b"\0\0")  # a crash before meta.json
    assert not cache.has(key)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    cache.save("cd" * 32, Record({"x": 1}))
    assert cache.has("cd" * 32) and cache.load("cd" * 32) == Record({"x": 1})
    assert not any((tmp_path / "tmp").iterdir())


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write(tmp_path, 'data d = digits()\nmodel m = mlp(in = 64, hidden = [4], out = 10)\n')
    monkeypatch.setenv("MLSPEC_CACHE_DIR", str(tmp_path / "envcache"))
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    assert any((tmp_path / "envcache").rglob("meta.json"))


def test_export_refuses_to_escape_at_run_time(tmp_path: Path) -> None:
    spec = write(tmp_path, 'model m = mlp(in = 64, hidden = [4], out = 10)\nexport m to "/tmp/x.safetensors"\n')
    out = CliRunner().invoke(main, ["check", str(spec)])
    assert out.exit_code == 2 and "leaves the output directory" in out.stderr
    target = tmp_path / "elsewhere" / "x.safetensors"
    spec.write_text(f'model m = mlp(in = 64, hidden = [4], out = 10)\nexport m to "{target}"\n')
    out = CliRunner().invoke(main, ["run", str(spec), "--allow-outside-out", "--out", str(tmp_path / "o"),
                                    "--cache-dir", str(tmp_path / "c")])
    assert out.exit_code == 0, out.output
    assert set(load_file(str(target))) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}


def test_python_api_returns_results(tmp_path: Path) -> None:
    study = mlspec.load(write(tmp_path, SMALL))
    results = study.run(out=tmp_path / "o", cache_dir=tmp_path / "c", report=False)
    assert "evaluate a on low" in results and 0 <= results["evaluate a on low"]["accuracy"] <= 1
    assert results["ab"]["a"] == "a" and results["ab"]["dataset"] == "digits"
    assert os.path.exists(tmp_path / "o" / "results.json")
    assert torch.get_num_threads() >= 1


def test_progress_reports_steps_and_training_epochs(tmp_path: Path) -> None:
    import contextlib

    events: list[object] = []

    @contextlib.contextmanager
    def bar(total: int, description: str):
        events.append((total, description))
        yield lambda *a, **fields: events.append(fields)

    spec = write(tmp_path, "data d = digits()\nmodel m = mlp(in = 64, hidden = [4], out = 10)\n"
                           "model t = train(m, on = d, epochs = 3)\n")
    mlspec.load(spec).run(out=tmp_path / "o", cache_dir=tmp_path / "c", progress=bar, report=False)
    assert (3, "small: steps") in events and (3, "t: train") in events
    losses = [e["loss"] for e in events if isinstance(e, dict) and "loss" in e]
    assert len(losses) == 3 and all(isinstance(v, float) for v in losses)


def test_ray_executor_matches_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    spec = write(tmp_path, SMALL + "data none = digits.classes(11)\nmodel c = train(init, on = none)\n"
                                   "evaluate [c] on [digits]\n")
    local = mlspec.load(spec).run(out=tmp_path / "l", cache_dir=tmp_path / "cl", report=False)
    # Part of the study already cached: Ray receives those values from the driver.
    cache = tmp_path / "cr"
    mlspec.load(write(tmp_path, SMALL.split("merge avg")[0], "part.merge")).run(out=tmp_path / "p", cache_dir=cache,
                                                                                 report=False)
    remote = mlspec.load(spec).run(out=tmp_path / "r", cache_dir=cache, report=False, executor="ray")
    states = {n: o.state for n, o in remote.outcomes.items()}
    assert states["a"] == "cached" and states["avg"] == "ran"
    assert states["none"] == "failed" and states["c"] == "skipped" and states["evaluate c on digits"] == "skipped"
    assert "class 11 does not occur" in (remote.outcomes["none"].error or "")
    assert remote["ab"]["loss"] == pytest.approx(local["ab"]["loss"], rel=1e-5)
    assert remote["evaluate avg on digits"] == local["evaluate avg on digits"]
    assert Cache(cache).has(mlspec.load(spec).plan.step("avg").key)  # the driver wrote the cache


def test_results_json_is_strict_json_even_with_nan(tmp_path: Path) -> None:
    from mlspec.study import write_json

    write_json(tmp_path / "r.json", {"loss": float("nan"), "curve": [1.0, float("inf")], "n": 3})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "curve": [1.0, None], "n": 3}
