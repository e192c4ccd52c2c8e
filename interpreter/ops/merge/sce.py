"""SCE (FuseChat, Wan et al. 2024, arXiv 2408.07990): Select, Calculate, Erase — per tensor.

1. **Select**: keep the entries where the task vectors vary most across the models, the top
   ``select_topk`` fraction of the entries whose variance (population variance over the models) is
   non-zero; the same entries for every model. ``select_topk = 1`` keeps all.
2. **Calculate**: each model's weight is its share of the summed squared magnitudes of the selected
   task vectors, wᵢ = Σ τᵢ² / Σⱼ Σ τⱼ² (mergekit: the mean of τᵢ², which normalises to the same).
3. **Erase**: elect a sign per entry by summed mass (as TIES) and merge the agreeing entries by the
   wᵢ-weighted mean; base + merged.

Variances tied at the selection cut are all kept (mergekit keeps an arbitrary k of them), and
k = ⌊select_topk·(non-zero variances)⌋ as in mergekit. Where the agreeing models' weights sum
to less than 1e-6 mergekit divides by 1e-6 instead; here the weighted mean is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .kernels import _deltas, _out, _work, consensus_sum
from .sparsify import kept_count, kth_smallest

__all__ = ["sce", "variance_mask"]


def variance_mask(deltas: Tensor, select_topk: float) -> Tensor:
    """SCE's selection over stacked task vectors (models × …): True where the entry's variance
    across the models is among the top ``select_topk`` fraction of the non-zero variances."""
    var = deltas.var(dim=0, unbiased=False)
    k = kept_count(select_topk, int(torch.count_nonzero(var).item()))
    if k == 0:
        return torch.zeros_like(var, dtype=torch.bool)
    return var >= kth_smallest(var, var.numel() - k + 1)


def sce(tensors: Sequence[Tensor], base: Tensor, *, select_topk: float = 1.0, uniform_below: float = 0.0) -> Tensor:
    """SCE merge of the models' task vectors onto ``base``.

    ``uniform_below``: when Σᵢ mean(τᵢ²) falls below it the models are weighted equally. mergekit
    uses 1e-6 — which, for fine-tuning deltas of order 1e-4 (typical of LLMs), means equal weights
    for most tensors; the paper (and the default 0) always weights by squared magnitude, and only a
    tensor where every task vector is zero gets equal weights.
    """
    if base is None:
        raise ValueError("sce needs a base model: it merges task vectors θᵢ − θ_base")
    if not 0.0 <= select_topk <= 1.0:
        raise ValueError(f"sce: select_topk must lie in [0, 1] (not {select_topk!r})")
    if uniform_below < 0.0:
        raise ValueError(f"sce: uniform_below must be ≥ 0 (not {uniform_below!r})")
    deltas = torch.stack(_deltas(base, tensors))
    if select_topk < 1.0:
        deltas = deltas * variance_mask(deltas, select_topk)
    energy = deltas.pow(2).flatten(1).mean(dim=1)
    total = float(energy.sum().item())
    n = len(tensors)
    weights = [1.0 / n] * n if total < uniform_below or total == 0.0 else (energy / total).tolist()
    merged = consensus_sum(list(deltas), weights, elect="mass", weights_at="after", normalize=True)
    return _out(_work(base) + merged, base)
