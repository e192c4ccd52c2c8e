"""A stranger's spec writes only inside its output folder and reads `use` files only beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

import mlspec
from mlspec.errors import SpecError

MODEL = 'data digits = digits()\nmodel m = mlp(in = 64, hidden = [4], out = 10)\n'


def spec_error(text: str, tmp_path: Path, name: str = "s.merge", **kw: bool) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        mlspec.load(path, **kw).check()
    return info.value.render()


@pytest.mark.parametrize("name", ["../../../outside/x", "/some/dir", "..", "a/../../b", "."])
def test_a_study_name_is_one_folder_under_out(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "s.merge").write_text(f'study "{name}"\n' + MODEL + 'export m to "m.safetensors"\n')
    study = mlspec.load(work / "s.merge")
    out = study.default_out_dir()
    assert out.parent == Path("out") and len(out.parts) == 2 and out.name not in ("", ".", "..")
    results = study.run(cache_dir=work / "cache", report=False)
    assert results.ok, results.failures()
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert written and all(work in p.parents for p in written)
    assert (work / out / "m.safetensors").is_file() and (work / out / "results.json").is_file()


def test_a_symlink_inside_the_output_folder_cannot_lead_an_export_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(outside, target_is_directory=True)
    (tmp_path / "s.merge").write_text(MODEL + 'export m to "link/m.safetensors"\n')
    results = mlspec.load(tmp_path / "s.merge").run(out=out, cache_dir=tmp_path / "c", report=False)
    error = results.failures()["export m to link/m.safetensors"]
    assert "refusing to write 'link/m.safetensors'" in error and str(outside) in error
    assert list(outside.iterdir()) == []


def test_a_symlinked_report_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(outside, target_is_directory=True)
    (tmp_path / "s.merge").write_text(MODEL + 'report "sub/r.html"\n')
    with pytest.raises(mlspec.errors.StepError, match="refusing to write 'sub/r.html'"):
        mlspec.load(tmp_path / "s.merge").run(out=out, cache_dir=tmp_path / "c")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("path", ["results.json", "provenance.json", "figures/m.safetensors", "./results.json"])
def test_reserved_output_names_are_refused_at_check_time(path: str, tmp_path: Path) -> None:
    message = spec_error(MODEL + f'export m to "{path}"\n', tmp_path)
    assert "would overwrite the run's own" in message and "s.merge:3:13" in message


def test_an_export_cannot_replace_the_report_or_its_figures(tmp_path: Path) -> None:
    message = spec_error(MODEL + 'report "sub/r.html"\nexport m to "sub/r.html"\nexport m to "sub/figures/x"\n',
                         tmp_path)
    assert "would overwrite the report's file" in message and "would overwrite the report's figures" in message
    assert "overwrite the report" in spec_error(MODEL + 'export m to "report.html"\n', tmp_path)


def test_an_export_cannot_name_the_output_folder_itself(tmp_path: Path) -> None:
    # `as hf` replaces its target directory: "." would have deleted the whole output folder.
    assert "names the output directory itself" in spec_error(MODEL + 'export m to "." as hf\n', tmp_path)


def test_use_is_confined_to_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "common.merge").write_text(MODEL)
    folder = tmp_path / "studies"
    folder.mkdir()
    for target in ("../common.merge", str(tmp_path / "common.merge")):
        message = spec_error(f'use "{target}"\nmodel t = train(m, on = digits, epochs = 1)\n', folder)
        assert "is outside the spec's folder" in message and "--allow-outside" in message
    (folder / "link.merge").symlink_to(tmp_path / "common.merge")
    assert "is outside the spec's folder" in spec_error('use "link.merge"\n', folder)
    allowed = folder / "ok.merge"
    allowed.write_text('use "../common.merge"\nmodel t = train(m, on = digits, epochs = 1)\n')
    assert "t" in mlspec.load(allowed, allow_outside=True).plan.graph
    (folder / "inner").mkdir()
    (folder / "inner" / "shared.merge").write_text(MODEL)
    beside = folder / "beside.merge"
    beside.write_text('use "inner/shared.merge"\nmodel t = train(m, on = digits, epochs = 1)\n')
    assert "t" in mlspec.load(beside).plan.graph
