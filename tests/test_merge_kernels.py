"""Oracle tests of the per-tensor merge kernels: float64, small hand-made tensors, the published
formulas written out independently, and the laws that hold between the methods."""

from __future__ import annotations

import math

import mergekit_formulas as mk
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.ops.merge import kernels as K
from mlspec.ops.merge.sparsify import (
    MagnitudeThreshold,
    keep_band,
    keep_masks,
    magnitude_threshold,
    model_threshold,
)

D = torch.float64


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


BASE = t(0.0, 0.0, 0.0, 0.0, 0.0)
A = t(3.0, -1.0, 0.5, 2.0, 0.0)
B = t(-2.0, -2.0, 0.25, 1.0, 4.0)
C = t(1.0, 0.5, -0.5, -3.0, 1.0)


def test_linear_weighted_and_unnormalised() -> None:
    assert torch.allclose(K.linear(None, [A, B], weights=[3, 1]), (3 * A + B) / 4)
    assert torch.allclose(K.linear(None, [A, B], weights=[3, 1], normalize=False), 3 * A + B)
    assert torch.allclose(K.linear(None, [A, B, C]), (A + B + C) / 3)


def test_linear_zero_weight_sum_is_an_error() -> None:
    with pytest.raises(ValueError, match="sum to zero"):
        K.linear(None, [A, B], weights=[1, -1])


def test_weights_that_cannot_normalise_or_are_nan_are_errors_in_every_kernel() -> None:
    """A NaN weight or density would turn every merged entry into NaN without a word; a weight sum
    of zero or infinity cannot normalise. Each kernel that takes them says so."""
    from mlspec.ops.merge.spherical import multislerp

    nan, inf = math.nan, math.inf
    with pytest.raises(ValueError, match="not NaN"):
        K.linear(None, [A, B], weights=[1.0, nan])
    with pytest.raises(ValueError, match="not NaN"):
        K.task_arithmetic(A, [B, C], scales=[nan, 1.0])
    with pytest.raises(ValueError, match="not NaN"):
        K.ties(A, [B, C], density=[0.5, nan])
    with pytest.raises(ValueError, match="sum to inf"):
        K.linear(None, [A, B], weights=[1.0, inf])
    with pytest.raises(ValueError, match="sum to zero"):
        K.spherical_mean(None, [A, B], weights=[0.5, -0.5])
    with pytest.raises(ValueError, match="multislerp: the weights sum to zero"):
        multislerp([A, B, C], None, weights=[1.0, -2.0, 1.0])
    # the checks change nothing for good weights: the mean is the plain formula
    assert torch.equal(K.linear(None, [A, B], weights=[3.0, 1.0]), (3.0 * A + 1.0 * B) / 4.0)


def test_task_arithmetic_addition_negation_analogy() -> None:
    base = t(1.0, 1.0, 1.0, 1.0, 1.0)
    out = K.task_arithmetic(base, [A, B, C], scales=[1.0, 1.0, -1.0])
    assert torch.allclose(out, base + (A - base) + (B - base) - (C - base))
    assert torch.allclose(K.task_arithmetic(base, [A], scales=[-0.5]), base - 0.5 * (A - base))


def test_slerp_matches_shoemake_formula() -> None:
    v0, v1 = t(1.0, 0.0, 0.0), t(1.0, 1.0, 0.0)
    omega = math.acos(1 / math.sqrt(2))
    expected = (math.sin(0.7 * omega) * v0 + math.sin(0.3 * omega) * v1) / math.sin(omega)
    assert torch.allclose(K.slerp(None, [v0, v1], t=0.3), expected)
    assert torch.allclose(K.slerp(None, [v0, v1], t=0.0), v0)
    assert torch.allclose(K.slerp(None, [v0, v1], t=1.0), v1)


def test_slerp_falls_back_to_lerp_when_colinear() -> None:
    v0 = t(1.0, 2.0, 3.0)
    assert torch.allclose(K.slerp(None, [v0, 2 * v0], t=0.25), 1.25 * v0)


def test_slerp_with_base_interpolates_task_vectors() -> None:
    base = t(5.0, 5.0, 5.0)
    v0, v1 = t(1.0, 0.0, 0.0), t(0.0, 1.0, 0.0)
    assert torch.allclose(K.slerp(base, [base + v0, base + v1], t=0.5), base + K.slerp(None, [v0, v1], t=0.5))


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 0.95), st.integers(0, 10_000))
def test_spherical_mean_of_two_unit_tensors_is_slerp(w: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u0, u1 = (torch.randn(6, generator=g, dtype=D) for _ in range(2))
    u0, u1 = u0 / u0.norm(), u1 / u1.norm()
    mean = K.spherical_mean(None, [u0, u1], weights=[1 - w, w])
    assert torch.allclose(mean, K.slerp(None, [u0, u1], t=w), atol=1e-7)


def test_spherical_mean_scales_by_mean_norm() -> None:
    e1, e2, e3 = torch.eye(3, dtype=D)
    out = K.spherical_mean(None, [e1, 2 * e2, 3 * e3])
    assert math.isclose(out.norm().item(), 2.0, rel_tol=1e-9)
    assert torch.allclose(out / out.norm(), torch.ones(3, dtype=D) / math.sqrt(3))


def test_magnitude_threshold_keeps_floor_density_entries() -> None:
    x = t(0.1, -5.0, 2.0, -0.3, 4.0, 1.0, -1.5, 0.0, 0.2, 3.0)
    assert magnitude_threshold(x, 0.3) == 3.0  # keeps -5, 4, 3
    assert magnitude_threshold(x, 0.0) == math.inf
    assert magnitude_threshold(x, 1.0) == 0.0
    assert magnitude_threshold(x, 0.29) == 4.0  # ⌊2.9⌋ = 2 kept: -5, 4


def ties_oracle(base, tensors, density, weights, elect, weights_at, normalize, scale):  # type: ignore[no-untyped-def]
    """TIES written out coordinate by coordinate in Python floats (paper Algorithm 1 + variants);
    ``density`` is one value or one per model."""
    deltas = [[float(v) - float(b) for v, b in zip(x, base)] for x in tensors]
    densities = density if isinstance(density, list) else [density] * len(tensors)
    trimmed = []
    for d, kept in zip(deltas, densities):
        k = int(kept * len(d) + 1e-9)
        cut = sorted((abs(v) for v in d), reverse=True)[k - 1] if k else math.inf
        trimmed.append([v if abs(v) >= cut else 0.0 for v in d])
    out = []
    for p in range(len(base)):
        vals = [tr[p] for tr in trimmed]
        voters = [w * v for w, v in zip(weights, vals)] if weights_at == "before" else vals
        vote = sum(math.copysign(1, v) if v else 0 for v in voters) if elect == "count" else sum(voters)
        sign = 1.0 if vote >= 0 else -1.0
        agree = [i for i, v in enumerate(voters) if v != 0 and math.copysign(1, v) == sign]
        total = sum(weights[i] * vals[i] for i in agree)
        if normalize and agree:
            total /= sum(weights[i] for i in agree)
        out.append(float(base[p]) + scale * total)
    return torch.tensor(out, dtype=D)


@pytest.mark.parametrize("elect", ["mass", "count"])
@pytest.mark.parametrize("weights_at", ["after", "before"])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_matches_oracle(elect: str, weights_at: str, normalize: bool) -> None:
    weights = [1.0, -0.5, 2.0]
    args = dict(density=0.6, weights=weights, elect=elect, weights_at=weights_at, normalize=normalize, scale=1.3)
    got = K.ties(BASE + 1, [A + 1, B + 1, C + 1], **args)  # type: ignore[arg-type]
    assert torch.allclose(got, ties_oracle(BASE + 1, [A + 1, B + 1, C + 1], **args))


def test_ties_hand_computed_paper_example() -> None:
    got = K.ties(BASE, [A, B, C], density=0.6)  # keeps 3 of 5 (ties at the cut all kept)
    # trimmed: A=(3,-1,0,2,0) B=(-2,-2,0,0,4) C=(1,0,0,-3,1)
    # mass votes: (2,-3,0,-1,5) -> signs (+,-,+,-,+); disjoint means: 2, -1.5, 0, -3, 2.5
    assert torch.allclose(got, t(2.0, -1.5, 0.0, -3.0, 2.5))


def test_weights_before_election_change_the_vote() -> None:
    """mergekit #474: with weights applied before the vote a heavy model wins the sign."""
    x, y = t(1.0), t(-3.0)
    after = K.ties(t(0.0), [x, y], density=1.0, weights=[5.0, 1.0], weights_at="after")
    before = K.ties(t(0.0), [x, y], density=1.0, weights=[5.0, 1.0], weights_at="before")
    assert after.item() == -3.0 and before.item() == 1.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(-2.0, 2.0).filter(lambda s: abs(s) > 1e-3))
def test_ties_density_one_single_model_is_task_arithmetic(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    base, x = torch.randn(4, 3, generator=g, dtype=D), torch.randn(4, 3, generator=g, dtype=D)
    got = K.ties(base, [x], density=1.0, scale=scale)
    assert torch.allclose(got, K.task_arithmetic(base, [x], scales=[scale]))


def test_ties_model_thresholds_reproduce_global_trim() -> None:
    base = torch.zeros(2, 3, dtype=D)
    x = t(10.0, 9.0, 0.1, 0.2, 0.3, 0.4).reshape(2, 3)
    thr = model_threshold(lambda: [x.flatten()], 2 / 6)
    # whole-model top-2 keeps only the first row; per-tensor trim of one row would keep one in each
    assert torch.equal(K.ties(base, [x], density=1 / 3, thresholds=[thr]), t(10.0, 9.0, 0, 0, 0, 0).reshape(2, 3))
    rows = [K.ties(base[i], [x[i]], density=1 / 3) for i in range(2)]
    assert torch.equal(torch.stack(rows), t(10.0, 0, 0, 0, 0, 0.4).reshape(2, 3))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0), st.integers(1, 4))
def test_streaming_threshold_is_exact(seed: int, density: float, parts: int) -> None:
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(int(torch.randint(1, 50, (1,), generator=g)), generator=g) * 10 ** (i - 2) for i in range(parts)]
    everything = torch.cat(chunks).abs()
    th = MagnitudeThreshold(density)
    for c in chunks:
        th.observe(c)
    for c in chunks:
        th.refine(c)
    assert th.value == magnitude_threshold(everything, density)


def test_dare_inverse_rescale_matches_mask() -> None:
    base, x = torch.zeros(1000, dtype=D), torch.linspace(-1, 1, 1000, dtype=D)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    got = K.dare(base, [x], density=0.3, generator=g1)
    (keep,) = keep_masks((1000,), [0.3], g2)
    assert 200 < int(keep.sum()) < 400
    assert torch.allclose(got, x * keep / 0.3)


def test_dare_l1_rescale_preserves_l1_norm() -> None:
    x = torch.linspace(-1, 1, 1000, dtype=D)
    got = K.dare(torch.zeros_like(x), [x], density=0.3, rescale="l1", generator=torch.Generator().manual_seed(1))
    assert math.isclose(got.abs().sum().item(), x.abs().sum().item(), rel_tol=1e-12)
    assert (got != 0).sum() < 400


def test_dare_density_one_is_task_arithmetic_and_ties_variant_elects() -> None:
    assert torch.allclose(K.dare(BASE, [A, B], density=1.0, scale=0.5), 0.5 * (A + B))
    assert torch.allclose(K.dare(BASE, [A, B, C], density=1.0, consensus="mass", normalize=True),
                          K.ties(BASE, [A, B, C], density=1.0))


def test_dare_is_deterministic_per_seed() -> None:
    x = torch.randn(50, dtype=D)
    def run(s):
        return K.dare(torch.zeros_like(x), [x], generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


def test_breadcrumbs_band_keeps_the_middle() -> None:
    x = t(*range(1, 11))  # magnitudes 1..10
    assert torch.equal(keep_band(x, density=0.5, gamma=0.2), t(0, 0, 0, 4, 5, 6, 7, 8, 0, 0))
    assert torch.equal(keep_band(x, density=0.9, gamma=0.2), t(1, 2, 3, 4, 5, 6, 7, 8, 9, 0))  # top cut shrinks
    assert torch.allclose(K.breadcrumbs(torch.zeros(10, dtype=D), [x, x], density=0.5, gamma=0.2, scale=0.5),
                          keep_band(x, density=0.5, gamma=0.2))


def test_model_stock_formula() -> None:
    base = t(1.0, 1.0)
    x, y = base + t(1.0, 0.0), base + t(1.0, 1.0)
    cos = 1 / math.sqrt(2)
    ratio = 2 * cos / (1 + cos)
    expected = ratio * (x + y) / 2 + (1 - ratio) * base
    for mean in ("cosine", "angle"):
        assert torch.allclose(K.model_stock(base, [x, y], mean=mean), expected)  # type: ignore[arg-type]


def test_model_stock_cosine_vs_angle_differ_for_three() -> None:
    base = torch.zeros(3, dtype=D)
    e1, e2 = t(1.0, 0.0, 0.0), t(0.0, 1.0, 0.0)
    models = [e1, e1, e2]  # pairwise cosines 1, 0, 0
    by_cos, by_angle = 1 / 3, math.cos(math.pi / 3)
    centre = (2 * e1 + e2) / 3
    for mean, cos in (("cosine", by_cos), ("angle", by_angle)):
        ratio = 3 * cos / (1 + 2 * cos)
        assert torch.allclose(K.model_stock(base, models, mean=mean), ratio * centre)  # type: ignore[arg-type]


def test_fisher_weighted_formula_and_uniform_fisher_is_average() -> None:
    fa, fb = t(1.0, 0.0, 2.0, 1.0, 3.0), t(3.0, 1.0, 2.0, 0.0, 1.0)
    got = K.fisher(None, [A, B], fishers=[fa, fb], weights=[1.0, 2.0], eps=1e-12)
    num = fa * A + 2 * fb * B
    den = fa + 2 * fb
    assert torch.allclose(got, num / den)
    assert torch.allclose(K.fisher(None, [A, B], fishers=[torch.ones(5, dtype=D)] * 2), (A + B) / 2)


def test_regmean_solves_the_least_squares_problem() -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(30, 4, generator=g, dtype=D) for _ in range(2)]
    ws = [torch.randn(3, 4, generator=g, dtype=D) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    got = K.regmean(None, ws, grams=grams, alpha=1.0)
    # the minimiser of Σᵢ‖XᵢWᵀ − XᵢWᵢᵀ‖² via one stacked least-squares problem
    stacked_x = torch.cat(xs)
    stacked_y = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    assert torch.allclose(got, torch.linalg.lstsq(stacked_x, stacked_y).solution.T)


def test_regmean_alpha_zero_is_diagonal_and_no_gram_is_average() -> None:
    grams = [torch.diag(t(1.0, 3.0)) + 0.5, torch.diag(t(2.0, 1.0)) + 0.5]
    ws = [t(1.0, 2.0).reshape(1, 2), t(3.0, 6.0).reshape(1, 2)]
    diag = [torch.diagonal(g) for g in grams]
    expected = (diag[0] * ws[0] + diag[1] * ws[1]) / (diag[0] + diag[1])
    assert torch.allclose(K.regmean(None, ws, grams=grams, alpha=0.0), expected)
    assert torch.allclose(K.regmean(None, ws), (ws[0] + ws[1]) / 2)


def test_half_precision_inputs_keep_their_dtype() -> None:
    a, b = A.to(torch.bfloat16), B.to(torch.bfloat16)
    assert K.linear(None, [a, b]).dtype == torch.bfloat16
    assert K.ties(BASE.to(torch.float16), [A.half(), B.half()]).dtype == torch.float16


# --- per-model densities (mergekit allows one density, and gamma, per model) -----------------------


@pytest.mark.parametrize("elect", ["mass", "count"])
def test_ties_per_model_density_matches_oracle(elect: str) -> None:
    args = dict(density=[0.2, 0.6, 1.0], weights=[1.0, 2.0, 0.5], elect=elect, weights_at="after", normalize=True, scale=1.0)
    got = K.ties(BASE, [A, B, C], **args)  # type: ignore[arg-type]
    assert torch.allclose(got, ties_oracle(BASE, [A, B, C], **args))


def test_ties_per_model_density_hand_computed() -> None:
    # trimmed: A keeps 3 only (0.2·5 = 1), B keeps -2, -2, 4, C keeps everything
    # mass votes (2, -1.5, -0.5, -3, 5) -> signs (+, -, -, -, +); disjoint means 2, -2, -0.5, -3, 2.5
    assert torch.allclose(K.ties(BASE, [A, B, C], density=[0.2, 0.6, 1.0]), t(2.0, -2.0, -0.5, -3.0, 2.5))


def test_sparse_kernels_give_the_same_result_for_a_float_and_a_list_of_it() -> None:
    models = [A + 1, B + 1, C + 1]
    assert torch.equal(K.ties(BASE + 1, models, density=0.6), K.ties(BASE + 1, models, density=[0.6] * 3))
    assert torch.equal(
        K.breadcrumbs(BASE + 1, models, density=0.6, gamma=0.2),
        K.breadcrumbs(BASE + 1, models, density=[0.6] * 3, gamma=[0.2] * 3),
    )
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(
        K.dare(BASE + 1, models, density=0.4, generator=g1), K.dare(BASE + 1, models, density=[0.4] * 3, generator=g2)
    )


def test_dare_per_model_density_draws_model_by_model() -> None:
    base, x, y = torch.zeros(200, dtype=D), torch.linspace(-1, 1, 200, dtype=D), torch.linspace(2, 3, 200, dtype=D)
    got = K.dare(base, [x, y], density=[0.3, 0.8], weights=[1.0, 0.5], generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    keep_x, keep_y = keep_masks((200,), [0.3], g) + keep_masks((200,), [0.8], g)  # model after model
    assert torch.allclose(got, x * keep_x / 0.3 + 0.5 * y * keep_y / 0.8)


def test_breadcrumbs_per_model_density_and_gamma() -> None:
    x = t(*range(1, 11))
    y = -x
    got = K.breadcrumbs(torch.zeros(10, dtype=D), [x, y], density=[0.5, 0.9], gamma=[0.2, 0.0])
    assert torch.equal(got, keep_band(x, density=0.5, gamma=0.2) + keep_band(y, density=0.9, gamma=0.0))
    assert torch.equal(got, t(0, -2, -3, 0, 0, 0, 0, 0, -9, -10))


@pytest.mark.parametrize("kernel", [K.ties, K.dare, K.breadcrumbs])
def test_per_model_density_needs_one_value_per_model(kernel) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=r"expected 2 densities, one per model"):
        kernel(BASE, [A, B], density=[0.5, 0.5, 0.5])


# --- rescale (mergekit's `rescale: true` for ties and breadcrumbs) -----------------------------------


@pytest.mark.parametrize("rescale", [False, True])
def test_ties_matches_mergekit_as_written(rescale: bool) -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g, dtype=D)
    xs = [base + torch.randn(6, 8, generator=g, dtype=D) for _ in range(3)]
    weights, density = [0.7, 1.3, 1.0], [0.3, 0.5, 0.8]
    got = K.ties(base, xs, density=density, weights=weights, weights_at="before", scale=0.9,
                 rescale="l1" if rescale else "none")
    expected = mk.gta(base, xs, weights=weights, sparsify=lambda d, i: mk.magnitude(d, density[i], rescale),
                      consensus="sum", normalize=True, lambda_=0.9)
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("consensus", [None, "mass"])
def test_breadcrumbs_matches_mergekit_as_written(rescale: bool, consensus: str | None) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(5, 9, generator=g, dtype=D)
    xs = [base + torch.randn(5, 9, generator=g, dtype=D) for _ in range(2)]
    weights, density, gamma = [0.5, 1.5], [0.6, 0.8], [0.1, 0.05]
    got = K.breadcrumbs(base, xs, density=density, gamma=gamma, weights=weights, consensus=consensus,  # type: ignore[arg-type]
                        weights_at="before", rescale="l1" if rescale else "none")
    expected = mk.gta(base, xs, weights=weights,
                      sparsify=lambda d, i: mk.magnitude_outliers(d, density[i], gamma[i], rescale),
                      consensus="sum" if consensus else None, normalize=False, lambda_=1.0)
    assert torch.allclose(got, expected)


def test_l1_rescale_restores_the_norm_of_each_trimmed_task_vector() -> None:
    x = t(4.0, -1.0, 0.5, 2.0, -0.25)
    kept = K.ties(torch.zeros(5, dtype=D), [x], density=0.4, rescale="l1")  # keeps 4 and 2, norm 7.75
    assert torch.allclose(kept, t(4.0, 0.0, 0.0, 2.0, 0.0) * 7.75 / 6.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_sign_conflicts_against_a_base_are_the_signs_of_the_differences(dtype: torch.dtype) -> None:
    """Oracle: the definition on explicit float64 task vectors (signs of θᵢ − base, some positive and
    some negative), with equal entries, infinities and NaN among the inputs."""
    from mlspec.ops.merge.stats import sign_conflicts

    g = torch.Generator().manual_seed(0)
    base = torch.randn(3000, generator=g).to(dtype)
    models = [(base.double() + torch.randn(3000, generator=g) * (torch.rand(3000, generator=g) < 0.7)).to(dtype)
              for _ in range(3)]
    models[0][:40] = math.inf
    models[1][20:60] = -math.inf
    models[2][50:90] = math.nan
    base[100:120] = math.inf
    signs = torch.stack([(m.double() - base.double()).sign() for m in models])
    expected = (signs.amax(0) > 0) & (signs.amin(0) < 0)
    for n in (1, 2, 3):
        expected_n = (signs[:n].amax(0) > 0) & (signs[:n].amin(0) < 0)
        assert torch.equal(sign_conflicts(models[:n], base), expected_n)
    assert torch.equal(sign_conflicts([m.double() - base.double() for m in models]), expected)
    assert 0 < int(expected.sum()) < 3000
