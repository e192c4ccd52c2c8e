"""Checkpoint merging from a spec: load HF directories, merge streamed, export, check values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from tiny_checkpoints import tensors, tiny_family

import mlspec
from mlspec.cli import main


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf")
    tiny_family(root, ["ft1", "ft2"], sharded="ft2")
    return root


def test_spec_merges_checkpoints_streamed_and_exports(ckpts: Path, tmp_path: Path) -> None:
    spec = ckpts / "llm.merge"
    spec.write_text(
        'study "llm"\n'
        'model base = load("base")\n'
        'model ft1 = load("ft1")\n'
        'model ft2 = load("ft2")\n'
        "merge avg = average(ft1, ft2)\n"
        "merge ta = task_arithmetic(base = base, models = [ft1, ft2], scale = 0.5)\n"
        'export avg to "avg.safetensors"\n'
        'export ta to "ta-hf" as hf\n'
    )
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o"), "--cache-dir",
                                    str(tmp_path / "c"), "--no-progress"])
    assert out.exit_code == 0, out.output + out.stderr
    base, ft1, ft2 = (tensors(ckpts / n) for n in ("base", "ft1", "ft2"))
    avg = load_file(str(tmp_path / "o" / "avg.safetensors"))
    ta = tensors(tmp_path / "o" / "ta-hf")
    assert set(avg) == set(base) == set(ta)
    for name in base:
        torch.testing.assert_close(avg[name], (ft1[name] + ft2[name]) / 2)
        by_hand = base[name] + 0.5 * ((ft1[name] - base[name]) + (ft2[name] - base[name]))
        torch.testing.assert_close(ta[name], by_hand)
    assert (tmp_path / "o" / "ta-hf" / "config.json").exists()


def test_checkpoint_in_an_in_memory_operator_is_a_clear_error(ckpts: Path, tmp_path: Path) -> None:
    spec = ckpts / "bad.merge"
    spec.write_text('data d = digits()\nmodel m = load("base")\nevaluate [m] on [d]\n')
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o"), "--cache-dir",
                                    str(tmp_path / "c"), "--no-progress"])
    assert out.exit_code == 1
    assert "needs the weights in memory" in out.stderr and "Traceback" not in out.output
    mlspec.load(spec).check()  # checks cleanly


def test_single_safetensors_files_merge_streamed_and_export(ckpts: Path, tmp_path: Path) -> None:
    """`load("x.safetensors")` inputs have no config.json: the streamed merge is a directory of
    weights without one, which later steps (another merge, an export) read like any checkpoint."""
    from safetensors.torch import save_file

    for name in ("base", "ft1", "ft2"):
        save_file(tensors(ckpts / name), str(tmp_path / f"{name}.safetensors"))
    spec = tmp_path / "files.merge"
    spec.write_text(
        'model base = load("base.safetensors")\n'
        'model a = load("ft1.safetensors")\n'
        'model b = load("ft2.safetensors")\n'
        "merge avg = average(a, b)\n"
        "merge t = ties(base = base, models = [a, b], density = 0.5, trim = tensor)\n"
        "merge again = average(avg, t)\n"
        'export again to "again.safetensors"\n'
    )
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(tmp_path / "o"), "--cache-dir",
                                    str(tmp_path / "c"), "--no-progress"])
    assert out.exit_code == 0, out.output
    got = load_file(str(tmp_path / "o" / "again.safetensors"))
    base, a, b = (tensors(ckpts / n) for n in ("base", "ft1", "ft2"))
    from mlspec.ops.merge import kernels

    for name in base:
        ties = kernels.ties(base[name], [a[name], b[name]], density=0.5)
        torch.testing.assert_close(got[name], ((a[name] + b[name]) / 2 + ties) / 2, msg=name)
