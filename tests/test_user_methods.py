"""Merge methods researchers write themselves: a decorated function in a file beside the spec
(`use python`, allowed by --allow-python), or an installed package's entry point. Each runs on
models held in memory and on checkpoints streamed from disk, and gives exactly what the function
computes by hand."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file
from tiny_checkpoints import tensors, tiny_family

import mlspec
from mlspec.cli import main
from mlspec.errors import SpecError
from mlspec.ops.merge.user import MethodDefinitionError, merge_method

METHODS = '''
from pathlib import Path
from typing import Annotated, Literal

import torch
from pydantic import Field

from mlspec import PerModel, merge_method

Path(__file__).with_name("imported.marker").write_text("this file ran")


@merge_method("scaled_max")
def scaled_max(tensors: list[torch.Tensor], *, scale: float = 1.0) -> torch.Tensor:
    """Element-wise maximum of the models, scaled."""
    return torch.stack(tensors).amax(0) * scale


@merge_method("toward")
def toward(tensors: list[torch.Tensor], base: torch.Tensor, *,
           t: Annotated[float, Field(ge=0, le=1)] = 0.5, weight: PerModel[float] = 1.0,
           how: Literal["mean", "sum"] = "mean") -> torch.Tensor:
    """Move the base toward the weighted mean (or sum) of the task vectors."""
    total = sum(w * (x - base) for w, x in zip(weight, tensors))
    if how == "mean":
        total = total / sum(weight)
    return base + t * total


@merge_method("noisy_mean")
def noisy_mean(tensors: list[torch.Tensor], generator: torch.Generator, *, sigma: float = 0.1) -> torch.Tensor:
    """The mean plus Gaussian noise (a random method: one stream per tensor)."""
    mean = torch.stack(tensors).mean(0)
    return mean + sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
'''



def _study(tmp_path: Path, body: str, *, allow_python: bool = True) -> dict[str, torch.Tensor]:
    (tmp_path / "my_methods.py").write_text(METHODS)
    spec = tmp_path / "s.merge"
    spec.write_text('study "user" (seed = 3)\nuse python "my_methods.py"\n' + textwrap.dedent(body))
    results = mlspec.load(spec, allow_python=allow_python).run(out=tmp_path / "o", cache_dir=tmp_path / "c")
    assert results.ok, results.failures()
    return {p.stem: load_file(p) for p in (tmp_path / "o").glob("*.safetensors")}


def test_user_method_on_models_in_memory_equals_the_function_by_hand(tmp_path: Path) -> None:
    out = _study(tmp_path, """
        model a = mlp(in = 6, hidden = [5], out = 3)
        model b = mlp(in = 6, hidden = [5], out = 3)
        model init = mlp(in = 6, hidden = [5], out = 3)
        merge m = scaled_max(a, b, scale = 0.5)
        merge s[x] = scaled_max(a, b, scale = x) for x in [0.25, 2.0]
        merge t = toward(base = init, models = [a, b], t = by_name(bias = 0.2, default = [0, 1]), weight = [1, 3])
        export a to "a.safetensors"
        export b to "b.safetensors"
        export init to "init.safetensors"
        export m to "m.safetensors"
        export s to "s.safetensors"
        export t to "t.safetensors"
    """)
    a, b, init = out["a"], out["b"], out["init"]
    assert set(out["m"]) == set(a)
    for name in a:
        assert torch.equal(out["m"][name], torch.maximum(a[name], b[name]) * 0.5)
        for x in (0.25, 2.0):
            assert torch.equal(out[f"s-s_{x}_"][name], torch.maximum(a[name], b[name]) * x)
        # layers.0.* are at depth 0, layers.1.* at depth 1 (2 layers); biases take the by_name rule
        t = 0.2 if "bias" in name else (1.0 if name.startswith("layers.1.") else 0.0)
        by_hand = init[name] + t * (1 * (a[name] - init[name]) + 3 * (b[name] - init[name])) / 4
        torch.testing.assert_close(out["t"][name], by_hand, rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("user-hf")
    tiny_family(root, ["ft1", "ft2"], sharded="ft2")
    return root


def test_user_method_on_streamed_checkpoints_equals_the_function_by_hand(ckpts: Path, tmp_path: Path) -> None:
    for name in ("base", "ft1", "ft2"):
        (tmp_path / name).symlink_to(ckpts / name)
    out = _study(tmp_path, """
        model base = load("base")
        model ft1 = load("ft1")
        model ft2 = load("ft2")
        merge m = scaled_max(ft1, ft2, scale = 2.0)
        merge t = toward(base = base, models = [ft1, ft2], t = by_name(mlp = [0.1, 0.9], default = 0.4), weight = [2, 1])
        export m to "m.safetensors"
        export t to "t.safetensors"
    """)
    base, a, b = (tensors(ckpts / n) for n in ("base", "ft1", "ft2"))
    for name in base:
        assert torch.equal(out["m"][name], torch.maximum(a[name], b[name]) * 2.0), name
        depth = 1.0 if ".layers.1." in name else 0.0  # 2 layers; embeddings, norm and head at 0
        t = 0.1 + 0.8 * depth if "mlp" in name else 0.4
        by_hand = base[name] + t * (2 * (a[name] - base[name]) + 1 * (b[name] - base[name])) / 3
        torch.testing.assert_close(out["t"][name], by_hand, rtol=1e-6, atol=1e-6, msg=name)


def test_random_user_method_agrees_between_memory_and_disk(ckpts: Path, tmp_path: Path) -> None:
    """Each tensor's stream is seeded from the step and the tensor's name, so both engines agree."""
    for name in ("ft1", "ft2"):
        (tmp_path / name).symlink_to(ckpts / name)
        state = tensors(ckpts / name)
        save_file(state, str(tmp_path / f"{name}-copy.safetensors"))
    out = _study(tmp_path, """
        model ft1 = load("ft1")
        model ft2 = load("ft2")
        merge n = noisy_mean(ft1, ft2, sigma = 0.01)
        export n to "n.safetensors"
    """)
    mean = {k: (v + tensors(ckpts / "ft2")[k]) / 2 for k, v in tensors(ckpts / "ft1").items()}
    noise = {k: out["n"][k] - mean[k] for k in mean}
    assert all(0.0 < v.abs().max() < 0.1 for v in noise.values())

    from mlspec.ops.merge.apply import merge
    from mlspec.run.context import StepContext
    from mlspec.values import Model

    ctx = StepContext(name="n", key="k", seed=0, device="cpu", out_dir=tmp_path, work_dir=tmp_path / "w")
    models = [Model(arch={"type": "llama"}, state=tensors(ckpts / n)) for n in ("ft1", "ft2")]
    again = merge("noisy_mean", ctx, models=models, sigma=0.01)
    disk = merge("noisy_mean", ctx, models=[mlspec_ref(tmp_path / "ft1"), mlspec_ref(tmp_path / "ft2")], sigma=0.01)
    streamed = tensors(Path(disk.path))
    for name, tensor in again.state.items():
        torch.testing.assert_close(streamed[name], tensor, rtol=0, atol=1e-7, msg=name)


def mlspec_ref(path: Path):  # type: ignore[no-untyped-def]
    from mlspec.checkpoints.layout import reference

    return reference(path)


def test_without_allow_python_nothing_runs(tmp_path: Path) -> None:
    (tmp_path / "my_methods.py").write_text(METHODS)
    spec = tmp_path / "s.merge"
    spec.write_text('use python "my_methods.py"\nmodel a = mlp(in = 2, out = 2)\nmerge m = scaled_max(a, a)\n')
    for command in (["check", str(spec)], ["run", str(spec), "--out", str(tmp_path / "o"), "--no-progress"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "--allow-python" in result.stderr and "s.merge:1:1" in result.stderr
        assert "unknown operator" not in result.stderr  # the refusal alone, no follow-on errors
    assert not (tmp_path / "imported.marker").exists()
    assert not (tmp_path / "o").exists()
    with pytest.raises(SpecError, match="--allow-python"):
        mlspec.load(spec).plan  # noqa: B018  (planning is what raises)
    result = CliRunner().invoke(main, ["check", str(spec), "--allow-python"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "imported.marker").exists()


def test_a_bad_method_file_is_a_spec_error_at_the_use_line(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("from mlspec import merge_method\n\n@merge_method('m')\n"
                                     "def m(tensors, scale=1.0):\n    return tensors[0]\n")
    spec = tmp_path / "s.merge"
    spec.write_text('study "x"\nuse python "bad.py"\n')
    result = CliRunner().invoke(main, ["check", str(spec), "--allow-python"])
    assert result.exit_code == 2
    assert "s.merge:2:1" in result.stderr and "'scale' must be keyword-only" in result.stderr
    assert "Traceback" not in result.output


def test_signature_rules_are_enforced_with_clear_messages() -> None:
    def no_annotation(tensors, *, k=1.0):  # type: ignore[no-untyped-def]
        return tensors[0]

    def bad_base(tensors: list[torch.Tensor], base: int) -> torch.Tensor:
        return tensors[0]

    def bad_type(tensors: list[torch.Tensor], *, x: dict) -> torch.Tensor:  # type: ignore[type-arg]
        return tensors[0]

    for fn, message in [(no_annotation, "'k' needs a type annotation"),
                        (bad_base, "'base' must be annotated torch.Tensor"),
                        (bad_type, "parameter 'x' has type")]:
        with pytest.raises(MethodDefinitionError, match=message):
            merge_method(f"t_{fn.__name__}")(fn)
    with pytest.raises(ValueError, match="'ties' is already declared by mlspec|already an operator"):
        merge_method("ties")(lambda tensors: tensors[0])


def test_parameters_are_checked_like_built_in_ones(tmp_path: Path) -> None:
    (tmp_path / "my_methods.py").write_text(METHODS)
    spec = tmp_path / "s.merge"
    spec.write_text('use python "my_methods.py"\nmodel a = mlp(in = 2, out = 2)\n'
                    'merge m = toward(base = a, models = [a, a], t = 1.5)\n'
                    'merge k = toward(base = a, models = [a, a], how = median)\n'
                    'merge n = toward(models = [a, a])\n')
    result = CliRunner().invoke(main, ["check", str(spec), "--allow-python"])
    assert result.exit_code == 2
    assert "invalid 't' for toward" in result.stderr and "less than or equal to 1" in result.stderr
    assert "invalid 'how' for toward: Input should be 'mean' or 'sum'" in result.stderr
    assert "toward needs a base model" in result.stderr or "toward needs 'base'" in result.stderr
    shown = CliRunner().invoke(main, ["ops", "toward", "--python", str(tmp_path / "my_methods.py")])
    assert shown.exit_code == 0
    assert "Move the base toward the weighted mean" in shown.output
    assert "weight" in shown.output and "per model" in shown.output and "'mean', 'sum'" in shown.output


def test_required_parameters_that_vary_by_tensor_can_be_set(tmp_path: Path) -> None:
    """A keyword-only parameter without a default is required, and may still vary by tensor."""
    (tmp_path / "req.py").write_text(textwrap.dedent('''
        import torch
        from mlspec import merge_method

        @merge_method("affine_req")
        def affine_req(tensors: list[torch.Tensor], *, scale: float, shift: float) -> torch.Tensor:
            return tensors[0] * scale + shift
    '''))
    mlspec.registry.load_python(str(tmp_path / "req.py"))
    from mlspec.ops.merge import method

    declared = method.get("affine_req")
    assert declared is not None
    assert declared.normalise({"scale": 2, "shift": 1}) == {"scale": 2.0, "shift": 1.0}
    with pytest.raises(ValueError, match="shift"):
        declared.normalise({"scale": 2})  # still required
    with pytest.raises(ValueError, match="setting must be a number"):
        declared.normalise({"scale": "x", "shift": 1})


def test_installed_package_registers_through_the_entry_point(tmp_path: Path) -> None:
    """A small package built here: an entry point in group mlspec.operators naming its module."""
    site = tmp_path / "site"
    (site / "plug_methods").mkdir(parents=True)
    (site / "plug_methods" / "__init__.py").write_text(textwrap.dedent('''
        import torch
        from mlspec import merge_method

        @merge_method("plug_min")
        def plug_min(tensors: list[torch.Tensor]) -> torch.Tensor:
            """Element-wise minimum (from an installed package)."""
            return torch.stack(tensors).amin(0)
    '''))
    dist = site / "plug_methods-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plug-methods\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlspec.operators]\nplug = plug_methods\n")
    spec = tmp_path / "p.merge"
    spec.write_text('study "p"\nmodel a = mlp(in = 3, out = 2)\nmodel b = mlp(in = 3, out = 2)\n'
                    'merge m = plug_min(a, b)\nexport m to "m.safetensors"\nexport a to "a.safetensors"\n'
                    'export b to "b.safetensors"\n')
    env = {"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent)}
    ops = subprocess.run([sys.executable, "-m", "mlspec", "ops", "plug_min"], capture_output=True, text=True,
                         env=env, check=False)
    assert ops.returncode == 0, ops.stderr
    assert "Element-wise minimum (from an installed package)" in ops.stdout
    run = subprocess.run([sys.executable, "-m", "mlspec", "run", str(spec), "--out", str(tmp_path / "o"),
                          "--cache-dir", str(tmp_path / "c"), "--no-progress"], capture_output=True, text=True,
                         env=env, check=False)
    assert run.returncode == 0, run.stderr
    m, a, b = (load_file(tmp_path / "o" / f"{n}.safetensors") for n in ("m", "a", "b"))
    assert all(torch.equal(m[k], torch.minimum(a[k], b[k])) for k in a)
    assert json.loads((tmp_path / "o" / "results.json").read_text())
