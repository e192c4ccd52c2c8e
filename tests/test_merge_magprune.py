"""DELLA (MagPrune + TIES fuse, or linear): float64 oracles written out entry by entry, and
mergekit's formula as written in its code (tests/mergekit_formulas.py)."""

from __future__ import annotations

import math

import mergekit_formulas as mk
import pytest
import torch

from mlspec.ops.merge.magprune import della, della_linear, keep_probabilities, magprune

D = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _models(seed: int = 1, shape: tuple[int, ...] = (3, 7), n: int = 3) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = _gen(seed)
    base = torch.randn(shape, generator=g, dtype=D)
    return base, [base + torch.randn(shape, generator=g, dtype=D) for _ in range(n)]


def magprune_oracle(delta: torch.Tensor, density: float, eps: float, g: torch.Generator) -> list[list[float]]:
    """The paper's MagPrune row by row in Python floats: rank by |δ|, pᵢ spread over
    [density − ε, density + ε], keep when the uniform draw is below pᵢ, survivors × 1/pᵢ."""
    rows = delta.reshape(1, -1) if delta.dim() == 1 else delta
    draws = torch.rand(rows.shape, generator=g).tolist()
    out = []
    for row, u in zip(rows.tolist(), draws):
        n = len(row)
        order = sorted(range(n), key=lambda i: abs(row[i]))
        rank = {i: r for r, i in enumerate(order)}
        probs = [density - eps + 2 * eps * rank[i] / (n - 1) for i in range(n)]
        out.append([row[i] / probs[i] if u[i] < probs[i] else 0.0 for i in range(n)])
    return out


def fuse_oracle(base, pruned, weights, scale, consensus, normalize):  # type: ignore[no-untyped-def]
    """TIES' elect (mass, on the unweighted deltas) and disjoint mean, or the weighted sum, in floats."""
    flat_base = base.flatten().tolist()
    cols = [p.flatten().tolist() for p in pruned]
    out = []
    for j, b in enumerate(flat_base):
        vals = [c[j] for c in cols]
        if consensus:
            sign = 1.0 if sum(vals) >= 0 else -1.0
            agree = [i for i, v in enumerate(vals) if v != 0 and math.copysign(1, v) == sign]
        else:
            agree = list(range(len(vals)))
        total = sum(weights[i] * vals[i] for i in agree)
        if normalize and agree and abs(sum(weights[i] for i in agree)) > 1e-12:
            total /= sum(weights[i] for i in agree)
        out.append(b + scale * total)
    return torch.tensor(out, dtype=D).reshape(base.shape)


def test_keep_probabilities_hand_computed() -> None:
    x = torch.tensor([[0.1, -5.0, 2.0, 0.0, -1.0]], dtype=D)
    # ranks by |x|: 0.0→0, 0.1→1, -1→2, 2→3, -5→4; p = 0.4 + 0.2·rank/4
    expected = torch.tensor([[0.45, 0.6, 0.55, 0.4, 0.5]], dtype=D)
    assert torch.allclose(keep_probabilities(x, 0.5, 0.1), expected)


@pytest.mark.parametrize("shape", [(9,), (4, 6), (2, 3, 5)])
def test_keep_probabilities_match_mergekit(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=_gen(3), dtype=D)
    ours = keep_probabilities(x, 0.6, 0.2)
    theirs = mk.della_probs(x, 0.6, 0.2).reshape(shape)
    assert torch.allclose(ours, theirs)


def test_magprune_matches_paper_oracle_given_the_draws() -> None:
    delta = torch.randn(4, 8, generator=_gen(5), dtype=D)
    got = magprune(delta, 0.5, 0.2, rescale="inverse", generator=_gen(9))
    assert torch.allclose(got, torch.tensor(magprune_oracle(delta, 0.5, 0.2, _gen(9)), dtype=D))


def test_magprune_inverse_rescale_is_unbiased() -> None:
    delta = torch.tensor([3.0, -0.1, 0.5, -2.0, 0.01, 1.0], dtype=D)
    g = _gen(11)
    mean = sum(magprune(delta, 0.5, 0.3, generator=g) for _ in range(20_000)) / 20_000
    assert torch.allclose(mean, delta, rtol=0.06, atol=0.002)


def test_magprune_keeps_large_magnitudes_more_often() -> None:
    delta = torch.arange(1.0, 101.0, dtype=D)
    g = _gen(2)
    kept = sum((magprune(delta, 0.5, 0.4, rescale="none", generator=g) != 0).to(D) for _ in range(2000)) / 2000
    assert kept[:20].mean() < 0.25 and kept[-20:].mean() > 0.75  # p runs from 0.1 to 0.9


@pytest.mark.parametrize("density, epsilon", [(0.1, 0.1), (0.9, 0.15), (0.5, 0.5)])
def test_density_plus_minus_epsilon_outside_the_unit_interval_is_refused(density: float, epsilon: float) -> None:
    base, xs = _models()
    with pytest.raises(ValueError, match=r"density ± epsilon must lie inside \(0, 1\)"):
        della(xs, base, weights=[1.0] * 3, density=[density] * 3, epsilon=[epsilon] * 3, generator=_gen())


def test_density_one_keeps_everything_and_zero_drops_everything() -> None:
    delta = torch.randn(5, generator=_gen(), dtype=D)
    assert torch.equal(magprune(delta, 1.0, 0.3, generator=_gen()), delta)
    assert torch.equal(magprune(delta, 0.0, 0.3, generator=_gen()), torch.zeros_like(delta))


@pytest.mark.parametrize("normalize", [True, False])
def test_della_matches_float_oracle_with_per_model_parameters(normalize: bool) -> None:
    base, xs = _models()
    weights, density, epsilon = [1.0, 0.5, 2.0], [0.3, 0.6, 0.8], [0.1, 0.2, 0.15]
    got = della(
        xs, base, weights=weights, density=density, epsilon=epsilon, scale=1.3, normalize=normalize, generator=_gen(4)
    )
    g = _gen(4)
    pruned = [torch.tensor(magprune_oracle(x - base, k, e, g), dtype=D) for x, k, e in zip(xs, density, epsilon)]
    assert torch.allclose(got, fuse_oracle(base, pruned, weights, 1.3, True, normalize))


def test_della_linear_matches_float_oracle() -> None:
    base, xs = _models(shape=(11,))
    weights, density, epsilon = [2.0, -1.0, 0.5], [0.5] * 3, [0.25] * 3
    got = della_linear(xs, base, weights=weights, density=density, epsilon=epsilon, scale=0.7, generator=_gen(8))
    g = _gen(8)
    pruned = [torch.tensor(magprune_oracle(x - base, 0.5, 0.25, g), dtype=D) for x in xs]
    assert torch.allclose(got, fuse_oracle(base, pruned, weights, 0.7, False, False))


@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_della_matches_mergekit_as_written(method: str) -> None:
    """mergekit's della: MagPrune with L1 rescale, weights applied before the sign vote, mean of the
    agreeing entries (``normalize`` true for della, false for della_linear), times lambda."""
    base, xs = _models(shape=(6, 9), n=3)
    weights, density, epsilon = [0.6, 1.2, 0.9], [0.4, 0.5, 0.7], [0.1, 0.2, 0.25]
    linear = method == "della_linear"
    kwargs = dict(weights=weights, density=density, epsilon=epsilon, scale=1.4, rescale="l1", generator=_gen(21))
    got = della_linear(xs, base, **kwargs) if linear else della(xs, base, weights_at="before", **kwargs)  # type: ignore[arg-type]
    g = _gen(21)
    expected = mk.gta(
        base,
        xs,
        weights=weights,
        sparsify=lambda d, i: mk.della_magprune(d, density[i], epsilon[i], True, g),
        consensus=None if linear else "sum",
        normalize=not linear,
        lambda_=1.4,
    )
    assert torch.allclose(got, expected)


def test_della_computes_half_precision_in_float32_and_returns_the_base_dtype() -> None:
    base, xs = _models(shape=(4, 8))
    half = della(
        [x.bfloat16() for x in xs], base.bfloat16(), weights=[1.0] * 3, density=[0.5] * 3, epsilon=[0.1] * 3,
        generator=_gen(6),
    )
    assert half.dtype == torch.bfloat16
    wide = della(
        [x.bfloat16().float() for x in xs], base.bfloat16().float(), weights=[1.0] * 3, density=[0.5] * 3,
        epsilon=[0.1] * 3, generator=_gen(6),
    )
    assert torch.equal(half, wide.bfloat16())


def test_della_needs_one_density_per_model() -> None:
    base, xs = _models()
    with pytest.raises(ValueError, match="one per model"):
        della(xs, base, weights=[1.0] * 3, density=[0.5, 0.5], epsilon=[0.1] * 3, generator=_gen())
