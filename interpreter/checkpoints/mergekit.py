"""``mlspec import mergekit config.yml``: a mergekit YAML config as an equivalent ``.merge`` spec.

Each mergekit method maps to a ``merge_checkpoints`` call whose named options reproduce mergekit's
semantics (which differ from the papers' in places — see :mod:`mlspec.ops.merge.kernels`):

==================  ==========================================================================
mergekit            mlspec
==================  ==========================================================================
linear              average (weights, normalize)
task_arithmetic     task_arithmetic, scale = weight·λ (normalize divides by Σ weight)
ties                ties, trim = tensor, weights_at = before, elect = mass (or count)
dare_linear         dare, merge = task_arithmetic, rescale = l1 (mergekit ≥ 0.1; none if rescale false)
dare_ties           dare, merge = ties, rescale = l1, weights_at = before
breadcrumbs(_ties)  breadcrumbs (merge = ties for _ties)
slerp               slerp: the base model is the t = 0 end
model_stock         model_stock, mean = cosine
karcher             spherical_mean
==================  ==========================================================================

Per-model parameters (weight, density, gamma) stay per model, each falling back to the config's
global value (each may vary by tensor). Slices, modules, LoRA references and
other methods are refused with a message saying so.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from typing import Any

from mlspec.checkpoints import settings as st
from mlspec.errors import MlspecError

__all__ = ["mergekit_to_spec", "MergekitImportError", "SUPPORTED"]


class MergekitImportError(MlspecError):
    pass


#: mergekit method -> (mlspec method, fixed options, mergekit's default for `normalize`)
SUPPORTED: dict[str, tuple[str, dict[str, Any], bool | None]] = {
    "linear": ("average", {}, True),
    "task_arithmetic": ("task_arithmetic", {}, False),
    "ties": ("ties", {"trim": "tensor", "weights_at": "before"}, True),
    "dare_linear": ("dare", {"merge": "task_arithmetic", "weights_at": "before"}, False),
    "dare_ties": ("dare", {"merge": "ties", "weights_at": "before"}, False),
    "breadcrumbs": ("breadcrumbs", {"merge": "task_arithmetic", "weights_at": "before"}, False),
    "breadcrumbs_ties": ("breadcrumbs", {"merge": "ties", "weights_at": "before"}, False),
    "slerp": ("slerp", {}, None),
    "model_stock": ("model_stock", {"mean": "cosine"}, None),
    "karcher": ("spherical_mean", {}, None),
}
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float64": "float64",
}
_KEYWORDS = {"true", "false", "step", "on", "for", "in", "to", "as", "study", "use", "export", "report"}


def _fail(message: str) -> MergekitImportError:
    return MergekitImportError(f"cannot import this mergekit config: {message}")


def _value(v: Any) -> str:
    """A normalised setting (or option) as spec text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(int(v)) if float(v).is_integer() else f"{v:.12g}"  # 0.4, not 0.39999999999999997
    if isinstance(v, str):
        return v
    if st.is_rules(v):
        if all(
            r["filter"] is None
            or (
                r["filter"].isidentifier()
                and r["filter"] not in _KEYWORDS
                and not keyword.iskeyword(r["filter"])
            )
            for r in v
        ):
            parts = [f"{r['filter'] or 'default'} = {_value(r['value'])}" for r in v]
            return f"by_name({', '.join(parts)})"
        rules = [
            f'rule(filter = "{r["filter"]}", value = {_value(r["value"])})'
            if r["filter"] is not None
            else f"rule(value = {_value(r['value'])})"
            for r in v
        ]
        return f"[{', '.join(rules)}]"
    return f"[{', '.join(_value(x) for x in v)}]"


def _setting(value: Any, where: str) -> Any:
    try:
        return st.normalise(value)
    except ValueError as exc:
        raise _fail(f"{where}: {exc}") from None


def _scaled(setting: Any, factor: float) -> Any:
    if factor == 1.0:
        return setting
    if isinstance(setting, int | float):
        return setting * factor
    if st.is_rules(setting):
        return [{"filter": r["filter"], "value": _scaled(r["value"], factor)} for r in setting]
    return [x * factor for x in setting]


def _identifier(path: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path.rstrip("/")).name).strip("_").lower() or "model"
    if stem[0].isdigit() or stem in _KEYWORDS or keyword.iskeyword(stem):
        stem = "m_" + stem
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return name


def _each(models: list[dict[str, Any]], glob: dict[str, Any], key: str, default: Any) -> list[Any]:
    """A per-model parameter: each model's own value, else the config's global one."""
    return [
        _setting(m.get("parameters", {}).get(key, glob.get(key, default)), f"{m['model']}: {key}")
        for m in models
    ]


def mergekit_to_spec(yaml_text: str, *, name: str = "merged") -> str:
    """The ``.merge`` spec equivalent to a mergekit config; raises :class:`MergekitImportError`."""
    import yaml

    try:
        config = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        raise _fail(f"not valid YAML ({exc})") from None
    if not isinstance(config, dict) or "merge_method" not in config:
        raise _fail("it has no 'merge_method'")
    method = str(config["merge_method"])
    if method not in SUPPORTED:
        raise _fail(f"merge_method {method!r} has no mlspec equivalent (supported: {', '.join(SUPPORTED)})")
    for key in ("slices", "modules"):
        if config.get(key):
            raise _fail(
                f"'{key}' (layer ranges, frankenmerges, multi-module models) are not supported; use 'models'"
            )
    ours, fixed, normalize_default = SUPPORTED[method]
    models = config.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, dict) and "model" in m for m in models):
        raise _fail("'models' must be a list of {model: path, parameters: {...}}")
    base_ref = config.get("base_model")
    for ref in [base_ref, *(m["model"] for m in models)]:
        if ref is not None and ("+" in str(ref) or "@" in str(ref)):
            raise _fail(
                f"model reference {ref!r}: LoRA adapters and revisions are not supported (use a local path)"
            )
    glob = dict(config.get("parameters") or {})
    params: dict[str, Any] = dict(fixed)
    others = [m for m in models if m["model"] != base_ref] if ours != "slerp" else models
    if ours == "slerp":
        if base_ref is None or len(models) != 2 or base_ref not in [m["model"] for m in models]:
            raise _fail("slerp needs exactly two models, one of them the base_model (the t = 0 end)")
        others = sorted(models, key=lambda m: m["model"] != base_ref)
        params["t"] = _setting(glob.get("t"), "t")
    elif ours in ("model_stock", "spherical_mean"):
        if glob.get("filter_wise"):
            raise _fail("model_stock filter_wise = true has no mlspec equivalent")
        if ours == "spherical_mean" and "max_iter" in glob:
            params["max_iter"] = int(glob["max_iter"])
    else:
        lam = float(glob.get("lambda", 1.0))
        weights = [
            _setting(m.get("parameters", {}).get("weight", glob.get("weight", 1.0)), f"{m['model']}: weight")
            for m in others
        ]
        normalize = bool(glob.get("normalize", normalize_default))
        if ours == "task_arithmetic":
            total = sum(w for w in weights if isinstance(w, float)) if normalize else 1.0
            if normalize and not all(isinstance(w, float) for w in weights):
                raise _fail("task_arithmetic with normalize and weights that vary by tensor")
            params["scale"] = [_scaled(w, lam / total) for w in weights]
        else:
            params["weights"] = weights
            params["normalize"] = normalize
            if ours != "average" and lam != 1.0:
                params["scale"] = lam
        if ours in ("ties", "dare", "breadcrumbs"):
            params["density"] = _each(others, glob, "density", 1.0)
        if ours == "breadcrumbs":
            params["gamma"] = _each(others, glob, "gamma", 0.01)
        if ours == "dare":
            params["rescale"] = "l1" if glob.get("rescale", True) else "none"
        if "consensus_method" in glob and ours in ("ties",):
            params["elect"] = {"sum": "mass", "count": "count"}[str(glob["consensus_method"])]
    for key in ("dtype", "out_dtype"):
        if config.get(key):
            if str(config[key]) not in _DTYPES:
                raise _fail(f"{key} {config[key]!r} is not one of {', '.join(sorted(_DTYPES))}")
            params[key] = _DTYPES[str(config[key])]
    return _render(
        method,
        ours,
        base_ref if ours not in ("average", "spherical_mean", "slerp") else None,
        [m["model"] for m in others],
        params,
        config,
        name,
    )


def _render(
    method: str,
    ours: str,
    base: str | None,
    models: list[str],
    params: dict[str, Any],
    config: dict[str, Any],
    name: str,
) -> str:
    taken: set[str] = {name}
    lines = [
        f"# Imported from a mergekit config (merge_method: {method}).",
        "# Checkpoints are read from local paths only: replace hub ids with downloaded directories.",
        "",
    ]
    if config.get("tokenizer_source") or config.get("tokenizer") or config.get("chat_template"):
        lines.insert(2, "# The tokenizer settings were not imported: the base model's tokenizer is copied.")
    lines += [f'study "{name}" (seed = 0)', ""]
    base_name = _identifier(base, taken) if base is not None else None
    if base is not None:
        lines.append(f'model {base_name} = load("{base}")')
    names = [_identifier(m, taken) for m in models]
    lines += [f'model {n} = load("{m}")' for n, m in zip(names, models)]
    args = (
        [f"method = {ours}"]
        + ([f"base = {base_name}"] if base_name else [])
        + [f"models = [{', '.join(names)}]"]
    )
    args += [f"{k} = {_value(v)}" for k, v in params.items()]
    lines += ["", f"merge {name} = merge_checkpoints(", *[f"    {a}," for a in args], ")"]
    lines += [f'export {name} to "{name}" as hf', ""]
    return "\n".join(lines)
