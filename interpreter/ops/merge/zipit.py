"""ZipIt! (Stoica et al. 2024) for MLPs: merge two models' features by correlation, allowing a
feature to merge with another of the *same* model, optionally only up to layer k.

Per zipped layer the 2n features of A ∪ B are paired greedily by correlation without replacement
(within-model pairs allowed); the merge matrix M (n × 2n) averages each pair and the unmerge matrix
U (2n × n) sends every original feature to its merged one, so the next layer's weights become
[W_a W_b]·U. Layers after ``layers`` stay separate, one head per model (partial zipping).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset, Model
from ..models.builders import build_module
from .align import collect_features, correlation
from .informed import sample_inputs
from .merging import check_compatible
from .specs import ZipParams

__all__ = ["greedy_pairs", "merge_unmerge", "zip_models"]


def greedy_pairs(corr: Tensor) -> list[tuple[int, int]]:
    """Pair the 2n features by descending correlation, each feature used once."""
    m = corr.shape[0]
    upper = torch.triu_indices(m, m, offset=1)
    order = torch.argsort(corr[upper[0], upper[1]], descending=True)
    used = torch.zeros(m, dtype=torch.bool)
    pairs: list[tuple[int, int]] = []
    for idx in order.tolist():
        i, j = int(upper[0, idx]), int(upper[1, idx])
        if not used[i] and not used[j]:
            used[i] = used[j] = True
            pairs.append((i, j))
            if len(pairs) == m // 2:
                break
    return pairs


def merge_unmerge(pairs: list[tuple[int, int]], m: int) -> tuple[Tensor, Tensor]:
    """M (n × 2n) averages each pair; U (2n × n) copies each merged feature back to its members."""
    merge = torch.zeros(len(pairs), m, dtype=torch.float64)
    unmerge = torch.zeros(m, len(pairs), dtype=torch.float64)
    for k, (i, j) in enumerate(pairs):
        merge[k, i] = merge[k, j] = 0.5
        unmerge[i, k] = unmerge[j, k] = 1.0
    return merge, unmerge


@torch.no_grad()
def zip_models(ctx: StepContext, params: ZipParams, *, a: Model, b: Model, on: Dataset) -> Model:
    check_compatible([a, b], ["a", "b"])
    if a.arch.get("type") != "mlp" or a.arch.get("norm", "none") != "none":
        raise StepError(f"zip supports MLPs without normalisation layers (not {a.arch!r})")
    hidden = list(a.arch["hidden"])
    depth = len(hidden) if params.layers is None else params.layers
    if not 1 <= depth <= len(hidden):
        raise StepError(f"layers must lie in 1 .. {len(hidden)} (not {params.layers!r})")
    x = sample_inputs(on, params.samples, ctx.generator())
    sites = [f"norms.{i}" for i in range(depth)]  # pre-activation features (Identity modules)
    feats = [collect_features(build_module(m), x, sites) for m in (a, b)]
    sa = {k: v.double() for k, v in a.state.items()}
    sb = {k: v.double() for k, v in b.state.items()}
    state: dict[str, Tensor] = {}
    unmerge_a = unmerge_b = None  # how the previous merged layer feeds each model's inputs
    for i in range(depth):
        wa, wb = sa[f"layers.{i}.weight"], sb[f"layers.{i}.weight"]
        if unmerge_a is not None:
            wa, wb = wa @ unmerge_a, wb @ unmerge_b
        both = torch.cat([feats[0][sites[i]], feats[1][sites[i]]], dim=1)
        merge, unmerge = merge_unmerge(greedy_pairs(correlation(both, both)), both.shape[1])
        state[f"trunk.{i}.weight"] = merge @ torch.cat([wa, wb])
        state[f"trunk.{i}.bias"] = merge @ torch.cat([sa[f"layers.{i}.bias"], sb[f"layers.{i}.bias"]])
        n = hidden[i]
        unmerge_a, unmerge_b = unmerge[:n], unmerge[n:]
    heads = []
    for h, (source, unmerge_h) in enumerate(((sa, unmerge_a), (sb, unmerge_b))):
        for j, layer in enumerate(range(depth, len(hidden) + 1)):
            w = source[f"layers.{layer}.weight"]
            state[f"heads.{h}.layers.{j}.weight"] = w @ unmerge_h if j == 0 else w
            state[f"heads.{h}.layers.{j}.bias"] = source[f"layers.{layer}.bias"]
        heads.append({"hidden": hidden[depth:], "out_features": a.arch["out_features"]})
    arch = {"type": "zipped_mlp", "in_features": a.arch["in_features"], "trunk": hidden[:depth], "heads": heads}
    if depth == len(hidden):  # fully zipped: average the two output layers into one head
        for t in ("weight", "bias"):
            state[f"heads.0.layers.0.{t}"] = (state[f"heads.0.layers.0.{t}"] + state.pop(f"heads.1.layers.0.{t}")) / 2
        arch["heads"] = heads[:1]
    dtype = a.state["layers.0.weight"].dtype
    info = {"zip": {"layers": depth, "of": len(hidden)}}
    return Model(arch=arch, state={k: v.to(dtype).contiguous() for k, v in state.items()}, info=info)
