"""Iterative nets: DeepThinking's layout, one-pass budgets, solver vs free-running steps, Anderson."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlspec.extrap.models import DTNet, FeedForwardNet, ImplicitNet, _anderson_mix, broyden
from mlspec.ops.models.builders import build

NETS = {
    "dt_net": {"type": "dt_net", "width": 6, "iterations": 4},
    "dt_net_1d": {"type": "dt_net", "width": 6, "dims": 1, "in_channels": 1},
    "picard": {"type": "implicit_net", "width": 6, "blocks": 1, "solver": "picard", "tol": 1e-2},
    "anderson": {"type": "implicit_net", "width": 6, "blocks": 1, "solver": "anderson", "tol": 1e-2},
    "feedforward": {"type": "feedforward", "width": 6, "depth": 3},
}


def inputs(arch: dict) -> torch.Tensor:
    torch.manual_seed(0)
    shape = (3, 1, 20) if arch.get("dims") == 1 else (3, 3, 12, 12)
    return torch.rand(shape, dtype=torch.float64)


def test_dt_net_matches_deepthinking_layout() -> None:
    net = build({"type": "dt_net"})
    assert sum(p.numel() for p in net.parameters()) == 783_504  # dt_net_recall_2d, width 128
    names = set(net.state_dict())
    assert {"projection.0.weight", "recur_block.0.weight", "recur_block.1.1.conv2.weight", "head.4.weight"} <= names
    assert sum(p.numel() for p in build({"type": "feedforward"}).parameters()) == 8_890_128


@pytest.mark.parametrize("name", list(NETS))
def test_all_budgets_from_one_pass_equal_separate_runs(name: str) -> None:
    torch.manual_seed(1)
    net = build(NETS[name]).double().eval()
    x = inputs(NETS[name])
    budgets = [1, 2, 5, 9]
    with torch.no_grad():
        together = net(x, at=budgets)
        apart = [net(x, iterations=k) for k in budgets]
    for a, b in zip(together, apart):
        assert a.shape == (3, 2, *x.shape[2:])
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_solver_budget_differs_from_free_running_steps() -> None:
    """With a huge tolerance every sample freezes after one step: the solver's output stops moving,
    while the free-running trajectory (what dynamics analyses) keeps applying the update."""
    torch.manual_seed(2)
    net = ImplicitNet(width=6, blocks=1, solver="picard", tol=1e9, dims=2).double().eval()
    x = inputs({})
    with torch.no_grad():
        solved = net.states_at(x, [2, 6])
        free = list(net.trajectory(x, 6))
    torch.testing.assert_close(solved[0], solved[1])
    assert not torch.allclose(free[1], free[5])
    torch.testing.assert_close(solved[0], free[0])  # frozen right after the first application


def test_picard_without_stopping_is_plain_iteration() -> None:
    torch.manual_seed(3)
    net = ImplicitNet(width=6, blocks=1, solver="picard", tol=1e-300).double().eval()
    x = inputs({})
    with torch.no_grad():
        torch.testing.assert_close(net.states_at(x, [5])[0], list(net.trajectory(x, 5))[-1])


def test_anderson_mix_solves_the_constrained_least_squares() -> None:
    rng = np.random.default_rng(0)
    hs, fs = rng.normal(size=(1, 3, 5)), rng.normal(size=(1, 3, 5))
    g = (fs - hs)[0]
    gram = g @ g.T
    gram += 1e-4 * np.trace(gram) / 3 * np.eye(3)
    alpha = np.linalg.solve(gram, np.ones(3))
    alpha /= alpha.sum()  # argmin ‖Σ α_i g_i‖² subject to Σ α_i = 1
    expected = alpha @ fs[0]
    got = _anderson_mix(torch.from_numpy(hs), torch.from_numpy(fs)).numpy()[0]
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_anderson_beats_picard_on_a_slow_linear_contraction() -> None:
    """h ← A h + b with spectral radius 0.95: Picard creeps, Anderson (memory 5) nearly solves it."""
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    a = torch.from_numpy(q @ np.diag(np.linspace(0.5, 0.95, 8)) @ q.T)
    b = torch.from_numpy(rng.normal(size=8))
    star = torch.linalg.solve(torch.eye(8, dtype=torch.float64) - a, b)
    h_p = h_a = torch.zeros(8, dtype=torch.float64)
    hist_h, hist_f = [], []
    for _ in range(20):
        h_p = a @ h_p + b
        hist_h, hist_f = (hist_h + [h_a])[-5:], (hist_f + [a @ h_a + b])[-5:]
        h_a = _anderson_mix(torch.stack(hist_h)[None], torch.stack(hist_f)[None])[0]
    assert (h_a - star).norm() < 1e-3 * (h_p - star).norm()


def test_jfb_trains_through_one_application_of_the_update() -> None:
    torch.manual_seed(4)
    net = ImplicitNet(width=6, blocks=1, solver="picard", tol=1e-300, backward="jfb").double()
    x = inputs({})
    net.train()
    out = net(x, iterations=4)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        net.eval()
        expected = net.readout(net.step(x, net.states_at(x, [4])[0]))
    torch.testing.assert_close(out.detach(), expected)


def test_feedforward_cannot_think_longer_than_its_depth() -> None:
    net = FeedForwardNet(width=6, depth=3).double().eval()
    x = inputs({})
    with torch.no_grad():
        three, ten = net(x, at=[3, 10])
    torch.testing.assert_close(three, ten)
    assert isinstance(build(NETS["dt_net"]), DTNet)


def _linear_contraction(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h ← A h + b with spectral radius 0.95 and its exact fixed point (I − A)⁻¹ b."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = torch.from_numpy(q @ np.diag(np.linspace(0.5, 0.95, n)) @ q.T)
    b = torch.from_numpy(rng.normal(size=n))
    return a, b, torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a, b)


def test_broyden_solves_a_linear_fixed_point_where_picard_creeps() -> None:
    """On an affine map Broyden's method terminates in at most 2n steps (Gay 1979); Picard's error
    after 20 steps is still about 0.95^20 of the start."""
    a, b, star = _linear_contraction(1)
    h0 = torch.zeros(2, 8, dtype=torch.float64)  # two samples, the same problem
    fn = lambda h: h @ a.T + b  # noqa: E731
    first, twenty = broyden(fn, h0, [1, 20], tol=1e-300)
    torch.testing.assert_close(first, fn(h0))  # the first step is one application of fn
    torch.testing.assert_close(twenty, star.expand(2, 8), rtol=0, atol=1e-9)
    h_p = h0
    for _ in range(20):
        h_p = fn(h_p)
    assert (h_p - star).norm() > 0.1 * star.norm()


def test_broyden_stops_a_sample_at_tol_and_keeps_its_lowest_residual_iterate() -> None:
    a, b, star = _linear_contraction(2)
    fn = lambda h: h @ a.T + b  # noqa: E731
    h0 = torch.stack([star, torch.zeros(8, dtype=torch.float64)])  # sample 0 starts at the fixed point
    out = broyden(fn, h0, [3, 10], tol=1e-6)
    for k in out:
        torch.testing.assert_close(k[0], star, rtol=0, atol=1e-12)  # never moved away
    res = [float((fn(k[1]) - k[1]).norm()) for k in out]
    assert res[1] <= res[0]


def test_implicit_net_with_broyden_reads_the_solver() -> None:
    torch.manual_seed(5)
    net = ImplicitNet(width=6, blocks=1, solver="broyden", tol=1e-300).double().eval()
    x = inputs({})
    with torch.no_grad():
        one, many = net.states_at(x, [1, 12])
        step_one = next(net.trajectory(x, 1))
        torch.testing.assert_close(one, step_one)
        res = lambda h: (net.step(x, h) - h).flatten(1).norm(dim=1)  # noqa: E731
        assert bool((res(many) < res(list(net.trajectory(x, 12))[-1])).all())


def test_path_independent_training_starts_half_the_batch_from_random_states() -> None:
    """Training mode: the first half of the batch starts from N(0, 1) (so two draws differ there),
    the second half from zero (so it equals evaluation). Evaluation never draws."""
    x = inputs({}).repeat(2, 1, 1, 1)  # 6 samples: 3 random starts, 3 zero starts
    torch.manual_seed(6)
    net = ImplicitNet(width=6, blocks=1, solver="picard", tol=1e-300, backward="unrolled",
                      path_independent=True).double()
    with torch.no_grad():
        net.train()
        first, second = net.states_at(x, [2])[0], net.states_at(x, [2])[0]
        net.eval()
        plain = net.states_at(x, [2])[0]
        again = net.states_at(x, [2])[0]
    assert not torch.allclose(first[:3], second[:3])
    torch.testing.assert_close(first[3:], plain[3:])
    torch.testing.assert_close(plain, again)
    assert not torch.allclose(first[:3], plain[:3])
