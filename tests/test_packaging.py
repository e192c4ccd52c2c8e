"""Both install modes work: the editable install (this test run) and a built wheel in a fresh venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SPEC = """\
study "wheel-check" (seed = 0)
data digits = digits()
model m = mlp(in = 64, hidden = [8], out = 10)
model t = train(m, on = digits, epochs = 1)
evaluate [t] on [digits]
"""


def test_every_package_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {"mlspec.grammar", "mlspec.reports"}
    for init in (ROOT / "interpreter").rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT / "interpreter")
        found.add(".".join(("mlspec", *rel.parts)))
    assert found == listed


def test_check_imports_neither_torch_nor_networkx(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text(SPEC)
    code = (f"import sys\nfrom mlspec.cli import main\nsys.argv = ['mlspec', 'check', {str(spec)!r}]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "heavy = [m for m in ('torch', 'networkx', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, f'mlspec check imported {heavy}'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv_and_runs_a_spec(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist), str(ROOT)], check=True)
    wheel = next(dist.glob("mlspec-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # The dependencies (torch & co.) come from the environment running this test, whatever it is (a
    # venv or the system), with no multi-GB download: its site directories are appended to the new
    # venv's path. `--system-site-packages` would give the *base* interpreter's instead. Directories
    # named by a .pth line get no .pth processing, so the running editable install stays out.
    site_dir = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              capture_output=True, text=True, check=True).stdout.strip()
    inherited = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    (Path(site_dir) / "inherited.pth").write_text("\n".join(inherited) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "s.merge").write_text(SPEC)
    where = subprocess.run([str(py), "-c", "import mlspec, sys; print(mlspec.__file__)"], cwd=work,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert str(venv) in where, f"mlspec imported from {where}, not the wheel"
    run = subprocess.run([str(venv / "bin" / "mlspec"), "run", "s.merge", "--no-progress"], cwd=work,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (work / "out" / "wheel-check" / "report.html").exists()
    assert (work / "out" / "wheel-check" / "results.json").exists()
