"""Numeric oracle tests for the core operators: digits, classes, mlp, train, evaluate, interpolate, export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlspec.errors import StepError
from mlspec.ops.data.digits import classes, digits
from mlspec.ops.data.specs import ClassesParams, DigitsParams
from mlspec.ops.evaluation import evaluate, evaluate_module
from mlspec.ops.landscape.interpolate import barriers, interpolate, lerp_state
from mlspec.ops.models.builders import build_module
from mlspec.ops.models.export import export
from mlspec.ops.models.specs import ExportParams, MLPParams, TrainParams
from mlspec.ops.models.train import mlp, train
from mlspec.ops.scoring import EvaluateParams, InterpolateParams
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model


def ctx(tmp_path: Path, seed: int = 0, **names: str) -> StepContext:
    return StepContext(name="t", key="k", seed=seed, device="cpu", out_dir=tmp_path / "out",
                       work_dir=tmp_path / "work", input_names=names)


def linear_model(weight: list[list[float]], bias: list[float]) -> Model:
    w = torch.tensor(weight, dtype=torch.float32)
    return Model(arch={"type": "mlp", "in_features": w.shape[1], "hidden": [], "out_features": w.shape[0],
                       "norm": "none"},
                 state={"layers.0.weight": w, "layers.0.bias": torch.tensor(bias, dtype=torch.float32)})


def toy_data() -> Dataset:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    return Dataset({"x_train": x, "y_train": y, "x_test": x, "y_test": y})


def test_digits_split_is_stratified_deterministic_and_scaled(tmp_path: Path) -> None:
    d = digits(ctx(tmp_path), DigitsParams(test_fraction=0.25))
    assert d["x_train"].shape == (1347, 64) and d["x_test"].shape == (450, 64)
    assert float(d["x_train"].max()) == 1.0 and float(d["x_train"].min()) == 0.0
    again = digits(ctx(tmp_path, seed=99), DigitsParams(test_fraction=0.25))
    assert torch.equal(d["y_test"], again["y_test"])  # the split ignores the step seed
    test_counts = torch.bincount(d["y_test"], minlength=10)
    all_counts = test_counts + torch.bincount(d["y_train"], minlength=10)
    assert torch.all((test_counts - all_counts * 0.25).abs() <= 1)  # stratified: a quarter of each class


def test_a_validation_split_is_carved_from_training_and_scored_beside_the_test_split(tmp_path: Path) -> None:
    plain = digits(ctx(tmp_path), DigitsParams(test_fraction=0.25))
    d = digits(ctx(tmp_path), DigitsParams(test_fraction=0.25, validation_fraction=0.1))
    assert torch.equal(d["x_test"], plain["x_test"])  # the test split does not move
    assert d["x_val"].shape == (135, 64) and d["x_train"].shape == (1347 - 135, 64)
    rows = {tuple(r) for r in plain["x_train"].tolist()}
    assert len(rows & {tuple(r) for r in d["x_val"].tolist()}) == len({tuple(r) for r in d["x_val"].tolist()})
    assert not {tuple(r) for r in d["x_val"].tolist()} & {tuple(r) for r in d["x_train"].tolist()}
    low = classes(ctx(tmp_path), ClassesParams(classes=[0, 1, 2, 3, 4]), data=d)
    assert set(low["y_val"].tolist()) == {0, 1, 2, 3, 4} and len(low["y_val"]) == int((d["y_val"] < 5).sum())
    model = Model(arch={"type": "mlp", "in_features": 64, "hidden": [], "out_features": 10},
                  state={"layers.0.weight": torch.zeros(10, 64), "layers.0.bias": torch.arange(10.0)})
    out = evaluate(ctx(tmp_path, model="m", on="d"), EvaluateParams(), model=model, on=d).data
    # Every prediction is class 9 (the largest bias): accuracy is the share of nines in each split.
    assert out["accuracy"] == pytest.approx(float((d["y_test"] == 9).float().mean()))
    assert out["validation"]["accuracy"] == pytest.approx(float((d["y_val"] == 9).float().mean()))
    assert out["validation"]["n"] == 135


def test_classes_keeps_only_requested_labels(tmp_path: Path) -> None:
    d = digits(ctx(tmp_path), DigitsParams())
    low = classes(ctx(tmp_path), ClassesParams(classes=[0, 1, 2, 3, 4]), data=d)
    assert set(low["y_train"].tolist()) == {0, 1, 2, 3, 4}
    assert len(low["y_train"]) == int((d["y_train"] < 5).sum())
    relabelled = classes(ctx(tmp_path), ClassesParams(classes=[7, 3], relabel=True), data=d)
    assert set(relabelled["y_test"].tolist()) == {0, 1}
    assert int((relabelled["y_test"] == 1).sum()) == int((d["y_test"] == 7).sum())
    with pytest.raises(StepError, match="class 11 does not occur"):
        classes(ctx(tmp_path), ClassesParams(classes=[11]), data=d)


def test_mlp_initialisation_follows_the_seed(tmp_path: Path) -> None:
    params = MLPParams.model_validate({"in": 64, "hidden": [8, 4], "out": 10})
    m1, m2 = mlp(ctx(tmp_path, seed=1), params), mlp(ctx(tmp_path, seed=1), params)
    m3 = mlp(ctx(tmp_path, seed=2), params)
    assert [tuple(v.shape) for v in m1.state.values()] == [(8, 64), (8,), (4, 8), (4,), (10, 4), (10,)]
    assert all(torch.equal(m1.state[k], m2.state[k]) for k in m1.state)
    assert not torch.equal(m1.state["layers.0.weight"], m3.state["layers.0.weight"])


def test_evaluate_matches_hand_computed_loss_and_accuracy(tmp_path: Path) -> None:
    # logits: x1 -> [1, 0], x2 -> [0, 1], x3 -> [1, 1]  (ties break to class 0)
    model = linear_model([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    out = evaluate(ctx(tmp_path, model="m", on="d"), EvaluateParams(metrics=["accuracy", "loss", "error"]),
                   model=model, on=toy_data())
    l_right = math.log(1 + math.exp(-1.0))  # CE when the right logit leads by 1
    expected_loss = (l_right + l_right + math.log(2.0)) / 3
    assert out["loss"] == pytest.approx(expected_loss, rel=1e-6)
    assert out["accuracy"] == pytest.approx(2 / 3) and out["error"] == pytest.approx(1 / 3)
    assert out["model"] == "m" and out["dataset"] == "d" and out["n"] == 3


def test_evaluate_module_is_batch_size_independent() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    x, y = torch.randn(37, 5), torch.randint(0, 3, (37,))
    a = evaluate_module(net, x, y, batch_size=4)
    b = evaluate_module(net, x, y, batch_size=1000)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["accuracy"] == b["accuracy"]


def test_one_sgd_step_matches_the_gradient_by_hand(tmp_path: Path) -> None:
    """One epoch, one full batch, plain SGD: w' = w − lr·∂CE/∂w, with ∂CE/∂logits = softmax − onehot."""
    model = linear_model([[0.5, -0.5], [0.0, 0.25]], [0.1, -0.1])
    data = toy_data()
    params = TrainParams(epochs=1, lr=0.3, batch=3, optimizer="sgd", momentum=0.0)
    trained = train(ctx(tmp_path), params, model=model, on=data)
    x, y = data.split("train")
    w, b = model.state["layers.0.weight"].double(), model.state["layers.0.bias"].double()
    p = torch.softmax(x.double() @ w.T + b, dim=1)
    g = (p - torch.nn.functional.one_hot(y, 2).double()) / len(y)
    torch.testing.assert_close(trained.state["layers.0.weight"].double(), w - 0.3 * g.T @ x.double(),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trained.state["layers.0.bias"].double(), b - 0.3 * g.sum(0), rtol=1e-5, atol=1e-6)
    assert len(trained.info["train_loss"]) == 1


def test_training_is_deterministic_per_seed_and_learns(tmp_path: Path) -> None:
    d = digits(ctx(tmp_path), DigitsParams())
    init = mlp(ctx(tmp_path, seed=0), MLPParams.model_validate({"in": 64, "hidden": [32], "out": 10}))
    params = TrainParams(epochs=3, lr=3e-3)
    one = train(ctx(tmp_path, seed=5), params, model=init, on=d)
    two = train(ctx(tmp_path, seed=5), params, model=init, on=d)
    other = train(ctx(tmp_path, seed=6), params, model=init, on=d)
    assert all(torch.equal(one.state[k], two.state[k]) for k in one.state)
    assert not torch.equal(one.state["layers.0.weight"], other.state["layers.0.weight"])
    assert one.info["train_loss"][-1] < one.info["train_loss"][0]
    x, y = d.split("test")
    assert evaluate_module(build_module(one), x, y)["accuracy"] > 0.8


def test_barrier_definitions_by_hand() -> None:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    values = [1.0, 2.0, 3.5, 3.2, 3.0]
    b = barriers(alphas, values)
    assert b["max_minus_mean"] == pytest.approx(3.5 - 2.0)
    # linear interpolation of the ends: 1.0, 1.5, 2.0, 2.5, 3.0 -> gaps 0, .5, 1.5, .7, 0
    assert b["max_minus_linear"] == pytest.approx(1.5)


def test_interpolate_endpoints_and_midpoint(tmp_path: Path) -> None:
    a = linear_model([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    b = linear_model([[0.0, 1.0], [1.0, 0.0]], [0.0, 0.0])
    curve = interpolate(ctx(tmp_path, a="a", b="b", on="d"), InterpolateParams(steps=3), a=a, b=b, on=toy_data())
    assert curve["alphas"] == [0.0, 0.5, 1.0]
    assert curve["accuracy"][0] == pytest.approx(2 / 3) and curve["accuracy"][2] == 0.0  # b swaps the classes
    # at α = ½ every logit is equal: loss = log 2 for every sample, argmax ties -> class 0
    assert curve["loss"][1] == pytest.approx(math.log(2.0), rel=1e-6)
    assert curve["accuracy"][1] == pytest.approx(1 / 3)
    mid = lerp_state(a.state, b.state, 0.5)
    assert torch.equal(mid["layers.0.weight"], torch.full((2, 2), 0.5))
    expected = barriers(curve["alphas"], curve["loss"])
    assert curve["barriers"]["loss_max_minus_mean"] == pytest.approx(expected["max_minus_mean"])


def test_interpolate_refuses_mismatched_models(tmp_path: Path) -> None:
    a = linear_model([[1.0, 0.0]], [0.0])
    b = linear_model([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    with pytest.raises(StepError, match="architectures|differs"):
        interpolate(ctx(tmp_path), InterpolateParams(steps=3), a=a, b=b, on=toy_data())


def test_export_round_trips_weights(tmp_path: Path) -> None:
    model = linear_model([[1.0, 2.0], [3.0, 4.0]], [5.0, 6.0])
    rec = export(ctx(tmp_path), ExportParams(path="sub/m.safetensors"), model=model)
    loaded = load_file(str(tmp_path / "out" / "sub" / "m.safetensors"))
    assert torch.equal(loaded["layers.0.weight"], model.state["layers.0.weight"])
    assert rec["tensors"] == 2 and len(rec["sha256"]) == 64
    with pytest.raises(StepError, match="outside the output directory"):
        export(ctx(tmp_path), ExportParams(path="../m.safetensors"), model=model)


def test_diverging_training_is_a_clear_error(tmp_path: Path) -> None:
    d = digits(ctx(tmp_path), DigitsParams())
    init = mlp(ctx(tmp_path), MLPParams.model_validate({"in": 64, "hidden": [32], "out": 10}))
    with pytest.raises(StepError, match="training diverged in epoch .*lower the learning rate"):
        train(ctx(tmp_path), TrainParams(epochs=3, lr=1e12, optimizer="sgd"), model=init, on=d)


def test_a_model_of_the_wrong_input_width_is_a_clear_error(tmp_path: Path) -> None:
    d = digits(ctx(tmp_path), DigitsParams())
    narrow = mlp(ctx(tmp_path), MLPParams.model_validate({"in": 10, "hidden": [4], "out": 10}))
    with pytest.raises(StepError, match="takes 10 input features but 'd' has 64 per sample; set `in = 64`"):
        train(ctx(tmp_path, on="d"), TrainParams(epochs=1), model=narrow, on=d)
    with pytest.raises(StepError, match="takes 10 input features"):
        evaluate(ctx(tmp_path, on="d"), EvaluateParams(), model=narrow, on=d)
    few = mlp(ctx(tmp_path), MLPParams.model_validate({"in": 64, "hidden": [4], "out": 5}))
    with pytest.raises(StepError, match="has 5 outputs but 'd' has label 9; set `out = 10`"):
        train(ctx(tmp_path, on="d"), TrainParams(epochs=1), model=few, on=d)
