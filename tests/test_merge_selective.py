"""nearswap and arcee_fusion: hand-computed values, a float64 oracle, and mergekit's formulas as
written in its code (tests/mergekit_formulas.py)."""

from __future__ import annotations

import math

import mergekit_formulas as mk
import pytest
import torch

from mlspec.ops.merge.selective import arcee_fusion, lower_quantile, nearswap

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_nearswap_hand_computed() -> None:
    base = torch.tensor([0.0, 0.0, 1.0, 5.0], dtype=D)
    other = torch.tensor([0.05, 0.4, 1.0, 3.0], dtype=D)
    # |diff| = 0.05 (< t: swap), 0.4 (w = 0.25), 0 (clamped to 1e-6: w = 1), 2 (w = 0.05)
    expected = torch.tensor([0.05, 0.1, 1.0, 5.0 - 0.05 * 2.0], dtype=D)
    assert torch.allclose(nearswap([other], base, t=0.1), expected)


def test_nearswap_matches_mergekit_as_written() -> None:
    base, other = _randn(6, 5, seed=0), _randn(6, 5, seed=1)
    assert torch.allclose(nearswap([other], base, t=0.3), mk.nearswap_merge([other], base, 0.3))


def test_nearswap_refuses_other_than_two_models_and_negative_t() -> None:
    base = _randn(3, seed=2)
    with pytest.raises(ValueError, match="exactly two models"):
        nearswap([base, base], base, t=0.1)
    with pytest.raises(ValueError, match="t must be ≥ 0"):
        nearswap([base], base, t=-0.1)


def fusion_oracle(base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Arcee Fusion in Python floats: KL per row, importance, exact lower quartiles, threshold."""
    rows_b, rows_x = base.reshape(-1, base.shape[-1]).tolist(), x.reshape(-1, x.shape[-1]).tolist()
    importance = []
    for rb, rx in zip(rows_b, rows_x):
        zx, zb = sum(math.exp(v) for v in rx), sum(math.exp(v) for v in rb)
        p = [math.exp(v) / zx + 1e-8 for v in rx]
        q = [math.exp(v) / zb + 1e-8 for v in rb]
        kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        importance.append([abs(a - b) * kl for a, b in zip(rx, rb)])
    flat = sorted(v for row in importance for v in row)
    n = len(flat)
    q1, med, q3 = (flat[int(q * (n - 1))] for q in (0.25, 0.5, 0.75))
    cut = med + 1.5 * (q3 - q1)
    out = [[a if imp >= cut else b for a, b, imp in zip(rx, rb, ri)] for rx, rb, ri in zip(rows_x, rows_b, importance)]
    return torch.tensor(out, dtype=D).reshape(base.shape)


@pytest.mark.parametrize("shape", [(40,), (12, 9)])
def test_arcee_fusion_matches_float_oracle_and_mergekit_as_written(shape: tuple[int, ...]) -> None:
    base = _randn(*shape, seed=3)
    other = base + 0.1 * _randn(*shape, seed=4)
    other.view(-1)[::7] += 2.0  # a few large, important changes
    got = arcee_fusion([other], base)
    assert torch.allclose(got, fusion_oracle(base, other))
    assert torch.allclose(got, mk.arcee_fusion(base, other))
    changed = (got != base).sum().item()
    assert 0 < changed < got.numel()  # the threshold selects, it neither keeps all nor none


def test_lower_quantile_is_the_floor_index_entry() -> None:
    values = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 9.0], dtype=D)  # sorted 1 2 3 4 5 9
    assert [lower_quantile(values, q) for q in (0.0, 0.25, 0.5, 0.75, 1.0)] == [1.0, 2.0, 3.0, 4.0, 9.0]


def test_arcee_fusion_returns_the_base_dtype() -> None:
    base = _randn(8, 8, seed=5)
    other = base + _randn(8, 8, seed=6)
    assert arcee_fusion([other.bfloat16()], base.bfloat16()).dtype == torch.bfloat16
