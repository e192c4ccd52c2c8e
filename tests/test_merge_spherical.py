"""nuslerp and multislerp: float64 oracles (Shoemake's formula, hand-computed barycentres) and
mergekit's formulas as written in its code (tests/mergekit_formulas.py)."""

from __future__ import annotations

import math

import mergekit_formulas as mk
import pytest
import torch

from mlspec.ops.merge.spherical import multislerp, nuslerp

D = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def shoemake(v0: list[float], v1: list[float], t: float) -> list[float]:
    dot = sum(a * b for a, b in zip(v0, v1))
    cos = dot / (math.sqrt(sum(a * a for a in v0)) * math.sqrt(sum(b * b for b in v1)))
    omega = math.acos(max(-1.0, min(1.0, cos)))
    s = math.sin(omega)
    return [(math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / s for a, b in zip(v0, v1)]


def test_nuslerp_weights_give_t_and_flatten_is_one_slerp() -> None:
    a, b = _randn(3, 4, seed=0), _randn(3, 4, seed=1)
    got = nuslerp([a, b], None, weights=[1.0, 3.0])  # t = 3/4
    expected = torch.tensor(shoemake(a.flatten().tolist(), b.flatten().tolist(), 0.75), dtype=D).reshape(3, 4)
    assert torch.allclose(got, expected)


def test_nuslerp_rows_and_columns() -> None:
    a, b = _randn(3, 4, seed=2), _randn(3, 4, seed=3)
    rows = nuslerp([a, b], None, weights=[2.0, 2.0], flatten=False)
    cols = nuslerp([a, b], None, weights=[2.0, 2.0], flatten=False, row_wise=True)
    for i in range(3):
        assert torch.allclose(rows[i], torch.tensor(shoemake(a[i].tolist(), b[i].tolist(), 0.5), dtype=D))
    for j in range(4):
        assert torch.allclose(cols[:, j], torch.tensor(shoemake(a[:, j].tolist(), b[:, j].tolist(), 0.5), dtype=D))


def test_nuslerp_with_base_interpolates_task_vectors() -> None:
    base, a, b = _randn(6, seed=4), _randn(6, seed=5), _randn(6, seed=6)
    got = nuslerp([a, b], base, weights=[0.3, 0.1])
    tau = shoemake((a - base).tolist(), (b - base).tolist(), 0.25)
    assert torch.allclose(got, base + torch.tensor(tau, dtype=D))


def test_nuslerp_lerps_colinear_rows_and_zero_weight_sum_means_halfway() -> None:
    a = torch.tensor([[1.0, 2.0], [1.0, 0.0]], dtype=D)
    b = torch.tensor([[2.0, 4.0], [0.0, 1.0]], dtype=D)
    got = nuslerp([a, b], None, weights=[1.0, -1.0], flatten=False)  # weights sum to 0: t = 0.5
    assert torch.allclose(got[0], torch.tensor([1.5, 3.0], dtype=D))
    assert torch.allclose(got[1], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)], dtype=D))


@pytest.mark.parametrize("flatten, row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_matches_mergekit_as_written(flatten: bool, row_wise: bool, with_base: bool) -> None:
    a, b, base = _randn(5, 7, seed=7), _randn(5, 7, seed=8), _randn(5, 7, seed=9)
    a[2] = 3 * b[2]  # a colinear row
    args = dict(weights=[0.4, 0.9], flatten=flatten, row_wise=row_wise)
    got = nuslerp([a, b], base if with_base else None, **args)  # type: ignore[arg-type]
    expected = mk.nuslerp_task([a, b], [0.4, 0.9], base if with_base else None, row_wise=row_wise, flatten=flatten)
    assert torch.allclose(got, expected)


def test_nuslerp_takes_exactly_two_models() -> None:
    with pytest.raises(ValueError, match="exactly two models"):
        nuslerp([_randn(3, seed=0)] * 3, None, weights=[1.0] * 3)


def test_multislerp_hand_computed() -> None:
    e1, e2 = torch.eye(2, dtype=D)
    got = multislerp([e1, 3 * e2], None, weights=[1.0, 3.0])  # weights → 1/4, 3/4
    # direction ∝ (1/4, 3/4), norm 1/4·1 + 3/4·3 = 2.5
    assert torch.allclose(got, 2.5 * torch.tensor([1.0, 3.0], dtype=D) / math.sqrt(10))


def test_multislerp_of_two_unit_vectors_with_equal_weights_is_the_slerp_midpoint() -> None:
    u0, u1 = _randn(5, seed=10), _randn(5, seed=11)
    u0, u1 = u0 / u0.norm(), u1 / u1.norm()
    mid = torch.tensor(shoemake(u0.tolist(), u1.tolist(), 0.5), dtype=D)
    assert torch.allclose(multislerp([u0, u1], None, weights=[2.0, 2.0]), mid)


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("normalize_weights", [True, False])
def test_multislerp_matches_mergekit_as_written(with_base: bool, normalize_weights: bool) -> None:
    xs = [_randn(4, 6, seed=s) for s in (12, 13, 14, 15)]
    base = _randn(4, 6, seed=16) if with_base else None
    w = [0.5, 1.0, 0.25, 2.0]
    got = multislerp(xs, base, weights=w, normalize_weights=normalize_weights)
    expected = mk.multislerp([x.clone() for x in xs], w, base, normalize_weights=normalize_weights)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_multislerp_cancelling_directions() -> None:
    a = _randn(4, seed=17)
    assert torch.allclose(multislerp([a, -a], None, weights=[1.0, 1.0]), mk.multislerp([a, -a], [1.0, 1.0]))
    with pytest.raises(ValueError, match="cancel out"):
        multislerp([a, -a, a, -a], None, weights=[1.0] * 4)


def test_spherical_kernels_return_the_base_dtype_and_compute_half_in_float32() -> None:
    a, b, base = (_randn(4, 4, seed=s).bfloat16() for s in (18, 19, 20))
    got = nuslerp([a, b], base, weights=[1.0, 1.0])
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, nuslerp([a.float(), b.float()], base.float(), weights=[1.0, 1.0]).bfloat16())
    assert multislerp([a, b], None, weights=[1.0, 2.0]).dtype == torch.bfloat16
