"""Parameters that vary by tensor: by name filter and as a gradient across layer depth (torch-free).

A setting is, as mergekit users write them:

- a number — the same everywhere;
- a list of numbers — a *gradient*: piecewise-linear over ``t = layer / (num_layers - 1)``, the
  list's points spread evenly over ``[0, 1]``. Tensors outside the transformer blocks (embeddings,
  final norm, output head) read ``t = 0``, as mergekit does;
- a list of rules ``{"filter": "mlp", "value": 0.5}`` — the first rule whose filter is a
  **substring** of the tensor name wins; a rule without a filter (or with ``"*"``) is the fallback.
  A rule's value may itself be a gradient.

In a spec the rules are written ``by_name(self_attn = [0, 0.5, 1], mlp = 0.3, default = 0.5)``;
that call arrives as ``{"type": "by_name", ...}`` and :func:`normalise` turns it into rules (keyword
order is rule order; ``default`` is the fallback). A filter that is not a Python identifier (such
as ``layers.0.``) is written as a list of rules, ``[rule(filter = "layers.0.", value = 0.1),
rule(value = 0.5)]`` (mergekit's ``[{filter: ..., value: ...}]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["Setting", "normalise", "resolve", "depth", "is_uniform", "is_rules", "leaves", "DEFAULT_KEYS"]

#: Keys that mark the fallback rule in ``by_name(...)``.
DEFAULT_KEYS = ("default", "*")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number (not {value!r})")
    return float(value)


def _scalar_or_gradient(value: Any, where: str) -> float | list[float]:
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{where}: a gradient needs at least one point (not [])")
        return [_number(v, f"{where}: gradient point") for v in value]
    return _number(value, where)


def is_rules(value: Any) -> bool:
    """Whether ``value`` is a list of ``{filter, value}`` rules (mergekit's form, or ``rule(...)`` calls)."""
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) and "value" in v and v.get("type") in (None, "rule") for v in value)
    )


def normalise(value: Any) -> float | list[Any]:
    """The canonical JSON form of a setting: a float, a list of floats (gradient), or a list of
    ``{"filter": str | None, "value": float | list[float]}`` rules. Raises ValueError on anything else."""
    if isinstance(value, Mapping):
        if value.get("type") not in (None, "by_name"):
            raise ValueError(
                f"expected a number, a gradient list or by_name(...) (not {value.get('type')!r}(...))"
            )
        rules = [
            {
                "filter": None if key in DEFAULT_KEYS else str(key),
                "value": _scalar_or_gradient(v, f"by_name {key}"),
            }
            for key, v in value.items()
            if key != "type"
        ]
        if not rules:
            raise ValueError("by_name(...) needs at least one filter = value")
        return rules
    if isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
        rules = []
        for rule in value:
            unknown = set(rule) - {"filter", "value", "type"}
            if unknown or "value" not in rule or rule.get("type") not in (None, "rule"):
                raise ValueError(f"a rule is {{filter: name, value: v}} (not {dict(rule)!r})")
            flt = rule.get("filter")
            rules.append(
                {
                    "filter": None if flt in (None, *DEFAULT_KEYS) else str(flt),
                    "value": _scalar_or_gradient(rule["value"], f"rule {flt!r}"),
                }
            )
        return rules
    return _scalar_or_gradient(value, "a setting")


#: A pydantic field type for parameters that may vary by tensor.
Setting = Annotated[float | list[Any], BeforeValidator(normalise)]


def depth(layer: int | None, num_layers: int) -> float:
    """``t`` of a tensor: its block's position in ``[0, 1]``; 0 outside the blocks, 1 for one block."""
    if layer is None:
        return 0.0
    return layer / (num_layers - 1) if num_layers > 1 else 1.0


def _interpolate(points: list[float], t: float) -> float:
    scaled = min(max(t, 0.0), 1.0) * (len(points) - 1)
    i0 = int(scaled)
    i1 = min(len(points) - 1, i0 + 1)
    frac = scaled - i0
    return (1.0 - frac) * points[i0] + frac * points[i1]


def resolve(setting: float | list[Any], name: str, t: float) -> float:
    """The value of a (normalised) setting for tensor ``name`` at depth ``t``.

    Raises LookupError when rules match nothing and have no fallback."""
    if isinstance(setting, int | float):
        return float(setting)
    if setting and isinstance(setting[0], Mapping):
        for rule in setting:
            if rule["filter"] is None or rule["filter"] in name:
                return resolve(rule["value"], name, t)
        filters = ", ".join(repr(r["filter"]) for r in setting)
        raise LookupError(f"no rule matches tensor {name!r} (filters {filters}; add a default)")
    return _interpolate([float(v) for v in setting], t)


def is_uniform(setting: float | list[Any]) -> bool:
    """Whether a setting has one value for every tensor (so whole-model statistics may use it)."""
    if isinstance(setting, int | float):
        return True
    if setting and isinstance(setting[0], Mapping):
        return len(setting) == 1 and setting[0]["filter"] is None and is_uniform(setting[0]["value"])
    return len(set(setting)) == 1


def leaves(setting: float | list[Any]) -> list[float]:
    """Every number a (normalised) setting can take, so each can be checked against a range."""
    if isinstance(setting, int | float):
        return [float(setting)]
    if setting and isinstance(setting[0], Mapping):
        return [v for rule in setting for v in leaves(rule["value"])]
    return [float(v) for v in setting]
