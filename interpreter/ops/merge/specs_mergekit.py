"""Declarations of the merge methods that come from mergekit 0.1.5's catalogue (torch-free):
``della``, ``della_linear``, ``sce``, ``nuslerp``, ``multislerp``, ``nearswap``, ``arcee_fusion``,
``ram``, ``ramplus_tl`` and ``passthrough``. Their kernels live in the modules named by concept
next to this one; each kernel's docstring says where it follows mergekit's code and where its paper.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...registry import Params
from .method import WEIGHT as _WEIGHT
from .method import MergeMethod, declare

_M = "mlspec.ops.merge"


class _DellaParams(Params):
    weights: float = _WEIGHT
    density: float = Field(default=0.5, ge=0.0, le=1.0, description="mean keep probability of a task-vector entry")
    epsilon: float = Field(
        default=0.15, ge=0.0, lt=0.5,
        description="keep probabilities spread over density ± epsilon by magnitude rank (must stay inside (0, 1))",
    )
    scale: float = Field(default=1.0, description="λ applied to the merged task vector (mergekit's lambda)")
    rescale: Literal["inverse", "l1", "none"] = Field(
        default="inverse", description="survivors × 1/pᵢ (paper) or L1-matched (mergekit's rescale: true)"
    )


class DellaParams(_DellaParams):
    normalize: bool = Field(default=True, description="mean of the agreeing entries (paper, mergekit) or their sum")
    elect: Literal["mass", "count"] = Field(default="mass", description="sign election by summed mass or by count")
    weights_at: Literal["after", "before"] = Field(
        default="after", description="apply model weights after sign election (paper) or before it (mergekit)"
    )


class DellaLinearParams(_DellaParams):
    normalize: bool = Field(default=False, description="divide the merged task vector by the sum of the weights")


class SceParams(Params):
    select_topk: float = Field(
        default=1.0, ge=0.0, le=1.0, description="fraction of the entries kept, those varying most across models"
    )
    uniform_below: float = Field(
        default=0.0, ge=0.0,
        description="weight the models equally when Σ mean(τ²) is below this (mergekit: 1e-6; paper: 0)",
    )


class NuslerpParams(Params):
    weights: float = _WEIGHT
    flatten: bool = Field(default=True, description="interpolate each tensor as one vector")
    row_wise: bool = Field(
        default=False, description="without flatten: slices along the first dimension (columns), else along the last"
    )


class MultislerpParams(Params):
    weights: float = _WEIGHT
    normalize_weights: bool = Field(default=True, description="divide the weights by their sum")
    eps: float = Field(default=1e-8, gt=0.0, description="added to norms before dividing")


class NearswapParams(Params):
    t: float = Field(
        default=1e-4, ge=0.0,
        description="differences below t take the other model's value (the method's reference merge: 0.0001)",
    )


class ArceeFusionParams(Params):
    pass


class RamParams(Params):
    epsilon: float = Field(default=1e-5, ge=0.0, description="|τ| above this counts as a change")


class RamPlusParams(RamParams):
    r: float = Field(default=0.1, description="strength of the rescaling of unique updates")
    alpha: float = Field(default=0.2, ge=0.0, description="cap on the shared-to-unique ratio ρ")


class PassthroughParams(Params):
    scale: float = Field(default=1.0, description="multiplies every tensor")


_DELLA = frozenset({"weights", "density", "epsilon"})

declare(MergeMethod(
    name="della",
    doc="""DELLA (Deep et al. 2024): MagPrune each task vector — random drop with keep probabilities
    ranked by magnitude over density ± epsilon — rescale, elect signs and average as TIES.

    `della(base = b, models = [x, y], density = 0.5, epsilon = 0.1)`; mergekit's `della` is
    `rescale = l1, weights_at = before`. `density` and `epsilon` may be one per model.""",
    params=DellaParams,
    kernel=f"{_M}.magprune:della",
    base="required",
    per_model=_DELLA,
    varying=_DELLA | {"scale"},
    random=True,
))

declare(MergeMethod(
    name="della_linear",
    doc="""DELLA without sign election: base + λ·Σ wᵢ·MagPrune(τᵢ) (mergekit `della_linear`, with
    `rescale = l1`).""",
    params=DellaLinearParams,
    kernel=f"{_M}.magprune:della_linear",
    base="required",
    per_model=_DELLA,
    varying=_DELLA | {"scale"},
    random=True,
))

declare(MergeMethod(
    name="sce",
    doc="""SCE (FuseChat, Wan et al. 2024): select the entries whose task vectors vary most across
    the models, weight each model by its squared magnitude, erase minority signs, average.
    `sce(base = b, models = [x, y, z], select_topk = 0.1)`""",
    params=SceParams,
    kernel=f"{_M}.sce:sce",
    base="required",
    varying=frozenset({"select_topk"}),
))

declare(MergeMethod(
    name="nuslerp",
    doc="""SLERP of two models at t = w₁/(w₀ + w₁), of their task vectors when a base is given,
    whole tensors or row by row (mergekit `nuslerp`). `nuslerp(models = [x, y], weights = [1, 3])`""",
    params=NuslerpParams,
    kernel=f"{_M}.spherical:nuslerp",
    base="optional",
    min_models=2,
    max_models=2,
    per_model=frozenset({"weights"}),
    varying=frozenset({"weights"}),
))

declare(MergeMethod(
    name="multislerp",
    doc="""Barycentre of several models on the hypersphere: the weighted mean direction, scaled to
    the weighted mean norm; of task vectors when a base is given (mergekit `multislerp`).""",
    params=MultislerpParams,
    kernel=f"{_M}.spherical:multislerp",
    base="optional",
    per_model=frozenset({"weights"}),
    varying=frozenset({"weights"}),
))

declare(MergeMethod(
    name="nearswap",
    doc="""Take the other model's value where it lies within t of the base's, partly (t/|Δ|)
    elsewhere (mergekit `nearswap`). `nearswap(base = b, models = [x], t = 0.001)`""",
    params=NearswapParams,
    kernel=f"{_M}.selective:nearswap",
    base="required",
    max_models=1,
    varying=frozenset({"t"}),
    elementwise=True,
))

declare(MergeMethod(
    name="arcee_fusion",
    doc="""Arcee Fusion: keep the other model's changes where their KL-weighted importance reaches
    median + 1.5·IQR of the tensor's importances (exact quartiles), else the base.""",
    params=ArceeFusionParams,
    kernel=f"{_M}.selective:arcee_fusion",
    base="required",
    max_models=1,
))

declare(MergeMethod(
    name="ram",
    doc="""RAM (Yuan et al. 2026): an update only one model made is kept whole, updates several
    made are averaged over them, entries nobody changed keep the base.""",
    params=RamParams,
    kernel=f"{_M}.ram:ram",
    base="required",
    varying=frozenset({"epsilon"}),
    elementwise=True,
))

declare(MergeMethod(
    name="ramplus_tl",
    doc="""RAM+ tensor-local: as `ram`, each model's unique updates scaled by
    1 + r·clamp(shared/unique, 0, alpha) counted over the tensor.""",
    params=RamPlusParams,
    kernel=f"{_M}.ram:ramplus_tl",
    base="required",
    varying=frozenset({"epsilon", "r", "alpha"}),
))

declare(MergeMethod(
    name="passthrough",
    doc="""One model's tensors, unchanged or multiplied by `scale` (mergekit `passthrough`).""",
    params=PassthroughParams,
    kernel=f"{_M}.passthrough:passthrough",
    max_models=1,
    per_model=frozenset({"scale"}),
    varying=frozenset({"scale"}),
    elementwise=True,
))
