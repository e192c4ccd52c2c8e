"""Every merge method of mergekit 0.1.5 and the mlspec operator that reproduces it (torch-free).

For each method: which mlspec operator, how the base model takes part, how many other models it
merges, its per-model and global parameters with mergekit's names and defaults (read from its
code: ``merge_methods/*.py`` and ``registry.py``), the mlspec name each maps to, and the fixed
options that select mergekit's semantics where the papers differ (see
:mod:`mlspec.ops.merge.kernels`). A parameter mapped to ``None`` does not change the numbers
(``int8_mask`` is a memory option) and is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["METHODS", "REQUIRED", "MethodMap", "Param"]

#: The default of a parameter mergekit requires.
REQUIRED = object()


def _l1(value: Any) -> str:
    return "l1" if value else "none"


@dataclass(frozen=True)
class Param:
    ours: str | None
    default: Any = REQUIRED
    convert: Callable[[Any], Any] | None = None  # for flags: mergekit's value -> mlspec's
    flag: bool = False  # a true/false parameter (never varies by tensor)


@dataclass(frozen=True)
class MethodMap:
    ours: str
    #: required / optional: the base anchors task vectors; joins: the base is one more input
    #: (mergekit adds it to the models); first: the base is the first input (slerp's t = 0 end)
    base: Literal["required", "optional", "joins", "first"]
    inputs: tuple[int, int | None]  # how many models besides the base: at least, at most
    per_model: dict[str, Param] = field(default_factory=dict)
    globals: dict[str, Param] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)


_WEIGHT = {"weight": Param("weights")}
_INT8 = {"int8_mask": Param(None, False, flag=True)}


def _gta(normalize: bool, rescale: bool) -> dict[str, Param]:
    """The global parameters of mergekit's generalized task arithmetic methods."""
    return {
        "normalize": Param("normalize", normalize, flag=True),
        "lambda": Param("scale", 1.0),
        "rescale": Param("rescale", rescale, _l1, flag=True),
        **_INT8,
    }


_DENSITY = {"density": Param("density", 1.0)}
_GAMMA = {"gamma": Param("gamma", 0.01)}
_EPSILON = {"epsilon": Param("epsilon", 0.15)}
_BEFORE = {"weights_at": "before"}

METHODS: dict[str, MethodMap] = {
    "linear": MethodMap("average", "joins", (1, None), _WEIGHT, {"normalize": Param("normalize", True, flag=True)}),
    # weight·λ (/ Σ weight with normalize) become one scale per model
    "task_arithmetic": MethodMap(
        "task_arithmetic", "required", (1, None), _WEIGHT,
        {"normalize": Param("normalize", False, flag=True), "lambda": Param("scale", 1.0),
         "rescale": Param(None, False, flag=True), **_INT8},
    ),
    "ties": MethodMap(
        "ties", "required", (1, None), {**_WEIGHT, **_DENSITY}, _gta(True, False),
        {"trim": "tensor", "elect": "mass", **_BEFORE},
    ),
    "dare_ties": MethodMap("dare", "required", (1, None), {**_WEIGHT, **_DENSITY}, _gta(False, True),
                           {"merge": "ties", **_BEFORE}),
    "dare_linear": MethodMap("dare", "required", (1, None), {**_WEIGHT, **_DENSITY}, _gta(False, True),
                             {"merge": "task_arithmetic", **_BEFORE}),
    "breadcrumbs": MethodMap("breadcrumbs", "required", (1, None), {**_WEIGHT, **_DENSITY, **_GAMMA},
                             _gta(False, False), {"merge": "task_arithmetic", **_BEFORE}),
    "breadcrumbs_ties": MethodMap("breadcrumbs", "required", (1, None), {**_WEIGHT, **_DENSITY, **_GAMMA},
                                  _gta(False, False), {"merge": "ties", **_BEFORE}),
    "della": MethodMap("della", "required", (1, None), {**_WEIGHT, **_DENSITY, **_EPSILON}, _gta(True, True),
                       dict(_BEFORE)),
    "della_linear": MethodMap("della_linear", "required", (1, None), {**_WEIGHT, **_DENSITY, **_EPSILON},
                              _gta(False, True)),
    "slerp": MethodMap("slerp", "first", (1, 1), {}, {"t": Param("t")}),
    "nuslerp": MethodMap(
        "nuslerp", "optional", (2, 2), _WEIGHT,
        {"nuslerp_row_wise": Param("row_wise", False, flag=True), "nuslerp_flatten": Param("flatten", True, flag=True)},
    ),
    "multislerp": MethodMap(
        "multislerp", "optional", (1, None), _WEIGHT,
        {"normalize_weights": Param("normalize_weights", True, flag=True), "eps": Param("eps", 1e-8)},
    ),
    "karcher": MethodMap("spherical_mean", "joins", (1, None), {},
                         {"max_iter": Param("max_iter", 10), "tol": Param(None, 1e-5)}),
    "model_stock": MethodMap("model_stock", "required", (2, None), {},
                             {"filter_wise": Param(None, False, flag=True)}, {"mean": "cosine"}),
    "sce": MethodMap("sce", "required", (1, None), {}, {"select_topk": Param("select_topk", 1.0), **_INT8},
                     {"uniform_below": 1e-6}),
    "nearswap": MethodMap("nearswap", "required", (1, 1), {}, {"t": Param("t")}),
    "arcee_fusion": MethodMap("arcee_fusion", "required", (1, 1)),
    "ram": MethodMap("ram", "required", (1, None), {}, {"epsilon": Param("epsilon", 1e-5)}),
    "ramplus_tl": MethodMap(
        "ramplus_tl", "required", (1, None), {},
        {"r": Param("r", 0.1), "alpha": Param("alpha", 0.2), "epsilon": Param("epsilon", 1e-5)},
    ),
    "passthrough": MethodMap("passthrough", "joins", (1, 1), {"scale": Param("scale", None)}),
}
