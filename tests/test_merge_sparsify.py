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
