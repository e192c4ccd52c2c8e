"""Model-level merge operators: registration, layout checks, statistics and the merge laws."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec import registry
from mlspec.errors import StepError
from mlspec.ops.merge.apply import merge
from mlspec.ops.models.builders import build, build_module
from mlspec.run.context import StepContext
from mlspec.values import Model

ARCH = {"type": "mlp", "in_features": 4, "hidden": [5], "out_features": 3, "norm": "none"}


def ctx(tmp: Path = Path("/tmp"), seed: int = 0) -> StepContext:
    return StepContext(name="m", key="k", seed=seed, device="cpu", out_dir=tmp, work_dir=tmp)


def mlp(seed: int, arch: dict = ARCH) -> Model:
    torch.manual_seed(seed)
    return Model(arch=dict(arch), state={k: v.double() for k, v in build(arch).state_dict().items()})


def test_merge_operators_are_registered() -> None:
    for name in ["average", "task_arithmetic", "slerp", "spherical_mean", "ties", "dare", "breadcrumbs", "model_stock"]:
        spec = registry.get(name)
        assert spec is not None and spec.output is registry.Kind.MODEL
        spec.load()  # the implementation path resolves


def test_average_of_copies_is_the_model() -> None:
    m = mlp(0)
    out = merge("average", ctx(), weights=[0.2, 0.8], models=[m, m])
    assert all(torch.allclose(out.state[k], m.state[k]) for k in m.state)
    assert out.arch == m.arch and out.info["merge"]["method"] == "average"


def test_average_weights_and_module_still_runs() -> None:
    a, b = mlp(0), mlp(1)
    out = merge("average", ctx(), weights=[3, 1], models=[a, b])
    for k in a.state:
        assert torch.allclose(out.state[k], (3 * a.state[k] + b.state[k]) / 4)
    assert build_module(out)(torch.randn(2, 4)).shape == (2, 3)


def test_task_arithmetic_signed_scales_and_statistics() -> None:
    base, a, b = mlp(0), mlp(1), mlp(2)
    out = merge("task_arithmetic", ctx(), scale=[1.0, -0.5], base=base, models=[a, b])
    for k in base.state:
        expected = base.state[k] + (a.state[k] - base.state[k]) - 0.5 * (b.state[k] - base.state[k])
        assert torch.allclose(out.state[k], expected)
    stats = out.info["merge"]
    assert stats["params"] == {"scale": [1.0, -0.5]}
    total = stats["total"]
    moved = torch.cat([(out.state[k] - base.state[k]).flatten() for k in base.state])
    assert total["distance_from_base"] == pytest.approx(moved.norm().item())
    assert 0.0 < total["sign_conflict"] < 1.0 and total["sparsity"] == 0.0
    assert set(stats["tensors"]) == set(base.state)


def test_ties_statistics_report_sparsity() -> None:
    base, a, b = mlp(0), mlp(1), mlp(2)
    out = merge("ties", ctx(), density=0.1, base=base, models=[a, b])
    assert out.info["merge"]["total"]["sparsity"] > 0.75


@settings(max_examples=10, deadline=None)
@given(st.floats(-1.5, 1.5))
def test_ties_density_one_single_model_equals_task_arithmetic(scale: float) -> None:
    base, a = mlp(0), mlp(1)
    ties = merge("ties", ctx(), density=1.0, scale=scale, base=base, models=[a])
    ta = merge("task_arithmetic", ctx(), scale=scale, base=base, models=[a])
    assert all(torch.allclose(ties.state[k], ta.state[k]) for k in base.state)


def test_ties_trim_scope_model_vs_tensor_differ() -> None:
    base, a, b = mlp(0), mlp(1), mlp(2)
    by_model = merge("ties", ctx(), density=0.3, trim="model", base=base, models=[a, b])
    by_tensor = merge("ties", ctx(), density=0.3, trim="tensor", base=base, models=[a, b])
    assert any(not torch.equal(by_model.state[k], by_tensor.state[k]) for k in base.state)


def test_dare_is_seeded_by_the_step() -> None:
    base, a = mlp(0), mlp(1)
    def run(seed):
        return merge("dare", ctx(seed=seed), density=0.5, base=base, models=[a])
    same, other = run(1), run(2)
    assert all(torch.equal(same.state[k], run(1).state[k]) for k in base.state)
    assert any(not torch.equal(same.state[k], other.state[k]) for k in base.state)


@pytest.mark.parametrize("op, params, inputs", [
    ("slerp", {"t": 0.3}, ("a", "b")),
    ("spherical_mean", {}, ("models",)),
    ("breadcrumbs", {}, ("base", "models")),
    ("model_stock", {"mean": "angle"}, ("base", "models")),
])
def test_other_merges_run_on_models(op, params, inputs) -> None:  # type: ignore[no-untyped-def]
    base, a, b = mlp(0), mlp(1), mlp(2)
    given = {"a": a, "b": b, "base": base, "models": [a, b]}
    out = merge(op, ctx(), **params, **{k: given[k] for k in inputs})
    assert out.state.keys() == a.state.keys() and out.info["merge"]["total"]["numel"] > 0


def test_shape_mismatch_names_the_tensor_and_both_shapes() -> None:
    a = mlp(0)
    b = mlp(1)
    b.state["layers.0.weight"] = torch.zeros(6, 4, dtype=torch.float64)
    with pytest.raises(StepError, match=r"'layers.0.weight' has shape \(6, 4\) in 'models\[1\]' but \(5, 4\)"):
        merge("average", ctx(), models=[a, b])


def test_architecture_mismatch_is_an_error() -> None:
    wide = mlp(1, {**ARCH, "hidden": [7]})
    with pytest.raises(StepError, match="architectures differ"):
        merge("average", ctx(), models=[mlp(0), wide])


def test_wrong_number_of_scales_is_an_error() -> None:
    with pytest.raises(StepError, match=r"scale needs one value per model \(2\), not 3"):
        merge("task_arithmetic", ctx(), scale=[1, 2, 3], base=mlp(0), models=[mlp(1), mlp(2)])


def test_model_stock_needs_two_models() -> None:
    with pytest.raises(StepError, match=r"model_stock merges at least 2 models \(not 1\)"):
        merge("model_stock", ctx(), base=mlp(0), models=[mlp(1)])


def test_integer_buffers_are_copied_not_merged() -> None:
    arch = {**ARCH, "norm": "batchnorm"}
    a, b = mlp(0, arch), mlp(1, arch)
    a.state["norms.0.num_batches_tracked"] = torch.tensor(5)
    b.state["norms.0.num_batches_tracked"] = torch.tensor(9)
    out = merge("average", ctx(), models=[a, b])
    assert out.state["norms.0.num_batches_tracked"].item() == 5
