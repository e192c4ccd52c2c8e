"""Loss-landscape analyses: plane geometry, filter normalisation, curves, instability, task vectors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlspec.errors import StepError
from mlspec.ops.landscape import geometry as G
from mlspec.ops.landscape import paths as P
from mlspec.ops.landscape import specs as S
from mlspec.ops.landscape.vectors import task_vectors
from mlspec.ops.models.builders import build, build_module
from mlspec.ops.models.specs import TrainParams
from mlspec.ops.models.train import fit
from mlspec.run.context import StepContext
from mlspec.values import Dataset, Model

ARCH = {"type": "mlp", "in_features": 4, "hidden": [8], "out_features": 3, "norm": "none"}


def ctx(seed: int = 0) -> StepContext:
    return StepContext(name="s", key="k", seed=seed, device="cpu", out_dir=Path("/tmp"), work_dir=Path("/tmp"))


def mlp(seed: int) -> Model:
    torch.manual_seed(seed)
    return Model(arch=dict(ARCH), state=dict(build(ARCH).state_dict()))


def data(n: int = 120) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Dataset({"x_train": x, "y_train": y, "x_test": x, "y_test": y})


def trained(seed: int, epochs: int = 40) -> Model:
    m = mlp(seed)
    net = build_module(m)
    x, y = data().split("train")
    fit(net, x, y, TrainParams(epochs=epochs, lr=1e-2), generator=torch.Generator().manual_seed(seed))
    return m.with_state({k: v.detach().clone() for k, v in net.state_dict().items()})


def test_flatten_unflatten_round_trip() -> None:
    m = mlp(0)
    back = G.unflatten(G.flatten(m.state), m.state)
    assert all(torch.equal(back[k], m.state[k]) for k in m.state)


def test_plane_places_the_three_models_at_their_points() -> None:
    a, b, c = mlp(0), mlp(1), mlp(2)
    rec = G.plane(ctx(), S.PlaneParams(steps=3, margin=0.0), a=a, b=b, c=c, on=data()).data
    wa, wb, wc = (G.flatten(m.state) for m in (a, b, c))
    pts = {p["name"]: (p["x"], p["y"]) for p in rec["points"]}
    assert pts["a"] == (0.0, 0.0)
    assert pts["b"][0] == pytest.approx(float((wb - wa).norm()))
    assert math.hypot(*pts["c"]) == pytest.approx(float((wc - wa).norm()))
    assert len(rec["loss"]) == 3 and len(rec["loss"][0]) == 3
    # the grid's corner (x = 0 or min, y = 0) with margin 0 and c.x ≥ 0 is model a itself
    from mlspec.ops.evaluation import evaluate_state

    if pts["c"][0] >= 0:
        assert rec["loss"][0][0] == pytest.approx(evaluate_state(a, a.state, data())["loss"], rel=1e-5)


def test_filter_normalised_direction_matches_filter_norms() -> None:
    m = mlp(0)
    d = G.unflatten(G.filter_normalised(m.state, torch.Generator().manual_seed(1)), m.state)
    w = m.state["layers.0.weight"]
    assert torch.allclose(d["layers.0.weight"].norm(dim=1), w.norm(dim=1), atol=1e-6)
    assert torch.count_nonzero(d["layers.0.bias"]) == 0


def test_surface_centre_is_the_model() -> None:
    m = trained(0, epochs=10)
    rec = G.surface(ctx(), S.SurfaceParams(steps=3, extent=0.5), model=m, on=data()).data
    from mlspec.ops.evaluation import evaluate_state

    assert rec["loss"][1][1] == pytest.approx(evaluate_state(m, m.state, data())["loss"], rel=1e-5)


@pytest.mark.parametrize("kind", ["bezier", "polychain"])
def test_curve_passes_through_its_ends_and_bend(kind: str) -> None:
    a, b = mlp(0), mlp(1)
    curve = P.Curve(a, b, kind)
    for name in curve.names:
        assert torch.allclose(curve.point(0.0)[name], a.state[name])
        assert torch.allclose(curve.point(1.0)[name], b.state[name])
    theta = dict(zip(curve.names, curve.bend))
    mid = curve.point(0.5)
    for name in curve.names:
        expected = theta[name] if kind == "polychain" else 0.25 * a.state[name] + 0.5 * theta[name] + 0.25 * b.state[name]
        assert torch.allclose(mid[name], expected)


def test_trained_curve_beats_the_straight_line() -> None:
    a, b = trained(0), trained(1)
    rec = P.connect(ctx(), S.ConnectParams(epochs=30, lr=1e-2, steps=9), a=a, b=b, on=data()).data
    assert max(rec["loss"]) < max(rec["line"]["loss"])
    assert rec["barriers"]["loss_max_minus_mean"] < rec["line_barriers"]["loss_max_minus_mean"]
    assert rec["loss"][0] == pytest.approx(rec["line"]["loss"][0], rel=1e-5)


def test_instability_reports_one_barrier_per_spawn_point() -> None:
    params = S.InstabilityParams(spawn_at=[0, 20], steps=40, lr=0.05, points=5)
    rec = P.instability(ctx(), params, model=mlp(0), on=data()).data
    assert rec["spawn_at"] == [0, 20] and len(rec["error_barrier"]) == 2
    # copies spawned at the end see no divergent training: identical children, zero barrier
    end = P.instability(ctx(), S.InstabilityParams(spawn_at=[40], steps=40, points=3), model=mlp(0), on=data()).data
    assert end["loss_barrier"] == [pytest.approx(0.0, abs=1e-9)]
    with pytest.raises(StepError, match="spawn_at"):
        P.instability(ctx(), S.InstabilityParams(spawn_at=[50], steps=40), model=mlp(0), on=data())


def test_task_vector_geometry_hand_made() -> None:
    arch = {"type": "mlp", "in_features": 1, "hidden": [1], "out_features": 1, "norm": "none"}
    zero = {"layers.0.weight": torch.zeros(1, 1), "layers.0.bias": torch.zeros(1),
            "layers.1.weight": torch.zeros(1, 1), "layers.1.bias": torch.zeros(1)}
    def vec(*v):
        return Model(arch, {k: torch.tensor(x).reshape(zero[k].shape) for k, x in zip(zero, v)})
    base, m1, m2 = vec(0.0, 0.0, 0.0, 0.0), vec(1.0, 2.0, 0.0, -1.0), vec(-1.0, 2.0, 3.0, 0.0)
    rec = task_vectors(ctx(), S.TaskVectorParams(), base=base, models=[m1, m2]).data
    assert rec["cosine"][0][1] == pytest.approx(3.0 / (math.sqrt(6) * math.sqrt(14)))
    assert rec["sign_conflict"][0][1] == pytest.approx(0.25)  # only the first coordinate disagrees
    assert rec["sign_conflict_all"] == pytest.approx(0.25)
    assert rec["norms"] == pytest.approx([math.sqrt(6), math.sqrt(14)])
    assert rec["tensor_norms"]["layers.0.bias"] == pytest.approx([2.0, 2.0])
