"""Declarations of the merge operators (torch-free; implementations live next to this file).

Where the papers and mergekit disagree the choice is a named parameter; each field's description
says which setting reproduces which. Defaults follow the original papers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...registry import Kind, OpSpec, Params, Port, register
from .method import MODELS as _MODELS
from .method import WEIGHT as _WEIGHT
from .method import MergeMethod, declare

_EW = "mlspec.ops.merge.elementwise"


class AverageParams(Params):
    weights: float = _WEIGHT
    normalize: bool = Field(default=True, description="divide by the sum of the weights")


class TaskArithmeticParams(Params):
    scale: float = Field(
        default=1.0, description="λ for every task vector, or one signed λ per model (negation, analogies)"
    )


class SlerpParams(Params):
    t: float = Field(default=0.5, ge=0.0, le=1.0, description="0 gives the first model, 1 the second")
    dot_threshold: float = Field(default=0.9995, gt=0.0, le=1.0, description="lerp when |cos Ω| exceeds this")


class SphericalMeanParams(Params):
    weights: float = _WEIGHT
    max_iter: int = Field(default=100, ge=1, description="Karcher-mean iterations per tensor")


class _SparseParams(Params):
    """What TIES, DARE and Breadcrumbs share: the consensus merge of sparsified task vectors."""

    scale: float = Field(default=1.0, description="λ applied to the merged task vector")
    weights: float = _WEIGHT
    elect: Literal["mass", "count"] = Field(
        default="mass", description="sign election by summed mass (paper, mergekit 'sum') or by count of signs"
    )
    weights_at: Literal["after", "before"] = Field(
        default="after",
        description="apply model weights after sign election (paper, Algorithm 1) or before it (mergekit)",
    )


_L1 = Field(
    default="none", description="scale each trimmed task vector back to its L1 norm (mergekit's rescale: true)"
)


class TiesParams(_SparseParams):
    density: float = Field(default=0.2, ge=0.0, le=1.0, description="fraction of each task vector kept (top-k)")
    trim: Literal["model", "tensor"] = Field(
        default="model",
        description="rank magnitudes over the whole model (paper, FusionBench) or per tensor (mergekit)",
    )
    normalize: bool = Field(
        default=True, description="disjoint mean (paper, mergekit) or disjoint sum (FusionBench's default)"
    )
    rescale: Literal["none", "l1"] = _L1


class DareParams(_SparseParams):
    density: float = Field(default=0.5, ge=0.0, le=1.0, description="keep probability 1 − p")
    rescale: Literal["inverse", "l1", "none"] = Field(
        default="inverse", description="survivors × 1/(1 − p) (paper, FusionBench) or L1-matched (mergekit)"
    )
    merge: Literal["task_arithmetic", "ties"] = Field(
        default="task_arithmetic", description="combine the sparsified deltas by task arithmetic or TIES"
    )
    normalize: bool = Field(default=False, description="divide the merged delta by the weights (mergekit's flag)")


class BreadcrumbsParams(_SparseParams):
    density: float = Field(default=0.9, ge=0.0, le=1.0, description="fraction of each task vector kept")
    gamma: float = Field(default=0.01, ge=0.0, le=1.0, description="fraction of largest magnitudes dropped")
    merge: Literal["task_arithmetic", "ties"] = Field(default="task_arithmetic", description="how to combine")
    normalize: bool = Field(default=False, description="divide the merged delta by the weights")
    rescale: Literal["none", "l1"] = _L1


class ModelStockParams(Params):
    mean: Literal["cosine", "angle"] = Field(
        default="cosine",
        description="summarise pairwise angles by mean cosine (mergekit) or by the cosine of the mean angle "
        "(FusionBench); identical for two models (the paper's setting)",
    )


_WEIGHTS = frozenset({"weights"})
_SPARSE = frozenset({"weights", "density", "scale"})

declare(MergeMethod(
    name="average",
    doc="""Weighted parameter average Σ wᵢθᵢ / Σ wᵢ (uniform soup, FedAvg, mergekit `linear`).

    `merge avg = average(a, b)`; `average(a, b, weights = [3, 1])`; `normalize = false` keeps
    the plain weighted sum.""",
    params=AverageParams,
    kernel=f"{_EW}:average",
    per_model=_WEIGHTS,
    varying=_WEIGHTS,
    elementwise=True,
))

declare(MergeMethod(
    name="task_arithmetic",
    doc="""Task arithmetic (Ilharco et al. 2023): θ = θ_base + Σ λᵢ(θᵢ − θ_base).

    A list of signed scales gives negation and analogies:
    `task_arithmetic(base = init, models = [c, b, a], scale = [1, 1, -1])`.""",
    params=TaskArithmeticParams,
    kernel=f"{_EW}:task_arithmetic",
    base="required",
    per_model=frozenset({"scale"}),
    varying=frozenset({"scale"}),
    elementwise=True,
))

declare(MergeMethod(
    name="slerp",
    doc="""Spherical linear interpolation between two models, tensor by tensor.

    Falls back to lerp where the two tensors are nearly colinear. With a `base` the task vectors
    are interpolated (mergekit `nuslerp`). `merge s = slerp(a, b, t = 0.3)`""",
    params=SlerpParams,
    kernel=f"{_EW}:slerp",
    elementwise=True,
    tensor_prepare=f"{_EW}:slerp_tensor_prepare",
    base="optional",
    pair=True,
    min_models=2,
    max_models=2,
    varying=frozenset({"t"}),
))

declare(MergeMethod(
    name="spherical_mean",
    doc="""Weighted Karcher mean of several models on the sphere, tensor by tensor; the norm is
    the weighted mean norm. For two models it equals `slerp` (mergekit `karcher`).""",
    params=SphericalMeanParams,
    kernel=f"{_EW}:spherical_mean",
    per_model=_WEIGHTS,
    varying=_WEIGHTS,
))

declare(MergeMethod(
    name="ties",
    doc="""TIES-merging (Yadav et al. 2023): trim, elect sign, disjoint mean, θ_base + λ·τ_m.

    `ties(base = init, models = [a, b], density = 0.2, scale = 1.0)`. `trim = tensor`,
    `weights_at = before` reproduce mergekit; the defaults reproduce the paper. `density` may be
    one per model.""",
    params=TiesParams,
    kernel=f"{_EW}:ties",
    base="required",
    per_model=frozenset({"weights", "density"}),
    varying=_SPARSE,
    elementwise=True,
    prepare=f"{_EW}:ties_whole_model",
    tensor_prepare=f"{_EW}:ties_tensor_thresholds",
))

declare(MergeMethod(
    name="dare",
    doc="""DARE (Yu et al. 2024): drop task-vector entries at random, rescale, then merge by task
    arithmetic or TIES (`merge = ties` is mergekit's `dare_ties`). Each tensor's random stream is
    seeded from the step and the tensor's name.""",
    params=DareParams,
    version="2",  # 2: keep-masks from PCG64DXSM 32-bit integers instead of torch.rand (other draws)
    kernel=f"{_EW}:dare",
    base="required",
    per_model=frozenset({"weights", "density"}),
    varying=_SPARSE,
    random=True,
    elementwise=True,
    tensor_prepare=f"{_EW}:dare_tensor_prepare",
))

declare(MergeMethod(
    name="breadcrumbs",
    doc="""Model Breadcrumbs (Davari & Belilovsky 2023): per tensor, drop each task vector's
    largest (`gamma`) and smallest entries, keep `density`, then task arithmetic or TIES.""",
    params=BreadcrumbsParams,
    kernel=f"{_EW}:breadcrumbs",
    base="required",
    per_model=frozenset({"weights", "density", "gamma"}),
    varying=_SPARSE | {"gamma"},
    elementwise=True,
    tensor_prepare=f"{_EW}:breadcrumbs_tensor_prepare",
))

declare(MergeMethod(
    name="model_stock",
    doc="""Model Stock (Jang et al. 2024): per tensor, move from the base towards the average of
    k ≥ 2 fine-tunes by t = k·cos φ / (1 + (k − 1)·cos φ).""",
    params=ModelStockParams,
    kernel=f"{_EW}:model_stock",
    base="required",
    min_models=2,
))


class SoupParams(Params):
    greedy: bool = Field(default=False, description="greedy soup (needs a held-out dataset) or uniform")
    split: Literal["train", "test"] = Field(default="test", description="the held-out split that ranks ingredients")


class FisherParams(Params):
    weights: list[float] | None = Field(default=None, description="one weight per model (default: equal)")
    samples: int = Field(default=512, ge=1, description="training examples per model for the Fisher estimate")
    eps: float = Field(default=1e-6, gt=0.0, description="floor on the Fisher (so flat parameters are averaged)")


class RegMeanParams(Params):
    alpha: float = Field(default=0.9, ge=0.0, le=1.0, description="scale of the Gram matrices' off-diagonals")
    samples: int = Field(default=512, ge=1, description="training examples per model for the Gram matrices")


class PermuteParams(Params):
    by: Literal["weight_matching", "activation_matching"] = Field(
        default="weight_matching", description="match weights (no data) or activations on `on`"
    )
    max_iter: int = Field(default=100, ge=1, description="weight-matching coordinate-descent sweeps")
    samples: int = Field(default=512, ge=1, description="training examples for activation matching")


class RepairParams(Params):
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="where the merged model sits between a and b")
    samples: int = Field(default=512, ge=1, description="training examples for the channel statistics")


class ZipParams(Params):
    layers: int | None = Field(default=None, ge=1, description="zip hidden layers 1..k, keep separate heads after")
    samples: int = Field(default=512, ge=1, description="training examples for the feature correlations")


class ResNetParams(Params):
    side: int = Field(default=8, ge=1, description="images are side × side, one channel (digits: 8)")
    width: int = Field(default=16, ge=1, description="channels throughout")
    blocks: int = Field(default=2, ge=1, description="residual blocks")
    out_features: int = Field(alias="out", ge=1, description="number of classes")
    norm: Literal["batchnorm", "layernorm"] = Field(default="batchnorm", description="after each convolution")


_DATA_PER_MODEL = Port("on", Kind.DATASET, many=True, doc="each model's training data (or one for all)")
_IN = "mlspec.ops.merge.informed"


register(
    OpSpec(
        name="soup",
        doc="""Model soup (Wortsman et al. 2022): the uniform average, or with `greedy = true` the
        greedy soup — ingredients ranked by held-out accuracy, each kept only if the soup's
        held-out accuracy does not drop. `merge s = soup(models = [a, b, c], greedy = true) on val`""",
        inputs=(_MODELS, Port("on", Kind.DATASET, required=False, doc="held-out data for the greedy soup")),
        output=Kind.MODEL,
        params=SoupParams,
        impl=f"{_IN}:soup",
    )
)

register(
    OpSpec(
        name="fisher",
        doc="""Fisher merging (Matena & Raffel 2022): per-parameter average weighted by each model's
        diagonal Fisher information, estimated exactly over the model's predictive distribution on
        its own data. `merge f = fisher(models = [a, b]) on [low, high]`""",
        inputs=(_MODELS, _DATA_PER_MODEL),
        output=Kind.MODEL,
        params=FisherParams,
        impl=f"{_IN}:fisher",
        uses_seed=True,
    )
)

register(
    OpSpec(
        name="regmean",
        doc="""RegMean (Jin et al. 2023): each linear layer solves min Σᵢ‖XᵢW − XᵢWᵢ‖² in closed form from
        the Gram matrices of its inputs (off-diagonals scaled by `alpha`); every other parameter is
        averaged. `merge r = regmean(models = [a, b], alpha = 0.9) on [low, high]`""",
        inputs=(_MODELS, _DATA_PER_MODEL),
        output=Kind.MODEL,
        params=RegMeanParams,
        impl=f"{_IN}:regmean",
        uses_seed=True,
    )
)

_AL = "mlspec.ops.merge.align"

register(
    OpSpec(
        name="permute",
        doc="""Permute a model's hidden units onto a reference (Git Re-Basin); the function is unchanged.

        `merge c2a = permute(c, to = a, by = weight_matching)`, or `by = activation_matching` with
        data: `permute(c, to = a, by = activation_matching) on digits`. MLPs and ResNets.""",
        inputs=(Port("model", Kind.MODEL), Port("to", Kind.MODEL),
                Port("on", Kind.DATASET, required=False, doc="data for activation matching")),
        output=Kind.MODEL,
        params=PermuteParams,
        impl=f"{_AL}:permute",
        uses_seed=True,
    )
)

register(
    OpSpec(
        name="repair",
        doc="""REPAIR (Jordan et al. 2023): reset each channel of a merged model to the interpolated
        mean and std of the endpoints' channels. `repair(avg, a = a, b = b2a, alpha = 0.5) on digits`""",
        inputs=(Port("model", Kind.MODEL), Port("a", Kind.MODEL), Port("b", Kind.MODEL), Port("on", Kind.DATASET)),
        output=Kind.MODEL,
        params=RepairParams,
        impl=f"{_AL}:repair",
        uses_seed=True,
    )
)

register(
    OpSpec(
        name="zip",
        doc="""ZipIt! (Stoica et al. 2024): merge two MLPs feature by feature by correlation, within
        and across models; `layers = k` zips only the first k hidden layers and keeps one head per
        model. `merge z = zip(a, b, layers = 1) on digits`""",
        inputs=(Port("a", Kind.MODEL), Port("b", Kind.MODEL), Port("on", Kind.DATASET)),
        output=Kind.MODEL,
        params=ZipParams,
        impl="mlspec.ops.merge.zipit:zip_models",
        uses_seed=True,
    )
)

register(
    OpSpec(
        name="ensemble",
        doc="""Output ensemble: averages the members' predicted probabilities; evaluates like a model.
        The upper-bound baseline for merges. `merge ens = ensemble(a, b)`""",
        inputs=(_MODELS,),
        output=Kind.MODEL,
        impl="mlspec.ops.merge.networks:ensemble",
    )
)

register(
    OpSpec(
        name="resnet",
        doc="""A small ResNet (basic blocks, constant width, BatchNorm or LayerNorm) for flat square
        images; initialised from the step's seed. `model r = resnet(width = 16, blocks = 2, out = 10)`""",
        inputs=(),
        output=Kind.MODEL,
        params=ResNetParams,
        impl="mlspec.ops.merge.networks:resnet",
        uses_seed=True,
    )
)
