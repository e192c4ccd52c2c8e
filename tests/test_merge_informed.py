"""Data-informed merges: Fisher estimate and Gram matrices against naive oracles, greedy soups."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from mlspec.ops.merge import informed as I
from mlspec.ops.merge import kernels as K
from mlspec.ops.merge import specs as S
from mlspec.ops.models.builders import build, build_module
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model

ARCH = {"type": "mlp", "in_features": 4, "hidden": [6], "out_features": 3, "norm": "none"}


def ctx() -> StepContext:
    return StepContext(name="m", key="k", seed=0, device="cpu", out_dir=Path("/tmp"), work_dir=Path("/tmp"))


def mlp(seed: int) -> Model:
    torch.manual_seed(seed)
    return Model(arch=dict(ARCH), state=dict(build(ARCH).state_dict()))


def data(seed: int = 0, n: int = 40) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Dataset({"x_train": x, "y_train": y, "x_test": x, "y_test": y})


def test_diagonal_fisher_matches_per_example_loop() -> None:
    net = build_module(mlp(0))
    x = data().split("train")[0][:7]
    got = I.diagonal_fisher(net, x, batch_size=3)
    expected = {k: torch.zeros_like(v) for k, v in net.named_parameters()}
    for xi in x:
        probs = F.softmax(net(xi[None]), -1)[0].detach()
        for c in range(3):
            net.zero_grad()
            F.log_softmax(net(xi[None]), -1)[0, c].backward()
            for k, p in net.named_parameters():
                expected[k] += probs[c] * p.grad.pow(2)  # type: ignore[union-attr]
    for k in expected:
        assert torch.allclose(got[k], expected[k] / len(x), atol=1e-6)


def test_fisher_merge_applies_the_kernel_per_parameter() -> None:
    a, b = mlp(0), mlp(1)
    ds = [data(0), data(1)]
    out = I.fisher(ctx(), S.FisherParams(samples=40), models=[a, b], on=ds)
    fa = I.diagonal_fisher(build_module(a), ds[0].split("train")[0][torch.randperm(40, generator=ctx().generator())])
    fb = I.diagonal_fisher(build_module(b), ds[1].split("train")[0][torch.randperm(40, generator=ctx().generator())])
    name = "layers.0.weight"
    expected = K.fisher(None, [a.state[name], b.state[name]], fishers=[fa[name], fb[name]], eps=1e-6)
    assert torch.allclose(out.state[name], expected, atol=1e-6)


def test_input_grams_are_mean_outer_products_of_layer_inputs() -> None:
    net = build_module(mlp(0))
    x = data().split("train")[0]
    grams = I.input_grams(net, x)
    assert set(grams) == {"layers.0.weight", "layers.1.weight"}
    assert torch.allclose(grams["layers.0.weight"], (x.double().T @ x.double()) / len(x))
    hidden = torch.relu(net.layers[0](x)).double()
    assert torch.allclose(grams["layers.1.weight"], hidden.T @ hidden / len(x), atol=1e-6)


def test_regmean_of_one_dataset_copies_reproduces_the_model() -> None:
    a = mlp(0)
    out = I.regmean(ctx(), S.RegMeanParams(alpha=1.0, samples=40), models=[a, a], on=data())
    assert all(torch.allclose(out.state[k], a.state[k], atol=1e-5) for k in a.state)


def test_regmean_reduces_layer_output_error_against_average() -> None:
    a, b = mlp(0), mlp(1)
    ds = [data(0), data(1)]
    out = I.regmean(ctx(), S.RegMeanParams(alpha=1.0, samples=40), models=[a, b], on=ds)
    avg = K.linear(None, [a.state["layers.0.weight"], b.state["layers.0.weight"]])

    def err(w: torch.Tensor) -> float:
        return sum(float((d.split("train")[0] @ (w - m.state["layers.0.weight"]).T).pow(2).sum())
                   for m, d in zip([a, b], ds))

    assert err(out.state["layers.0.weight"]) < err(avg)


def test_greedy_soup_skips_an_ingredient_that_hurts() -> None:
    from mlspec.ops.models.specs import TrainParams
    from mlspec.ops.models.train import fit

    ds = data(0, 200)
    x, y = ds.split("train")
    good = []
    for seed in (0, 1):
        net = build_module(mlp(0))
        fit(net, x, y, TrainParams(epochs=30, lr=1e-2), generator=torch.Generator().manual_seed(seed))
        good.append(Model(arch=dict(ARCH), state=dict(net.state_dict())))
    junk = mlp(7)
    junk.state = {k: v * 20 for k, v in junk.state.items()}
    out = I.soup(ctx(), S.SoupParams(greedy=True), models=[junk, *good], on=ds)
    assert "models[0]" not in out.info["soup"]["ingredients"]
    assert out.info["soup"]["held_out_accuracy"] >= max(s["accuracy"] for s in out.info["soup"]["steps"][:1])
    uniform = I.soup(ctx(), S.SoupParams(), models=[junk, *good])
    assert torch.allclose(uniform.state["layers.0.bias"], sum(m.state["layers.0.bias"] for m in [junk, *good]) / 3)
