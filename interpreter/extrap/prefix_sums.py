"""Prefix sums: bit strings in, running parity out — the cheapest extrapolation task.

The difficulty axis is the string length: a 1-D recurrent net trained on 32 bits is tested on 512.
Format as in DeepThinking: inputs ``N x 1 x L`` float32 in {0, 1}, targets ``N x L`` int64 with
``target[i] = (x[0] + ... + x[i]) mod 2``. Short strings (L < 24) are drawn without replacement, so a
small test set holds no duplicates.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["PrefixSums", "generate"]

_DISTINCT_BELOW = 24


class PrefixSums(NamedTuple):
    inputs: torch.Tensor  # (N, 1, L) float32
    targets: torch.Tensor  # (N, L) int64


def generate(*, length: int = 32, count: int = 10000, seed: int = 0) -> PrefixSums:
    """``count`` random bit strings of ``length`` bits and their running parities."""
    if not isinstance(length, int) or length < 1:
        raise ValueError(f"prefix-sum length must be a positive integer (not {length!r})")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"prefix-sum count must be a positive integer (not {count!r})")
    rng = np.random.default_rng([seed, 0x7073756D])
    if length < _DISTINCT_BELOW:
        if count > 2**length:
            raise ValueError(f"only {2**length} distinct strings of {length} bits exist (asked for {count})")
        codes = rng.choice(2**length, size=count, replace=False)
        bits = (codes[:, None] >> np.arange(length)) & 1
    else:
        bits = rng.integers(0, 2, size=(count, length))
    inputs = torch.from_numpy(bits.astype(np.float32)).unsqueeze(1)
    targets = torch.from_numpy(np.cumsum(bits, axis=1) % 2)
    return PrefixSums(inputs, targets.long())
