"""Evaluation's path check and the dynamics analysis on hand-made nets with known limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlspec.extrap import mazes
from mlspec.extrap.dynamics import analyse, classify, deadend_fill
from mlspec.extrap.evaluation import evaluate, minimal_paths
from mlspec.extrap.models import DTNet, IterativeNet


def maze_tensors(size: int, count: int, seed: int, **kw: object) -> dict[str, torch.Tensor]:
    c = mazes.generate_compact(size=size, count=count, seed=seed, **kw)
    return {"grid": torch.from_numpy(c.grid), "path": torch.from_numpy(c.path)}


def test_deadend_filling_leaves_exactly_the_path_of_a_perfect_maze() -> None:
    for generator in ("dfs", "wilson", "kruskal"):
        t = maze_tensors(9, 50, 0, generator=generator)
        assert torch.equal(deadend_fill(t["grid"]), t["path"].bool())


def test_minimal_paths_accepts_any_shortest_path_and_nothing_else() -> None:
    # a 2x2-cell room (size 3): start top-left, end bottom-right, two shortest paths
    grid = torch.tensor([[[0, 0, 0, 0, 0], [0, 2, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 3, 0], [0, 0, 0, 0, 0]]])
    via_top = torch.tensor([[[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]])
    via_left = via_top.transpose(1, 2)
    both = via_top | via_left
    broken = via_top.clone()
    broken[0, 2, 3] = 0
    target = mazes.upscale(via_top)
    preds = mazes.upscale(torch.cat([via_top, via_left, both, broken]))
    ok = minimal_paths(preds, target.expand(4, -1, -1), grid.expand(4, -1, -1))
    assert ok.tolist() == [True, True, False, False]


def test_valid_path_counts_at_least_the_exact_solutions() -> None:
    torch.manual_seed(0)
    net = DTNet(width=4, iterations=2)
    data = maze_tensors(7, 20, 0, generator="dfs_percolation", percolation=0.3)
    exact = evaluate(net, data, budgets=[2, 1], correctness="exact")
    valid = evaluate(net, data, budgets=[1, 2], correctness="valid_path")
    assert exact["iterations"] == [1, 2] and exact["count"] == 20
    assert all(v >= e for v, e in zip(valid["accuracy"], exact["accuracy"]))
    with pytest.raises(ValueError, match="exact"):
        evaluate(net, data, budgets=[1], correctness="approximately")


class Fixed(IterativeNet):
    """Predicts the same pixels for every input: a known answer to score."""

    def __init__(self, pixels: torch.Tensor):
        super().__init__()
        self.iterations = 1
        self.register_buffer("pixels", pixels)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        return h

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        on = self.pixels.float().expand(len(h), -1, -1)
        return torch.stack([1 - on, on], 1)


def test_valid_path_reports_the_exact_score_beside_it() -> None:
    """Two copies of a room with two shortest paths; the net always draws the left one. Against the
    top-path target it is not exact but valid; against the left-path target it is both."""
    room = torch.tensor([[0, 0, 0, 0, 0], [0, 2, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 3, 0], [0, 0, 0, 0, 0]])
    via_top = torch.tensor([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
    via_left = via_top.T.contiguous()
    data = {"grid": torch.stack([room, room]).to(torch.uint8), "path": torch.stack([via_top, via_left]).to(torch.uint8)}
    net = Fixed(mazes.upscale(via_left[None])[0])
    valid = evaluate(net, data, budgets=[1], correctness="valid_path")
    exact = evaluate(net, data, budgets=[1], correctness="exact")
    assert valid["accuracy"] == [1.0] and valid["exact_accuracy"] == [0.5]
    assert exact["accuracy"] == [0.5] and "exact_accuracy" not in exact


class Toy(IterativeNet):
    """h ← R h + c on 2 channels: a contraction (fixed point) or a rotation by 2π/period (cycle)."""

    def __init__(self, period: int | None):
        super().__init__()
        self.iterations = 1
        angle = 2 * np.pi / period if period else 0.3
        scale = 1.0 if period else 0.5
        r = scale * torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        self.register_buffer("r", r.float())
        self.head = torch.nn.Conv2d(2, 2, 1)

    def initial_state(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] + 1.0

    def step(self, x: torch.Tensor, h: torch.Tensor, k: int = 0) -> torch.Tensor:
        out = torch.einsum("ij,njhw->nihw", self.r, h)
        return out + (0.0 if torch.allclose(self.r @ self.r.T, torch.eye(2)) else 1.0)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)


@pytest.mark.parametrize("period, kind", [(None, "fixed_point"), (2, "cycle"), (3, "cycle"), (7, "none")])
def test_limits_are_detected_with_their_period(period: int | None, kind: str) -> None:
    data = maze_tensors(5, 3, 0)
    out = analyse(Toy(period), data, iterations=120, window=40, max_period=5, tol=1e-4,
                  detect=("fixed_point", "cycle", "pca", "deadend"))
    assert out["limit"]["kind"] == [kind] * 3
    assert out["limit"]["period"] == [{None: 1, 2: 2, 3: 3, 7: 0}[period]] * 3
    share = {None: "fixed_point", 2: "cycle_2", 3: "cycle_longer", 7: "none"}[period]
    assert out["limit"]["counts"] == {k: 3 if k == share else 0
                                      for k in ("fixed_point", "cycle_2", "cycle_longer", "none")}
    assert len(out["residual"]["mean"]) == 120 and len(out["pca"][0]["points"]) == 40
    assert 0 <= out["deadend"]["agreement"][-1] <= 1


def test_classify_by_hand() -> None:
    norms = np.ones(4)
    assert classify(np.array([[0.0] * 4, [0.0] * 4]), norms, 1e-3) == ("fixed_point", 1)
    assert classify(np.array([[1.0] * 4, [0.0] * 4]), norms, 1e-3) == ("cycle", 2)
    assert classify(np.array([[1.0] * 4, [1.0] * 4]), norms, 1e-3) == ("none", 0)


def test_dynamics_of_a_dt_net_runs_free_and_reports_json() -> None:
    torch.manual_seed(0)
    out = analyse(DTNet(width=4), maze_tensors(7, 4, 0), iterations=30, window=10, detect=("fixed_point",))
    assert out["count"] == 4 and set(out["limit"]["counts"]) == {"fixed_point", "cycle_2", "cycle_longer", "none"}
    with pytest.raises(ValueError, match="unknown dynamics detector 'loops'"):
        analyse(DTNet(width=4), maze_tensors(7, 1, 0), iterations=3, detect=("loops",))


def test_betti_numbers_need_ripser_or_say_so() -> None:
    try:
        import ripser  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="ripser"):
            analyse(Toy(2), maze_tensors(5, 1, 0), iterations=20, window=10, detect=("betti",))
        return
    out = analyse(Toy(2), maze_tensors(5, 1, 0), iterations=60, window=20, detect=("betti",), tol=1e-4)
    assert out["betti"][0] == [2, 0]  # a 2-cycle: two points, no loop
