"""Prefix sums: the running parity against a hand-made example and a sequential oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.extrap import prefix_sums


def test_running_parity_of_a_hand_made_string() -> None:
    data = prefix_sums.generate(length=40, count=3, seed=0)
    assert data.inputs.shape == (3, 1, 40) and data.targets.shape == (3, 40)
    bits = data.inputs[0, 0].long().tolist()
    parity, expected = 0, []
    for b in bits:
        parity ^= b
        expected.append(parity)
    assert data.targets[0].tolist() == expected


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_targets_flip_exactly_where_a_bit_is_one(length: int, seed: int) -> None:
    data = prefix_sums.generate(length=length, count=min(8, 2**length), seed=seed)
    x, y = data.inputs[:, 0].long(), data.targets
    assert torch.equal(y[:, 0], x[:, 0])
    assert torch.equal(y[:, 1:] ^ y[:, :-1], x[:, 1:])


def test_short_strings_are_distinct_and_deterministic() -> None:
    a = prefix_sums.generate(length=10, count=1024, seed=1)
    assert len({tuple(r.tolist()) for r in a.inputs[:, 0]}) == 1024
    assert torch.equal(a.inputs, prefix_sums.generate(length=10, count=1024, seed=1).inputs)
    with pytest.raises(ValueError, match="distinct"):
        prefix_sums.generate(length=4, count=17)
