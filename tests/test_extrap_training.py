"""Training pieces against hand computation, resuming after an interruption, and a tiny real run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mlspec.extrap import mazes
from mlspec.extrap.evaluation import evaluate
from mlspec.extrap.models import DTNet
from mlspec.extrap.training import TrainConfig, _param_groups, masked_cross_entropy, progressive_loss, train


def maze_tensors(size: int, count: int, seed: int) -> dict[str, torch.Tensor]:
    c = mazes.generate_compact(size=size, count=count, seed=seed)
    return {"grid": torch.from_numpy(c.grid), "path": torch.from_numpy(c.path)}


def test_masked_cross_entropy_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    y = torch.tensor([[[0, 0]]])
    mask = torch.tensor([[[True, False]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))  # only the first pixel counts
    assert float(masked_cross_entropy(logits, y, mask)) == pytest.approx(expected, rel=1e-12)


def test_progressive_loss_with_alpha_zero_is_the_loss_at_the_full_budget() -> None:
    torch.manual_seed(0)
    net = DTNet(width=4, iterations=3).double()
    x, y = mazes.generate(size=5, count=2, seed=0)
    x, mask = x.double(), x.amax(1) > 0
    g = torch.Generator().manual_seed(0)
    got = progressive_loss(net, x, y, mask, alpha=0.0, iterations=3, generator=g)
    torch.testing.assert_close(got, masked_cross_entropy(net(x, 3), y, mask))


def test_progressive_loss_with_alpha_one_runs_n_then_k_iterations() -> None:
    torch.manual_seed(0)
    net = DTNet(width=4, iterations=6).double()
    x, y = mazes.generate(size=5, count=2, seed=0)
    x, mask = x.double(), x.amax(1) > 0
    got = progressive_loss(net, x, y, mask, alpha=1.0, iterations=6, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: n ~ U{0..5}, k ~ U{1..6-n}
    n = int(torch.randint(0, 6, (1,), generator=g))
    k = int(torch.randint(1, 6 - n + 1, (1,), generator=g))
    torch.testing.assert_close(got, masked_cross_entropy(net(x, n + k), y, mask))


def test_throttle_slows_only_the_recurrent_block() -> None:
    net = DTNet(width=4, iterations=30)
    groups = _param_groups(net, TrainConfig(lr=1e-3, iterations=30))
    assert [g["base_lr"] for g in groups] == [1e-3, pytest.approx(1e-3 / 30)]
    tied = {id(p) for p in groups[1]["params"]}
    assert tied == {id(p) for n, p in net.named_parameters() if n.startswith("recur_block.")}


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Interrupt(Exception):
    pass


def test_resuming_after_an_interruption_equals_an_uninterrupted_run(tmp_path: Path, one_thread: None) -> None:
    data = maze_tensors(5, 60, 0)
    config = TrainConfig(epochs=3, batch_size=16, iterations=3, warmup=1, alpha=0.5)

    def fresh() -> DTNet:
        torch.manual_seed(0)
        return DTNet(width=4, iterations=3)

    whole, info = train(fresh(), data, config=config, seed=1)

    def stop_after_first_epoch(**_: object) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        train(fresh(), data, config=config, seed=1, work_dir=tmp_path, progress=stop_after_first_epoch)
    resumed, info2 = train(fresh(), data, config=config, seed=1, work_dir=tmp_path)
    assert len(info2["history"]) == 3 and info2["history"] == info["history"]
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k])


def test_a_tiny_trained_net_improves_with_iterations(one_thread: None) -> None:
    """Trained briefly on 5x5 mazes, a small DT-Net solves more mazes, and more pixels, when it is
    given its training budget than after one iteration — and keeps that on unseen 7x7 mazes."""
    torch.manual_seed(0)
    net = DTNet(width=16, iterations=5)
    config = TrainConfig(epochs=6, lr=5e-3, batch_size=32, alpha=0.0, iterations=5, warmup=0,
                         throttle=False, val_fraction=0.1, clip=1.0)
    state, info = train(net, maze_tensors(5, 1500, 0), config=config, seed=0)
    assert info["history"][-1]["loss"] < info["history"][0]["loss"]
    net.load_state_dict(state)
    for size in (5, 7):
        result = evaluate(net, maze_tensors(size, 200, 1), budgets=[1, 5])
        one, five = result["pixel_accuracy"]
        assert five > one + 0.05
        assert result["accuracy"][1] >= result["accuracy"][0]
