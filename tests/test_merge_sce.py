"""SCE (select by variance, calculate weights, erase by sign): a float64 oracle written out entry by
entry, and mergekit's formula as written in its code (tests/mergekit_formulas.py)."""

from __future__ import annotations

import math

import mergekit_formulas as mk
import pytest
import torch

from mlspec.ops.merge.sce import sce, variance_mask

D = torch.float64


def _models(seed: int = 0, shape: tuple[int, ...] = (5, 6), n: int = 3, spread: float = 1.0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=D)
    return base, [base + spread * torch.randn(shape, generator=g, dtype=D) for _ in range(n)]


def sce_oracle(base: torch.Tensor, tensors: list[torch.Tensor], topk: float) -> torch.Tensor:
    """The paper's three steps in Python floats."""
    b = base.flatten().tolist()
    taus = [[xv - bv for xv, bv in zip(x.flatten().tolist(), b)] for x in tensors]
    n, m = len(taus), len(b)
    var = []
    for j in range(m):
        col = [t[j] for t in taus]
        mu = sum(col) / n
        var.append(sum((v - mu) ** 2 for v in col) / n)
    k = int(topk * sum(1 for v in var if v != 0) + 1e-9)
    cut = sorted(var, reverse=True)[k - 1] if k else math.inf
    keep = [v >= cut for v in var] if topk < 1 else [True] * m
    taus = [[v if keep[j] else 0.0 for j, v in enumerate(t)] for t in taus]
    energy = [sum(v * v for v in t) for t in taus]
    weights = [e / sum(energy) for e in energy] if sum(energy) else [1 / n] * n
    out = []
    for j in range(m):
        col = [t[j] for t in taus]
        sign = 1.0 if sum(col) >= 0 else -1.0
        agree = [i for i, v in enumerate(col) if v != 0 and math.copysign(1, v) == sign]
        den = sum(weights[i] for i in agree)
        out.append(b[j] + (sum(weights[i] * col[i] for i in agree) / den if agree else 0.0))
    return torch.tensor(out, dtype=D).reshape(base.shape)


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.2, 0.0])
def test_sce_matches_paper_oracle(topk: float) -> None:
    base, xs = _models()
    assert torch.allclose(sce(xs, base, select_topk=topk), sce_oracle(base, xs, topk))


@pytest.mark.parametrize("topk", [1.0, 0.7, 0.3])
def test_sce_matches_mergekit_as_written(topk: float) -> None:
    base, xs = _models(seed=3, shape=(8, 4), n=4)
    assert torch.allclose(sce(xs, base, select_topk=topk, uniform_below=1e-6), mk.sce_merge(xs, base, topk))


def test_mergekit_weights_tiny_task_vectors_equally() -> None:
    """With deltas of order 1e-4 mergekit's Σ mean(τ²) < 1e-6 guard gives equal weights;
    uniform_below = 1e-6 reproduces that, the default weights by squared magnitude as the paper."""
    base, xs = _models(seed=4, spread=1e-4)
    xs[0] = base + 3 * (xs[0] - base)
    like_mergekit = sce(xs, base, uniform_below=1e-6)
    assert torch.allclose(like_mergekit, mk.sce_merge(xs, base))
    assert torch.allclose(sce(xs, base), sce_oracle(base, xs, 1.0))
    assert not torch.allclose(like_mergekit, sce(xs, base), rtol=0, atol=1e-9)


def test_variance_mask_hand_computed() -> None:
    deltas = torch.tensor([[1.0, 0.0, 2.0, 5.0], [1.0, 1.0, -2.0, 5.0]], dtype=D)
    # variances 0, 0.25, 4, 0: two non-zero, half of them is the largest one
    assert variance_mask(deltas, 0.5).tolist() == [False, False, True, False]
    assert variance_mask(deltas, 1.0).tolist() == [False, True, True, False]


def test_sce_of_one_model_is_that_model() -> None:
    base, xs = _models(n=1)
    assert torch.allclose(sce(xs, base), xs[0])


def test_sce_refuses_a_fraction_outside_the_unit_interval() -> None:
    base, xs = _models()
    with pytest.raises(ValueError, match="select_topk must lie in"):
        sce(xs, base, select_topk=1.5)


def test_sce_returns_the_base_dtype() -> None:
    base, xs = _models()
    assert sce([x.half() for x in xs], base.half(), select_topk=0.5).dtype == torch.float16
