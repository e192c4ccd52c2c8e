"""Golden diagnostics: each bad spec in tests/diagnostics/ prints exactly its .expected message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlspec.cli import main

HERE = Path(__file__).parent / "diagnostics"
CASES = sorted(p for p in HERE.iterdir() if p.suffix in (".merge", ".extrap"))


def _check(path: Path) -> tuple[int, str]:
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        result = runner.invoke(main, ["check", path.name], catch_exceptions=False)
    finally:
        os.chdir(cwd)
    return result.exit_code, result.stderr


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 10


@pytest.mark.parametrize("spec", CASES, ids=[c.name for c in CASES])
def test_golden_message(spec: Path) -> None:
    code, err = _check(spec)
    assert code == 2
    expected = spec.with_suffix(".expected").read_text()
    assert err == expected
    assert "Traceback" not in err and "__ANON" not in err


def test_diagnostic_shape(tmp_path: Path) -> None:
    """file:line:col, the source line, and a caret under the span."""
    spec = tmp_path / "s.merge"
    spec.write_text('data d = digits()\nmodel m = mlp(in = 64, hidden = [8], out = 10)\nmodel t = train(m, on = dd)\n')
    code, err = _check(spec)
    assert code == 2
    lines = err.splitlines()
    assert lines[0] == "error: unknown name 'dd'"
    assert lines[1].strip() == "--> s.merge:3:25"
    assert lines[3].endswith("model t = train(m, on = dd)")
    caret_line = lines[4]
    assert caret_line.index("^") - lines[3].index("model") == 24 and caret_line.count("^") == 2
    assert "did you mean 'd'?" in err


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text("model a = mlp(in = 64, out = 10, widht = 3)\nmodel b = trian(a)\n")
    code, err = _check(spec)
    assert code == 2
    assert "mlp has no parameter 'widht'" in err and "unknown operator 'trian'" in err
    assert "2 errors in the spec" in err


QUICK = (HERE.parent.parent / "specs" / "quickstart.merge").read_text()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, len(QUICK) - 1), st.integers(1, 12), st.sampled_from(["", "(", ")", "[", "=", ",", "x", "..", '"', "1e", "@"]))
def test_mangled_specs_never_crash(tmp_path: Path, start: int, length: int, insert: str) -> None:
    """Whatever the damage, `mlspec check` answers with ok or a diagnostic (exit 0 or 2), never a traceback."""
    spec = tmp_path / "m.merge"
    spec.write_text(QUICK[:start] + insert + QUICK[start + length :])
    code, err = _check(spec)
    assert code in (0, 2), err
    assert "Traceback" not in err and "__ANON" not in err and "Tree(" not in err


def test_unavailable_device_is_refused_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--device cuda` without CUDA: one clear message and exit 2, not a failure per step."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    spec = HERE / "run" / "cuda_unavailable.merge"
    out, cache = tmp_path / "out", tmp_path / "cache"
    result = CliRunner().invoke(main, ["run", str(spec), "--device", "cuda", "--out", str(out),
                                       "--cache-dir", str(cache), "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr == spec.with_suffix(".expected").read_text()
    assert not out.exists() and not cache.exists()  # nothing ran, nothing was written


def test_a_study_device_this_machine_lacks_is_refused_too(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text((HERE / "run" / "cuda_unavailable.merge").read_text().replace("seed = 0", 'device = "cuda:99"'))
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "out"),
                                       "--cache-dir", str(tmp_path / "cache"), "--no-progress"])
    assert result.exit_code == 2
    assert "device 'cuda:99' is not available" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()
