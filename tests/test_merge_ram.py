"""RAM and RAM+ (tensor-local): a float64 oracle written out entry by entry, and mergekit's
formulas as written in its code (tests/mergekit_formulas.py)."""

from __future__ import annotations

import mergekit_formulas as mk
import pytest
import torch

from mlspec.ops.merge.ram import ram, ramplus_tl

D = torch.float64


def _sparse_models(seed: int = 0, n: int = 3, shape: tuple[int, ...] = (6, 10)):  # type: ignore[no-untyped-def]
    """Sparse, partly overlapping task vectors, as RL fine-tuning produces."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g, dtype=D)
    xs = []
    for _ in range(n):
        keep = torch.rand(shape, generator=g) < 0.4
        xs.append(base + torch.randn(shape, generator=g, dtype=D) * keep + 1e-7 * torch.randn(shape, generator=g, dtype=D))
    return base, xs


def ram_oracle(base, xs, epsilon, r=None, alpha=None):  # type: ignore[no-untyped-def]
    b = base.flatten().tolist()
    taus = [[xv - bv for xv, bv in zip(x.flatten().tolist(), b)] for x in xs]
    changed = [[abs(v) > epsilon for v in t] for t in taus]
    count = [sum(c[j] for c in changed) for j in range(len(b))]
    lam = [1.0] * len(xs)
    if r is not None:
        for i, c in enumerate(changed):
            shared = sum(1 for j, ch in enumerate(c) if ch and count[j] > 1)
            unique = sum(1 for j, ch in enumerate(c) if ch and count[j] == 1)
            lam[i] = 1 + r * min(max(shared / max(unique, epsilon), 0.0), alpha)
    out = []
    for j, bv in enumerate(b):
        if count[j] == 1:
            i = next(i for i, c in enumerate(changed) if c[j])
            out.append(bv + lam[i] * taus[i][j])
        elif count[j] > 1:
            out.append(bv + sum(t[j] for t, c in zip(taus, changed) if c[j]) / count[j])
        else:
            out.append(bv)
    return torch.tensor(out, dtype=D).reshape(base.shape)


def test_ram_hand_computed() -> None:
    base = torch.zeros(4, dtype=D)
    a = torch.tensor([1.0, 2.0, 0.0, 1e-6], dtype=D)
    b = torch.tensor([0.0, 4.0, -3.0, 0.0], dtype=D)
    # unique: a's 1.0, b's -3.0; shared: (2 + 4)/2; 1e-6 is below epsilon: unchanged
    assert torch.allclose(ram([a, b], base), torch.tensor([1.0, 3.0, -3.0, 0.0], dtype=D))


def test_ram_matches_float_oracle_and_mergekit_as_written() -> None:
    base, xs = _sparse_models()
    got = ram(xs, base, epsilon=1e-5)
    assert torch.allclose(got, ram_oracle(base, xs, 1e-5))
    assert torch.allclose(got, mk.ram_merge(xs, base, 1e-5))


@pytest.mark.parametrize("r, alpha", [(0.1, 0.2), (0.5, 2.0), (1.0, 0.0)])
def test_ramplus_tl_matches_float_oracle_and_mergekit_as_written(r: float, alpha: float) -> None:
    base, xs = _sparse_models(seed=1, n=4)
    got = ramplus_tl(xs, base, r=r, alpha=alpha, epsilon=1e-5)
    assert torch.allclose(got, ram_oracle(base, xs, 1e-5, r=r, alpha=alpha))
    assert torch.allclose(got, mk.ramplus_tl_merge(xs, base, r=r, alpha=alpha, epsilon=1e-5))


def test_ramplus_tl_with_a_model_without_unique_entries() -> None:
    base = torch.zeros(3, dtype=D)
    a = torch.tensor([1.0, 1.0, 0.0], dtype=D)
    b = torch.tensor([1.0, 1.0, 2.0], dtype=D)  # a shares everything, b has one unique entry
    got = ramplus_tl([a, b], base, r=0.5, alpha=1.0)
    # b: ρ = 2 shared / 1 unique → clamp to 1 → λ = 1.5
    assert torch.allclose(got, torch.tensor([1.0, 1.0, 3.0], dtype=D))
    assert torch.allclose(got, mk.ramplus_tl_merge([a, b], base, r=0.5, alpha=1.0))


def test_ram_refuses_negative_epsilon_and_alpha() -> None:
    base, xs = _sparse_models()
    with pytest.raises(ValueError, match="epsilon must be ≥ 0"):
        ram(xs, base, epsilon=-1.0)
    with pytest.raises(ValueError, match="alpha must be ≥ 0"):
        ramplus_tl(xs, base, alpha=-0.1)


def test_ram_returns_the_base_dtype() -> None:
    base, xs = _sparse_models()
    assert ram([x.bfloat16() for x in xs], base.bfloat16()).dtype == torch.bfloat16
