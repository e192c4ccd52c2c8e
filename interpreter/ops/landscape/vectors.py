"""Task-vector geometry (Ilharco et al. 2023; Yadav et al. 2023): how the fine-tuning directions
τᵢ = θᵢ − θ_base relate — cosine similarity, sign conflicts, norms per model and per tensor."""

from __future__ import annotations

from typing import Any

import torch

from ...run.context import StepContext
from ...values import Model, Record
from ..merge.merging import check_compatible, labels
from ..merge.sparsify import keep_top, magnitude_threshold
from ..merge.stats import sign_conflicts
from .geometry import flatten
from .specs import TaskVectorParams

__all__ = ["task_vectors"]


def task_vectors(ctx: StepContext, params: TaskVectorParams, *, base: Model, models: list[Model]) -> Record:
    """``sign_conflict[i][j]``: fraction of coordinates where τᵢ and τⱼ are both non-zero with
    opposite signs (after trimming each to its top ``density``); ``sign_conflict_all``: fraction
    where any two of them disagree."""
    names = labels(ctx, models, base)
    check_compatible([base, *models], names)
    origin = flatten(base.state)
    taus = []
    for m in models:
        tau = flatten(m.state) - origin
        taus.append(keep_top(tau, magnitude_threshold(tau, params.density)) if params.density < 1.0 else tau)
    stacked = torch.stack(taus)  # (n, params)
    norms = stacked.norm(dim=1)
    cosine = (stacked @ stacked.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-12)
    signs = stacked.sign()
    conflict = ((signs[:, None, :] * signs[None, :, :]) < 0).double().mean(dim=2)
    per_tensor = {
        name: [float((m.state[name].double() - t.double()).norm()) for m in models]
        for name, t in base.state.items() if t.is_floating_point()
    }
    out: dict[str, Any] = {
        "base": names[0], "models": names[1:], "density": params.density,
        "cosine": cosine.tolist(), "sign_conflict": conflict.tolist(),
        "sign_conflict_all": float(sign_conflicts(list(stacked)).double().mean()),
        "norms": norms.tolist(), "tensor_norms": per_tensor,
    }
    return Record(out)
