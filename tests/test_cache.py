"""A cache that never lies: damaged entries are found, reported, discarded and recomputed; export
records are checked against their files; two runs share work; disks that fail say where."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mlspec
from mlspec.cli import main
from mlspec.run.cache import Cache, write_atomic

SPEC = """\
study "cached" (seed = 1)
data digits = digits()
model init = mlp(in = 64, hidden = [8], out = 10)
model a = train(init, on = digits, epochs = 1)
evaluate [a] on [digits]
export a to "a.safetensors"
"""


def run(tmp_path: Path, **kw):
    spec = tmp_path / "s.merge"
    if not spec.exists():
        spec.write_text(SPEC)
    return mlspec.load(spec).run(out=tmp_path / "out", cache_dir=tmp_path / "cache", report=False, **kw)


def states(results) -> dict[str, str]:
    return {n: o.state for n, o in results.outcomes.items()}


def entry(tmp_path: Path, step: str) -> Path:
    key = json.loads((tmp_path / "out" / "results.json").read_text())["steps"][step]["key"]
    return Cache(tmp_path / "cache").path(key)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_a_number(path: Path) -> None:
    text = path.read_text()
    at = text.index("train_loss")
    at += next(i for i, ch in enumerate(text[at:]) if ch in "123456789")
    path.write_text(text[:at] + str(int(text[at]) % 9 + 1) + text[at + 1:])


DAMAGES = {
    "flipped tensor bytes": lambda e: flip_a_byte(e / "tensors.safetensors"),
    "deleted tensor file": lambda e: (e / "tensors.safetensors").unlink(),
    "edited number in meta": lambda e: edit_a_number(e / "meta.json"),
    "truncated meta": lambda e: (e / "meta.json").write_bytes((e / "meta.json").read_bytes()[:10]),
    "empty meta": lambda e: (e / "meta.json").write_bytes(b""),
    "non-UTF-8 meta": lambda e: (e / "meta.json").write_bytes(b"\xff\xfe\x00garbage"),
    "deleted checksums": lambda e: (e / "sha256.json").unlink(),
    "garbled checksums": lambda e: (e / "sha256.json").write_text("[1, 2"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_entry_is_reported_discarded_and_recomputed(damage: str, tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    first = run(tmp_path)
    assert first.ok, first.failures()
    before = (tmp_path / "out" / "results.json").read_bytes()
    exported = (tmp_path / "out" / "a.safetensors").read_bytes()
    DAMAGES[damage](entry(tmp_path, "a"))
    capfd.readouterr()
    second = run(tmp_path)
    assert second.ok, second.failures()
    lines = [line for line in capfd.readouterr().err.splitlines() if "damaged" in line]
    if damage == "deleted checksums":  # an entry without checksums is simply not there
        assert lines == []
    else:
        assert len(lines) == 1 and "discarded, its step runs again" in lines[0]
    assert states(second)["a"] == "ran" and states(second)["init"] == "cached"
    # Recomputed from the same inputs and seed: the very same bytes as before the damage.
    assert (tmp_path / "out" / "results.json").read_bytes() == before
    assert (tmp_path / "out" / "a.safetensors").read_bytes() == exported


def test_an_export_record_is_checked_against_its_file_every_run(tmp_path: Path) -> None:
    run(tmp_path)
    target = tmp_path / "out" / "a.safetensors"
    original = target.read_bytes()
    assert states(run(tmp_path))["export a to a.safetensors"] == "cached"  # the file is as recorded
    flip_a_byte(target)
    assert states(run(tmp_path))["export a to a.safetensors"] == "ran"
    assert target.read_bytes() == original
    target.unlink()
    results = run(tmp_path)
    assert states(results)["export a to a.safetensors"] == "ran" and target.read_bytes() == original
    record = results["export a to a.safetensors"]
    assert record["bytes"] == len(original) and len(record["sha256"]) == 64


def test_results_never_report_an_export_whose_file_is_gone(tmp_path: Path) -> None:
    from mlspec.study import collect

    run(tmp_path)
    study = mlspec.load(tmp_path / "s.merge")
    (tmp_path / "out" / "a.safetensors").unlink()
    results = collect(study.plan, Cache(tmp_path / "cache"), tmp_path / "out")
    assert "export a to a.safetensors" not in results.results and "a" in results.results


def test_cache_verify_size_and_gc(tmp_path: Path) -> None:
    run(tmp_path)
    cache = str(tmp_path / "cache")
    ok = CliRunner().invoke(main, ["cache", "--cache-dir", cache, "verify"])
    assert ok.exit_code == 0 and "5 of 5 entries intact" in ok.output
    flip_a_byte(entry(tmp_path, "a") / "tensors.safetensors")
    bad = CliRunner().invoke(main, ["cache", "--cache-dir", cache, "verify"])
    assert bad.exit_code == 1 and "4 of 5 entries intact, 1 discarded" in bad.output
    assert "tensors.safetensors does not match its sha256" in bad.stderr
    size = CliRunner().invoke(main, ["cache", "--cache-dir", cache, "size"])
    assert size.exit_code == 0 and size.output.startswith("4 entries, ")
    stray = Cache(cache).path("ab" + "0" * 62)
    stray.mkdir(parents=True)
    (Path(cache) / "tmp" / "leftover").mkdir(parents=True)
    dry = CliRunner().invoke(main, ["cache", "--cache-dir", cache, "gc", "--dry-run"])
    assert str(stray) in dry.output and "leftover" in dry.output and stray.exists()
    CliRunner().invoke(main, ["cache", "--cache-dir", cache, "gc"])
    assert not stray.exists() and not (Path(cache) / "tmp" / "leftover").exists()
    assert all(Cache(cache).has(json.loads((tmp_path / "out" / "results.json").read_text())["steps"][s]["key"])
               for s in ("init", "digits"))


def test_two_runs_on_one_cache_compute_each_step_once(tmp_path: Path) -> None:
    (tmp_path / "s.merge").write_text(SPEC.replace("epochs = 1", "epochs = 3"))
    code = ("import json, sys, mlspec\n"
            "r = mlspec.load(sys.argv[1]).run(out=sys.argv[2], cache_dir=sys.argv[3], report=False)\n"
            "print(json.dumps({n: o.state for n, o in r.outcomes.items()}))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "s.merge"), str(tmp_path / f"o{i}"),
                               str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True) for i in range(2)]
    outcomes = [json.loads(p.communicate(timeout=600)[0]) for p in procs]
    for step in ("digits", "init", "a", "evaluate a on digits"):
        assert sorted(o[step] for o in outcomes) == ["cached", "ran"], (step, outcomes)


def _refuse_writes_under(monkeypatch: pytest.MonkeyPatch, root: Path, code: int) -> None:
    """Simulate a read-only or full file system under ``root`` (the tests run as root, whom
    permissions do not stop)."""
    import builtins
    import os

    def guarded(fn, writes=lambda *a, **k: True):
        def wrapper(path, *args, **kwargs):
            if Path(path).resolve().is_relative_to(root.resolve()) and writes(*args, **kwargs):
                raise OSError(code, os.strerror(code), str(path))
            return fn(path, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", guarded(builtins.open, lambda mode="r", *a, **k: set(mode) & set("wax+")))
    monkeypatch.setattr(os, "mkdir", guarded(os.mkdir))
    monkeypatch.setattr(os, "replace", guarded(os.replace))


def test_a_read_only_complete_cache_still_serves_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run(tmp_path)
    before = (tmp_path / "out" / "results.json").read_bytes()
    _refuse_writes_under(monkeypatch, tmp_path / "cache", errno.EROFS)
    second = run(tmp_path)
    assert second.ok, second.failures()
    assert set(states(second).values()) == {"cached"}
    assert (tmp_path / "out" / "results.json").read_bytes() == before and first.ok


def test_a_read_only_cache_that_must_compute_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_writes_under(monkeypatch, tmp_path / "cache", errno.EROFS)
    results = run(tmp_path)
    error = results.failures()["digits"]
    assert "Read-only file system" in error and str(tmp_path / "cache") in error


def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mlspec.run.cache.open", lambda path, mode="r", *a, **k: Full(real_open(path, mode)),
                        raising=False)
    target = tmp_path / "out" / "results.json"
    with pytest.raises(OSError) as info:
        write_atomic(target, "{}")
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert list((tmp_path / "out").iterdir()) == []
