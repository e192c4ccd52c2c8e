"""Task transforms and what travels with a task: permuted features, per-task heads, backdoors (the
`poison` operator and the `attack_success` metric), and sweep slices such as `ft[1 .. n]`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mlspec
from mlspec.errors import SpecError, StepError
from mlspec.ops.data.specs import PermuteFeaturesParams, PoisonParams
from mlspec.ops.data.transforms import permute_features, poison, stamp, with_head
from mlspec.ops.evaluation import evaluate, evaluate_module
from mlspec.ops.models.builders import build_module
from mlspec.ops.scoring import EvaluateParams
from mlspec.registry import NoParams
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model


def ctx(seed: int = 0, **names: object) -> StepContext:
    return StepContext(name="t", key="k", seed=seed, device="cpu", out_dir=Path("/tmp"), work_dir=Path("/tmp"),
                       input_names=names)


def images(n: int = 40, seed: int = 0) -> Dataset:
    """n random 4x4 'images' (16 features) with labels cycling 0..3, the same samples in both splits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 16, generator=g) * 0.5
    y = torch.arange(n) % 4
    return Dataset({"x_train": x, "y_train": y, "x_test": x.clone(), "y_test": y.clone()}, meta={"num_classes": 4})


def mlp(hidden: list[int], seed: int, out: int = 4) -> Model:
    from mlspec.ops.models.builders import build

    arch = {"type": "mlp", "in_features": 16, "hidden": hidden, "out_features": out, "norm": "none"}
    torch.manual_seed(seed)
    return Model(arch=arch, state=dict(build(arch).state_dict()))


def test_permute_features_is_one_fixed_permutation_per_seed() -> None:
    d = images()
    a = permute_features(ctx(), PermuteFeaturesParams(seed=1), data=d)
    again = permute_features(ctx(seed=99), PermuteFeaturesParams(seed=1), data=d)
    other = permute_features(ctx(), PermuteFeaturesParams(seed=2), data=d)
    assert torch.equal(a["x_train"], again["x_train"])  # the seed parameter, not the step seed
    assert not torch.equal(a["x_train"], other["x_train"])
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["x_train"], d["x_train"][:, order]) and torch.equal(a["x_test"], d["x_test"][:, order])
    assert torch.equal(a["y_train"], d["y_train"])
    trigger = Dataset({**d.tensors, "x_trigger": d["x_test"][:5], "y_trigger": d["y_test"][:5]}, meta=d.meta)
    permuted = permute_features(ctx(), PermuteFeaturesParams(seed=1), data=trigger)
    assert torch.equal(permuted["x_trigger"], d["x_test"][:5, order])  # a poisoned set's trigger inputs too


def test_a_task_carries_a_head_and_evaluation_uses_it() -> None:
    body, donor = mlp([8], seed=0), mlp([8], seed=1)
    task = with_head(ctx(model="donor"), NoParams(), data=images(), model=donor)
    assert task.meta["head"] == {"prefix": "layers.1.", "from": "donor", "arch": "mlp"}
    # by hand: the body's first layer, the donor's output layer
    state = dict(body.state, **{k: v for k, v in donor.state.items() if k.startswith("layers.1.")})
    x, y = task.split("test")
    expected = evaluate_module(build_module(Model(body.arch, state)), x, y)
    got = evaluate(ctx(model="body", on="task"), EvaluateParams(), model=body, on=task)
    assert got["accuracy"] == expected["accuracy"] and got["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    plain = evaluate(ctx(), EvaluateParams(), model=body, on=images())
    assert plain["loss"] != pytest.approx(got["loss"])  # the head made a difference
    with pytest.raises(StepError, match="does not fit this model"):
        evaluate(ctx(), EvaluateParams(), model=_wide(), on=task)


def _wide() -> Model:
    return mlp([12], seed=2)  # a 12-wide hidden layer: an 8-wide head does not fit


def test_poison_stamps_a_share_of_the_other_classes_and_keeps_the_test_split_clean() -> None:
    d = images(n=400)
    params = PoisonParams(target=0, rate=0.25, patch=2, value=1.0)
    bad = poison(ctx(seed=3), params, data=d)
    again = poison(ctx(seed=3), params, data=d)
    other = poison(ctx(seed=4), params, data=d)
    assert torch.equal(bad["x_train"], again["x_train"]) and not torch.equal(bad["x_train"], other["x_train"])
    changed = (bad["x_train"] != d["x_train"]).any(1)
    assert int(changed.sum()) == round(0.25 * 300) == bad.meta["backdoor"]["poisoned"]  # 300 of 400 are not 0
    assert bool((d["y_train"][changed] != 0).all()) and bool((bad["y_train"][changed] == 0).all())
    assert torch.equal(bad["y_train"][~changed], d["y_train"][~changed])
    corner = bad["x_train"][changed].reshape(-1, 4, 4)[:, 2:, 2:]
    assert bool((corner == 1.0).all())
    rest = bad["x_train"][changed].reshape(-1, 4, 4).clone()
    rest[:, 2:, 2:] = 0
    original = d["x_train"][changed].reshape(-1, 4, 4).clone()
    original[:, 2:, 2:] = 0
    assert torch.equal(rest, original)  # only the patch changed
    assert torch.equal(bad["x_test"], d["x_test"])
    keep = d["y_test"] != 0
    assert torch.equal(bad["x_trigger"], stamp(d["x_test"][keep], params)) and torch.equal(bad["y_trigger"], d["y_test"][keep])
    with pytest.raises(StepError, match="not a label"):
        poison(ctx(), PoisonParams(target=7), data=d)


def test_attack_success_is_the_share_of_triggered_inputs_sent_to_the_target() -> None:
    """A linear model that answers 0 exactly when feature 0 exceeds 0.5: of four triggered inputs,
    two have it set, so attack success is 1/2 (hand-computed), whatever the clean accuracy."""
    x = torch.zeros(4, 16)
    x[:2, 0] = 1.0
    d = Dataset({"x_train": x, "y_train": torch.tensor([1, 2, 3, 1]), "x_test": x, "y_test": torch.tensor([1, 2, 3, 1]),
                 "x_trigger": x, "y_trigger": torch.tensor([1, 2, 3, 1])},
                meta={"backdoor": {"target": 0}, "num_classes": 4})
    w = torch.zeros(4, 16)
    w[0, 0] = 10.0
    model = Model({"type": "mlp", "in_features": 16, "hidden": [], "out_features": 4, "norm": "none"},
                  {"layers.0.weight": w, "layers.0.bias": torch.tensor([-5.0, 0.0, 0.0, 0.0])})
    out = evaluate(ctx(), EvaluateParams(metrics=["accuracy", "attack_success"]), model=model, on=d)
    assert out["attack_success"] == 0.5
    with pytest.raises(StepError, match="poison"):
        evaluate(ctx(), EvaluateParams(metrics=["attack_success"]), model=model, on=images())


SLICES = """
study "s" (seed = 0)
data d = digits()
data t[i] = d.permute_features(seed = i) for i in 1 .. 3
model init = mlp(in = 64, hidden = [8], out = 10)
model ft[i] = train(init, on = t[i], epochs = 1) for i in 1 .. 3
data headed[i] = t[i].with_head(ft[i]) for i in 1 .. 3
merge avg[n] = average(models = ft[1 .. n]) for n in 2 .. 3
merge with_init[n] = average(models = [init, ft[1 .. n]]) for n in 2 .. 3
merge f[n] = fisher(models = ft[1 .. n]) on t[1 .. n] for n in 2 .. 3
evaluate [avg] on headed metrics [accuracy]
"""


def test_a_sweep_slice_names_its_members_in_order() -> None:
    steps = {s.name: s for s in mlspec.loads(SLICES, file="s.merge").plan.steps}
    assert steps["avg[3]"].inputs["models"] == ["ft[1]", "ft[2]", "ft[3]"]
    assert steps["with_init[2]"].inputs["models"] == ["init", "ft[1]", "ft[2]"]
    assert steps["f[2]"].inputs["on"] == ["t[1]", "t[2]"]
    assert {n for n in steps if n.startswith("evaluate")} == {
        f"evaluate avg[{n}] on headed[{i}]" for n in (2, 3) for i in (1, 2, 3)}


@pytest.mark.parametrize("line, message", [
    ("merge bad = permute(ft[1 .. 2], to = init)", "names 2 members of a sweep"),
    ("merge bad = average(models = ft[1 .. 4])", r"has no member \[4\]"),
])
def test_a_sweep_slice_where_one_model_is_expected_is_a_spec_error(line: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        mlspec.loads(SLICES + line + "\n", file="s.merge").check()
