"""Exact k-th magnitude selection (radix select on bit patterns) against sorting, on the inputs that
break selection code: ties, zeros, subnormals, infinities, NaN, every float width, streams."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.ops.merge.sparsify import MagnitudeThreshold, kth_smallest, magnitude_threshold

FLOATS = [torch.bfloat16, torch.float16, torch.float32, torch.float64]


def magnitudes(kind: str, n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    if kind == "random":  # many binades, subnormals of float32 included
        x = torch.randn(n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-40, 8, (n,), generator=g)
    elif kind == "tied":  # a few distinct values, each repeated
        x = torch.randint(0, 4, (n,), generator=g).double() * 0.375
    elif kind == "zero_heavy":
        x = torch.randn(n, generator=g, dtype=torch.float64) * (torch.rand(n, generator=g) < 0.05)
    else:  # one bucket: values that share their top 16 bits, so the lower digits decide
        x = 1.0 + torch.randint(0, 2**12, (n,), generator=g).double() * 2.0**-40
    return x.abs().to(dtype)


def sorted_kth(x: torch.Tensor, k: int) -> float:
    return float(torch.sort(x.flatten().double()).values[k - 1])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.sampled_from(["random", "tied", "zero_heavy", "one_bucket"]),
    st.sampled_from(FLOATS),
    st.integers(1, 3000),
    st.floats(0.0, 1.0),
)
def test_kth_smallest_equals_sorting(seed: int, kind: str, dtype: torch.dtype, n: int, q: float) -> None:
    x = magnitudes(kind, n, dtype, torch.Generator().manual_seed(seed))
    k = 1 + min(n - 1, int(q * n))
    assert kth_smallest(x, k) == sorted_kth(x, k)


@pytest.mark.parametrize("dtype", FLOATS)
def test_infinities_and_nan_sort_last(dtype: torch.dtype) -> None:
    x = torch.tensor([3.0, math.inf, 0.0, math.nan, 1.0, 1.0], dtype=dtype).abs()
    assert [kth_smallest(x, k) for k in range(1, 6)] == [0.0, 1.0, 1.0, 3.0, math.inf]
    assert math.isnan(kth_smallest(x, 6))


def test_integer_magnitudes_fall_back_to_kthvalue() -> None:
    assert kth_smallest(torch.tensor([5, 0, 7, 7, 2]), 4) == 7.0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(FLOATS), st.floats(0.0, 1.0))
def test_threshold_keeps_at_least_k_and_every_tie(seed: int, dtype: torch.dtype, density: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(-6, 7, (257,), generator=g) * 0.25).to(dtype)  # signed, heavily tied
    k = int(density * x.numel() + 1e-9)
    cut = magnitude_threshold(x, density)
    if k == 0:
        assert cut == math.inf
        return
    kept, above = (x.abs() >= cut).sum().item(), (x.abs() > cut).sum().item()
    assert above < k <= kept  # the k-th largest magnitude: everything equal to it is kept
    assert cut == sorted_kth(x.abs(), x.numel() - k + 1)


def stream(seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(int(n), generator=g) * 10.0 ** (i - 2)).to(dtype) for i, n in enumerate(torch.randint(100, 400, (4,), generator=g))]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.99))
def test_bf16_stream_is_exact_after_one_pass(seed: int, density: float) -> None:
    chunks = stream(seed, torch.bfloat16)
    th = MagnitudeThreshold(density)
    for c in chunks:
        th.observe(c)
    assert not th.needs_refine
    assert th.value == magnitude_threshold(torch.cat(chunks).float(), density)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 0.99))
def test_mixed_stream_refines_at_float32_precision(seed: int, density: float) -> None:
    chunks = stream(seed, torch.bfloat16) + stream(seed + 1, torch.float64)
    th = MagnitudeThreshold(density)
    for c in chunks:
        th.observe(c)
    assert th.needs_refine
    for c in chunks:
        th.refine(c)
    assert th.value == magnitude_threshold(torch.cat([c.float() for c in chunks]), density)


# --- the branch-free and block-wise paths the streaming merge relies on (oracles: masks, sorting) ---

from mlspec.ops.merge import kernels as K  # noqa: E402
from mlspec.ops.merge.sparsify import (  # noqa: E402
    band_thresholds,
    drop_l1_factor,
    keep_between,
    keep_masks,
    keep_top,
    kth_smallest_of,
)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(FLOATS), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_kth_smallest_of_several_ranks_equals_sorting(seed: int, dtype: torch.dtype, qs: list[float]) -> None:
    x = magnitudes("random", 2000, dtype, torch.Generator().manual_seed(seed))
    ks = [1 + min(1999, int(q * 2000)) for q in qs]
    assert kth_smallest_of(x, ks) == [sorted_kth(x, k) for k in ks]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_keep_top_is_the_mask_formula_at_every_edge(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(-6, 7, (999,), generator=g) * 0.25).to(dtype)  # heavy ties at every threshold
    x[:4] = torch.tensor([math.inf, -math.inf, math.nan, -0.0], dtype=dtype)
    for threshold in [0.0, 0.25, 0.5, 1.5, float(x[4:].abs().max()), math.inf, 1e-45]:
        expected = x * (x.abs() >= threshold)
        got = keep_top(x, threshold)
        assert torch.equal(got.isnan(), expected.isnan()), threshold
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), threshold


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0), st.floats(0.0, 0.5))
def test_keep_between_equals_the_band_mask(seed: int, density: float, gamma: float) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 9, (400,), generator=g) * 0.125 + torch.randn(400, generator=g) * 1e-3 * (seed % 2)
    band = band_thresholds(x, density=density, gamma=gamma)
    if band is None:
        assert torch.equal(keep_between(x, band), torch.zeros_like(x))
        return
    lower, upper = band
    mask = (x.abs() <= upper) & ((x.abs() > lower) if lower is not None else True)
    assert torch.equal(keep_between(x, band), x * mask)
    mags = sorted(x.abs().tolist())
    assert upper in mags and (lower is None or lower in mags)


def _pcg_masks(shape: tuple[int, ...], densities: list[float], g: torch.Generator) -> list[torch.Tensor]:
    """The oracle: per model, one 63-bit seed drawn from ``g``, the whole PCG64DXSM stream of 32-bit
    integers at once, compared with ceil(density · 2³²)."""
    import numpy as np

    out = []
    n = math.prod(shape)
    for d in densities:
        seed = int(torch.randint(0, 2**63 - 1, (), generator=g))
        u = np.random.PCG64DXSM(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
        out.append(torch.from_numpy(u.astype(np.uint64) < math.ceil(d * 2**32)).reshape(shape))
    return out


def test_keep_masks_drawn_in_blocks_are_the_whole_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks draw the same numbers as one whole draw per model, model after model (an odd block
    size and a short last block included)."""
    import mlspec.ops.merge.sparsify as sp

    for block in (71, 70, 1 << 19):
        monkeypatch.setattr(sp, "_BLOCK", block)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        masks = keep_masks((53, 10), [0.3, 0.8, 1.0, 0.0], g1)
        expected = _pcg_masks((53, 10), [0.3, 0.8, 1.0, 0.0], g2)
        assert all(torch.equal(m, e) for m, e in zip(masks, expected)), block
        assert masks[2].all() and not masks[3].any()
        assert torch.equal(g1.get_state(), g2.get_state())  # one draw of the generator per model
    (scalar,) = keep_masks((), [0.5], torch.Generator().manual_seed(1))
    assert scalar.shape == ()
    with pytest.raises(ValueError, match="density"):
        keep_masks((3,), [1.5])


def test_keep_masks_keep_each_entry_with_probability_density() -> None:
    g = torch.Generator().manual_seed(0)
    n = 1_000_000
    for density in (0.1, 0.5, 0.9, 1e-3):
        (mask,) = keep_masks((n,), [density], g)
        sd = math.sqrt(density * (1 - density) / n)
        assert abs(float(mask.float().mean()) - density) < 5 * sd, density
    a, b = keep_masks((n,), [0.5, 0.5], g)
    assert abs(float((a & b).float().mean()) - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)  # independent models


def test_drop_l1_factor_is_the_norm_ratio() -> None:
    g = torch.Generator().manual_seed(2)
    delta = torch.randn(300, 7, generator=g)
    mask = torch.rand(300, 7, generator=g) < 0.4
    expected = delta.double().abs().sum() / (delta.double() * mask).abs().sum()
    assert math.isclose(drop_l1_factor(delta, mask), float(expected), rel_tol=1e-9)
    assert drop_l1_factor(delta, torch.zeros_like(mask)) == 1.0
    # magnitudes in blocks of any size (here 11 rows) meet the mask entries they belong to
    from mlspec.ops.merge.sparsify import BlockMagnitudes

    blocks = BlockMagnitudes(lambda: (delta[i : i + 11].abs() for i in range(0, 300, 11)), delta.numel(),
                             delta.dtype)
    assert math.isclose(drop_l1_factor(blocks, mask), float(expected), rel_tol=1e-9)
    with pytest.raises(ValueError, match=r"task vector \(\[300, 7\]\) does not match its mask \(\[299, 7\]\)"):
        drop_l1_factor(delta, mask[:299])


def _stacked_consensus(deltas, weights, elect, weights_at, normalize):  # type: ignore[no-untyped-def]
    """TIES' election and disjoint merge written with stacked masks: the reference."""
    weighted = [w * d for w, d in zip(weights, deltas)]
    voters = torch.stack(weighted if weights_at == "before" else list(deltas))
    votes = voters.sign() if elect == "count" else voters
    elected = torch.where(votes.sum(0) >= 0, 1.0, -1.0).to(voters.dtype)
    mask = (voters.sign() == elected).to(voters.dtype)
    mixed = (torch.stack(weighted) * mask).sum(0)
    if normalize:
        w = torch.tensor(weights, dtype=voters.dtype).reshape(-1, *([1] * (voters.dim() - 1)))
        divisor = (w * mask).sum(0)
        mixed = mixed / torch.where(divisor.abs() < 1e-12, torch.ones_like(divisor), divisor)
    return mixed


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000), st.integers(1, 4), st.sampled_from(["mass", "count"]),
    st.sampled_from(["before", "after"]), st.booleans(), st.sampled_from(["equal", "positive", "signed", "zero"]),
)
def test_branch_free_consensus_is_bit_identical_to_the_stacked_masks(
    seed: int, n: int, elect: str, weights_at: str, normalize: bool, kind: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(64, 9, generator=g) * (torch.rand(64, 9, generator=g) < 0.6) for _ in range(n)]
    if n > 1:
        deltas[1][:4] = -deltas[0][:4]  # votes that cancel exactly
    weights = {"equal": [1.0] * n, "positive": [0.7, 1.3, 0.2, 2.0][:n],
               "signed": [1.0, -0.5, 0.3, 1.2][:n], "zero": [0.0, 1.0, 1.0, 1.0][:n]}[kind]
    got = K.consensus_sum(deltas, weights, elect=elect, weights_at=weights_at, normalize=normalize)  # type: ignore[arg-type]
    assert torch.equal(got, _stacked_consensus(deltas, weights, elect, weights_at, normalize))


def test_cosine_by_blocks_matches_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    import mlspec.ops.merge.sparsify as sp

    monkeypatch.setattr(sp, "_BLOCK", 64)
    g = torch.Generator().manual_seed(3)
    base, a, b = (torch.randn(40, 16, generator=g) for _ in range(3))
    da, db = (a - base).double().flatten(), (b - base).double().flatten()
    expected = float(da @ db / (da.norm() * db.norm()))
    assert math.isclose(K.cosine(a, b, base, eps=0.0), expected, rel_tol=1e-6)
    assert math.isclose(K.cosine(a.bfloat16(), b.bfloat16(), eps=0.0),
                        K.cosine(a.bfloat16().float(), b.bfloat16().float(), eps=0.0), rel_tol=0, abs_tol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]),
       st.integers(1, 40), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3))
def test_selection_over_blocks_equals_the_whole_tensor(seed: int, dtype: torch.dtype, rows: int,
                                                       qs: list[float]) -> None:
    """Ranks, thresholds and bands selected block by block (many small blocks, heavy ties, an inf)
    are exactly those of the magnitudes held whole."""
    import mlspec.ops.merge.sparsify as sp

    g = torch.Generator().manual_seed(seed)
    whole = (torch.randint(0, 9, (rows, 37), generator=g) * 0.125 + torch.rand(rows, 37, generator=g)
             * 1e-3 * (seed % 2)).to(dtype)
    whole[0, 0] = math.inf
    blocks = sp.BlockMagnitudes(lambda: (whole[i : i + 3] for i in range(0, rows, 3)), whole.numel(), dtype)
    n = whole.numel()
    ks = [1 + min(n - 1, int(q * n)) for q in qs]
    assert sp.kth_smallest_of(blocks, ks) == sp.kth_smallest_of(whole, ks) == [sorted_kth(whole, k) for k in ks]
    for q in qs:
        assert sp.threshold_of_magnitudes(blocks, q) == sp.threshold_of_magnitudes(whole, q)
        assert (band_thresholds(blocks, density=q, gamma=q / 3)
                == band_thresholds(whole, density=q, gamma=q / 3, magnitudes=True))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([torch.float32, torch.float64]),
       st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3), st.sampled_from(["fair", "misleading"]))
def test_windowed_selection_over_blocks_is_exact_even_when_the_sample_misleads(
        seed: int, dtype: torch.dtype, qs: list[float], sampler: str) -> None:
    """The one-pass selection places windows from a sample; a fair sample or one that puts every
    window in the wrong place (forcing the two-pass fallback), the ranks are exact."""
    import mlspec.ops.merge.sparsify as sp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sp, "_SAMPLES", 64)
        _check_windowed(sp, seed, dtype, qs, sampler)


def _check_windowed(sp, seed: int, dtype: torch.dtype, qs: list[float], sampler: str) -> None:
    g = torch.Generator().manual_seed(seed)
    # Odd seeds: distinct values (windows gather entries); even: 40 values, each repeated (counted).
    whole = (torch.randint(0, 40, (1200,), generator=g) * 0.125
             + torch.rand(1200, generator=g) * 1e-3 * (seed % 2)).to(dtype)
    whole[7] = math.inf

    def sample(step: int) -> torch.Tensor:
        return whole[::step] if sampler == "fair" else torch.zeros(64, dtype=dtype)

    blocks = sp.BlockMagnitudes(lambda: (whole[i : i + 100] for i in range(0, 1200, 100)), 1200, dtype, sample)
    ks = [1 + min(1199, int(q * 1200)) for q in qs]
    found: list[object] = []
    windowed = sp._windowed
    sp._windowed = lambda *a: found.append(windowed(*a)) or found[-1]
    try:
        assert sp.kth_smallest_of(blocks, ks) == [sorted_kth(whole, k) for k in ks]
    finally:
        sp._windowed = windowed
    if sampler == "misleading" and all(0.2 < q < 0.8 for q in qs):
        assert found == [None]  # every window missed: the two-pass fallback answered


@pytest.mark.parametrize("missed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_windows_of_few_values_are_counted_in_one_pass_even_when_the_sample_missed_one(
        missed: bool, dtype: torch.dtype) -> None:
    """Heavily tied magnitudes (a quarter of all entries share the value at the rank, too many to
    gather) whose window spans far more patterns than a histogram holds: counted value by value,
    in one pass. A value the sample never saw, from the fourth block on, switches that window to
    gathering without losing the counts before it. Exact either way."""
    import mlspec.ops.merge.sparsify as sp

    g = torch.Generator().manual_seed(1)
    levels = torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0])
    whole = levels[torch.randint(0, 5, (4000,), generator=g)].to(dtype)
    if missed:
        whole[2000:2100] = 1.5  # inside the window around the median, absent from the sample
    sample = levels.to(dtype).repeat(20)  # the sample: the five levels only

    blocks = sp.BlockMagnitudes(lambda: (whole[i : i + 500] for i in range(0, 4000, 500)), 4000, dtype,
                                lambda step: sample)
    ks = [1 + int(q * 4000) for q in (0.3, 0.5, 0.52, 0.9)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sp, "_SAMPLES", 64)
        if missed:  # after the miss, float32 windows gather a third of the entries: allow it
            mp.setattr(sp, "_GATHER_SHARE", 1)
        found = sp._windowed(blocks, ks)
    assert found is not None  # one pass answered, no fallback
    assert found == [sorted_kth(whole, k) for k in ks]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_mask_as_multiplier_gives_the_bool_products_bit_for_bit(dtype: torch.dtype) -> None:
    from mlspec.ops.merge.sparsify import as_multiplier

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1000, generator=g).to(dtype)
    x[:5] = torch.tensor([math.inf, -math.inf, math.nan, -0.0, -1.0], dtype=dtype)
    mask = torch.rand(1000, generator=g) < 0.5
    mask[:5] = False
    got, expected = x * as_multiplier(mask), x * mask
    assert got.dtype == expected.dtype
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert torch.equal(torch.signbit(got), torch.signbit(expected)) and torch.equal(got.isnan(), expected.isnan())


def test_the_two_pass_fallback_keeps_no_bucket_for_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every entry in one first-digit bucket (values in [1, 1.0078) share their top 16 bits): the
    second pass histograms the low digit block by block and never gathers the bucket, exactly."""
    import mlspec.ops.merge.sparsify as sp

    g = torch.Generator().manual_seed(2)
    whole = 1.0 + torch.randint(0, 5000, (6000,), generator=g).float() * 1e-6
    assert len(set((whole.view(torch.int32) >> 16).tolist())) == 1
    blocks = sp.BlockMagnitudes(lambda: (whole[i : i + 1000] for i in range(0, 6000, 1000)), 6000, torch.float32)

    def no_descent(*args: object) -> float:
        raise AssertionError("the bucket was gathered and descended")

    monkeypatch.setattr(sp, "_descend", no_descent)
    ks = [1, 2, 3000, 5999, 6000]
    assert sp.kth_smallest_of(blocks, ks) == [sorted_kth(whole, k) for k in ks]
