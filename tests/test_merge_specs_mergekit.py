"""The declared mergekit-catalogue methods (ops/merge/specs_mergekit.py): each runs on models in
memory and on checkpoints streamed from disk with the same numbers, equals its kernel called by hand
with the resolved parameters, and is checked in a spec like any operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mergekit_formulas as mk
import pytest
import torch
from tiny_checkpoints import in_memory, tiny_family, written

from mlspec.checkpoints import engine
from mlspec.errors import SpecError, StepError
from mlspec.ops.checkpoints.loading import load
from mlspec.ops.checkpoints.specs import LoadParams
from mlspec.ops.merge import magprune, passthrough, ram, sce, selective, spherical
from mlspec.ops.merge.apply import merge, tensor_generator
from mlspec.run.context import StepContext

SEED = 7


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return tiny_family(tmp_path_factory.mktemp("tiny"), "ab")


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(name="m", key="m", seed=SEED, device="cpu", out_dir=tmp_path / "out",
                       work_dir=tmp_path / "work", input_names={"models": ["a", "b"]})


# (method, parameters, inputs: which of base/a/b, the kernel called by hand on one tensor)
CASES: list[tuple[str, dict[str, Any], tuple[str, ...], Any]] = [
    ("della", {"density": [0.4, 0.6], "epsilon": 0.1, "weights": [1.0, 0.5], "scale": 0.9}, ("base", "a", "b"),
     lambda xs, b, g: magprune.della(xs, b, weights=[1.0, 0.5], density=[0.4, 0.6], epsilon=[0.1, 0.1], scale=0.9,
                                     generator=g)),
    ("della_linear", {"density": 0.5, "epsilon": [0.2, 0.1], "rescale": "l1"}, ("base", "a", "b"),
     lambda xs, b, g: magprune.della_linear(xs, b, weights=[1.0, 1.0], density=[0.5, 0.5], epsilon=[0.2, 0.1],
                                            rescale="l1", generator=g)),
    ("sce", {"select_topk": 0.3}, ("base", "a", "b"), lambda xs, b, g: sce.sce(xs, b, select_topk=0.3)),
    ("nuslerp", {"weights": [1.0, 3.0], "flatten": False}, ("base", "a", "b"),
     lambda xs, b, g: spherical.nuslerp(xs, b, weights=[1.0, 3.0], flatten=False)),
    ("nuslerp", {"weights": [2.0, 1.0]}, ("a", "b"), lambda xs, b, g: spherical.nuslerp(xs, None, weights=[2.0, 1.0])),
    ("multislerp", {"weights": [1.0, 2.0]}, ("a", "b"),
     lambda xs, b, g: spherical.multislerp(xs, None, weights=[1.0, 2.0])),
    ("nearswap", {"t": 0.05}, ("base", "a"), lambda xs, b, g: selective.nearswap(xs, b, t=0.05)),
    ("arcee_fusion", {}, ("base", "a"), lambda xs, b, g: selective.arcee_fusion(xs, b)),
    ("ram", {"epsilon": 0.1}, ("base", "a", "b"), lambda xs, b, g: ram.ram(xs, b, epsilon=0.1)),
    ("ramplus_tl", {"epsilon": 0.1, "r": 0.5, "alpha": 1.0}, ("base", "a", "b"),
     lambda xs, b, g: ram.ramplus_tl(xs, b, epsilon=0.1, r=0.5, alpha=1.0)),
    ("passthrough", {"scale": 0.5}, ("a",), lambda xs, b, g: passthrough.passthrough(xs, scale=0.5)),
]


def _inputs(names: tuple[str, ...], values: dict[str, Any]) -> dict[str, Any]:
    models = [values[n] for n in names if n != "base"]
    return {"models": models, **({"base": values["base"]} if "base" in names else {})}


@pytest.mark.parametrize("chunk", [1 << 21, 100], ids=["whole", "chunked"])
@pytest.mark.parametrize(("op", "params", "names", "by_hand"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_in_memory_streamed_and_by_hand_agree(
    ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    op: str, params: dict[str, Any], names: tuple[str, ...], by_hand: Any, chunk: int,
) -> None:
    monkeypatch.setattr(engine, "CHUNK", chunk)
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    refs = {k: load(_ctx(tmp_path), LoadParams.model_validate({"path": str(p)})) for k, p in ckpts.items()}
    held = merge(op, _ctx(tmp_path), **params, **_inputs(names, mem))
    streamed = written(merge(op, _ctx(tmp_path), **params, **_inputs(names, refs)))
    assert set(streamed) == set(held.state)
    for name, tensor in held.state.items():
        torch.testing.assert_close(streamed[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
        xs = [mem[n].state[name] for n in names if n != "base"]
        base = mem["base"].state[name] if "base" in names else None
        expected = by_hand(xs, base, tensor_generator(SEED, name))
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=name)


def test_declared_della_is_mergekit_della_with_its_options(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """`della(rescale = l1, weights_at = before)` against mergekit's code as written, tensor by tensor,
    with the same random draws."""
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    weights, density, epsilon = [0.7, 1.1], [0.4, 0.6], [0.15, 0.2]
    got = merge("della", _ctx(tmp_path), base=mem["base"], models=[mem["a"], mem["b"]], weights=weights,
                density=density, epsilon=epsilon, scale=1.2, rescale="l1", weights_at="before")
    for name, tensor in got.state.items():
        g = tensor_generator(SEED, name)
        expected = mk.gta(mem["base"].state[name], [mem["a"].state[name], mem["b"].state[name]], weights=weights,
                          sparsify=lambda d, i, g=g: mk.della_magprune(d, density[i], epsilon[i], True, g),
                          consensus="sum", normalize=True, lambda_=1.2)
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_declared_ties_with_rescale_is_mergekit_ties(ckpts: dict[str, Path], tmp_path: Path) -> None:
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    got = merge("ties", _ctx(tmp_path), base=mem["base"], models=[mem["a"], mem["b"]], density=[0.3, 0.7],
                weights=[1.0, 0.6], trim="tensor", weights_at="before", rescale="l1")
    for name, tensor in got.state.items():
        expected = mk.gta(mem["base"].state[name], [mem["a"].state[name], mem["b"].state[name]], weights=[1.0, 0.6],
                          sparsify=lambda d, i: mk.magnitude(d, [0.3, 0.7][i], True),
                          consensus="sum", normalize=True, lambda_=1.0)
        torch.testing.assert_close(tensor, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_parameters_fail_with_the_kernels_message(ckpts: dict[str, Path], tmp_path: Path) -> None:
    mem = {k: in_memory(p) for k, p in ckpts.items()}
    with pytest.raises(StepError, match=r"density ± epsilon must lie inside \(0, 1\)"):
        merge("della", _ctx(tmp_path), base=mem["base"], models=[mem["a"]], density=0.1, epsilon=0.2)
    with pytest.raises(StepError, match="nuslerp merges exactly 2 models"):
        merge("nuslerp", _ctx(tmp_path), models=[mem["a"]])
    with pytest.raises(StepError, match="arcee_fusion needs a base model"):
        merge("arcee_fusion", _ctx(tmp_path), models=[mem["a"]])


def _check(tmp_path: Path, call: str) -> Any:
    from mlspec.check.lower import lower
    from mlspec.syntax.parser import parse

    spec = (
        'study "s" (seed = 0)\n'
        "model init = mlp(in = 4, hidden = [8], out = 2)\n"
        "model x = mlp(in = 4, hidden = [8], out = 2)\n"
        "model y = mlp(in = 4, hidden = [8], out = 2)\n"
        f"merge m = {call}\n"
    )
    return lower(parse(spec, file=str(tmp_path / "s.merge")))


def test_specs_check_the_new_methods(tmp_path: Path) -> None:
    lowered = _check(tmp_path, "della(base = init, models = [x, y], density = [0.3, by_name(mlp = 0.5, default = 0.6)], "
                               "epsilon = 0.1)")
    step = next(s for s in lowered.steps.values() if s.op == "della")
    assert step.params["density"] == [0.3, [{"filter": "mlp", "value": 0.5}, {"filter": None, "value": 0.6}]]
    _check(tmp_path, "ramplus_tl(base = init, models = [x, y], r = [0, 0.5])")  # a gradient over depth
    problems = {
        "nearswap(base = init, models = [x], t = -1)": "t",
        "della(base = init, models = [x, y], epsilon = 0.7)": "epsilon",
        "sce(models = [x, y])": "sce needs 'base'",
        "arcee_fusion(base = init, models = [x, y])": "exactly 1 model",
        "della(base = init, models = [x, y], density = [0.5, 0.5, 0.5])": "one value per model",
    }
    for call, message in problems.items():
        with pytest.raises(SpecError, match=message):
            _check(tmp_path, call)
