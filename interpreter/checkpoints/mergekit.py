"""``mlspec import mergekit config.yml``: a mergekit YAML config as an equivalent ``.merge`` spec.

Every merge method of mergekit 0.1.5 maps to an mlspec operator whose named options reproduce
mergekit's semantics (:mod:`mlspec.checkpoints.mergekit_methods` says which, parameter by
parameter). As mergekit does:

- a model's parameter falls back to the global ``parameters`` and then to the method's default; a
  model's rule list without a fallback rule (``- value: …``) falls back the same way for the
  tensors its filters do not match;
- ``dtype`` is the dtype the merge runs in and, without ``out_dtype``, the dtype written;
- ``linear``, ``karcher`` and ``passthrough`` take the ``base_model`` as one more input;
- several YAML documents chain merges (``mergekit-multi``): a document's ``name`` can be used as a
  model by the others; the spec declares each merge once and exports those no other merge uses.

``tokenizer_source: base`` (or the model whose tokenizer the export copies) is carried; a union
vocabulary, another model's tokenizer or added tokens re-map the embeddings, which mlspec does
not do, and are refused. A chat template is noted in the spec, not applied. Configs mergekit
rejects are refused with the reason; so are LoRA references, ``modules`` and methods' options that
have no mlspec equivalent (``model_stock`` ``filter_wise``).
"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter
from typing import Any

from ..errors import MlspecError
from . import settings as st
from .mergekit_methods import METHODS, REQUIRED, MethodMap, Param
from .mergekit_spec import Merge, render

__all__ = ["Merge", "MergekitImportError", "mergekit_to_spec", "read_config"]


class MergekitImportError(MlspecError):
    pass


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


def _fail(message: str, where: str | None = None) -> MergekitImportError:
    prefix = f"{where}: " if where else ""
    return MergekitImportError(f"cannot import this mergekit config: {prefix}{message}")


# --- settings ---------------------------------------------------------------------------------------
def _setting(value: Any, where: str) -> Any:
    try:
        return st.normalise(value)
    except ValueError as exc:
        raise _fail(str(exc), where) from None


def _has_fallback(setting: Any) -> bool:
    return not st.is_rules(setting) or any(rule["filter"] is None for rule in setting)


def _fallback(setting: Any, then: Any) -> Any:
    """``setting``, where its rules match nothing continuing with ``then`` (mergekit's lookup order)."""
    if setting is None:
        return then
    if _has_fallback(setting) or then is None or then is REQUIRED:
        return setting
    return setting + (then if st.is_rules(then) else [{"filter": None, "value": then}])


def _flag(value: Any, param: Param, where: str) -> Any:
    if value is None:
        value = param.default
    if not isinstance(value, bool):
        raise _fail(f"must be true or false (not {value!r})", where)
    return value


Level = tuple[dict[str, Any], str]  # a parameters mapping, and where it is written (for messages)


def _lookup(levels: list[Level], key: str, param: Param) -> Any:
    """mergekit's lookup: the first level that sets ``key`` (a level whose rules match nothing for a
    tensor passes that tensor on to the next), then the method's default (or REQUIRED)."""
    given = [(level[key], f"{where}: {key}") for level, where in levels if level.get(key) is not None]
    if param.flag:
        return _flag(given[0][0] if given else None, param, given[0][1] if given else key)
    value = param.default
    for setting, where in reversed(given):
        value = _fallback(_setting(setting, where), value)
    return value


def _parameters(
    method: str, spec: MethodMap, entries: list[dict[str, Any]], levels: list[Level]
) -> dict[str, Any]:
    """The method's parameters in mlspec's names: per-model ones as one setting per entry (looked up
    on the entry, then ``levels``), global ones looked up on ``levels``."""
    out: dict[str, Any] = {}
    for key, param in spec.per_model.items():
        values = []
        for entry in entries:
            value = _lookup([(entry.get("parameters") or {}, str(entry["model"])), *levels], key, param)
            if value is REQUIRED:
                raise _fail(f"{method} needs '{key}' for every model; {entry['model']!r} has none and there is no global {key}")
            values.append(value)
        if param.ours is not None and any(v is not None for v in values):
            out[param.ours] = values
    mergekit_globals = {}
    for key, param in spec.globals.items():
        value = _lookup(levels, key, param)
        if value is REQUIRED:
            raise _fail(f"{method} needs the parameter '{key}' (mergekit requires it)")
        mergekit_globals[key] = value
        if param.ours is not None and value is not None:
            out[param.ours] = param.convert(value) if param.convert else value
    if method == "model_stock" and mergekit_globals["filter_wise"]:
        raise _fail("model_stock with filter_wise: true has no mlspec equivalent", "parameters")
    if method == "task_arithmetic":
        out = {"scale": _task_arithmetic_scales(out["weights"], mergekit_globals["lambda"], mergekit_globals["normalize"])}
    return {**out, **spec.fixed}


def _scaled(setting: Any, factor: float) -> Any:
    if factor == 1.0:
        return setting
    if isinstance(setting, int | float):
        return setting * factor
    if st.is_rules(setting):
        return [{"filter": r["filter"], "value": _scaled(r["value"], factor)} for r in setting]
    return [x * factor for x in setting]


# --- one document -----------------------------------------------------------------------------------
def _inputs(config: dict[str, Any], spec: MethodMap, method: str) -> tuple[str | None, list[dict[str, Any]]]:
    """The base (None unless the method anchors on it) and the other inputs, as mergekit sees them."""
    entries = list(config.get("models") or [])
    base = config.get("base_model")
    if spec.base == "joins":
        if base is not None and base not in [e["model"] for e in entries]:
            entries.append({"model": base})  # mergekit adds the base model to the inputs
        base = None
    elif base is None and spec.base in ("required", "first"):
        raise _fail(f"{method} needs a base_model")
    others = [e for e in entries if e["model"] != base]
    low, high = spec.inputs
    if len(others) < low or (high is not None and len(others) > high):
        count = f"exactly {low}" if low == high else f"at least {low}"
        besides = " besides the base model" if spec.base != "joins" else ""
        raise _fail(f"{method} merges {count} model(s){besides}, not {len(others)}")
    return base, others


def _convert(config: dict[str, Any], name: str | None) -> Merge:
    method = str(config["merge_method"])
    if method not in METHODS:
        raise _fail(f"merge_method {method!r} is not a mergekit 0.1.5 method (they are: {', '.join(METHODS)})")
    spec = METHODS[method]
    levels: list[Level] = [(dict(config.get("parameters") or {}), "parameters")]
    if config.get("slices"):
        slices = [_slice(method, spec, sl, i, config.get("base_model"), levels) for i, sl in enumerate(config["slices"])]
        base = config.get("base_model")
        return Merge(name, method, spec.ours, base, [], {**spec.fixed, **_dtypes(config)}, slices,
                     _tokenizer_notes(config, base, [slices[0]["sources"][0]["model"]]))
    base, others = _inputs(config, spec, method)
    params = {**_parameters(method, spec, others, levels), **_dtypes(config)}
    refs = [e["model"] for e in others]
    if spec.base == "first":
        refs, base = [base, *refs], None
    return Merge(name, method, spec.ours, base, refs, params, None, _tokenizer_notes(config, base, refs))


def _slice(
    method: str, spec: MethodMap, sl: Any, index: int, base: str | None, levels: list[Level]
) -> dict[str, Any]:
    """One output slice: its sources (model, layer range) and the parameters that apply to it (the
    slice's own ``parameters`` sit between the sources' and the global ones)."""
    where = f"slices[{index}]"
    sources = sl.get("sources") if isinstance(sl, dict) else None
    if not isinstance(sources, list) or not sources:
        raise _fail("a slice needs sources: [{model: ..., layer_range: [start, end]}]", where)
    for src in sources:
        span = src.get("layer_range")
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in span)
                and 0 <= span[0] < span[1]):
            raise _fail(f"{src['model']}: layer_range must be [start, end] with 0 ≤ start < end (not {span!r})", where)
    lengths = sorted({src["layer_range"][1] - src["layer_range"][0] for src in sources})
    if len(lengths) > 1:
        raise _fail(f"all sources of a slice must span the same number of layers (not {lengths}; mergekit refuses this too)", where)
    base = sl.get("base_model") or base
    others = sources if spec.base == "joins" else [src for src in sources if src["model"] != base]
    if spec.base == "joins" and method == "passthrough" and len(sources) != 1:
        raise _fail(f"passthrough copies one source per slice (not {len(sources)}); merge them with another method", where)
    if spec.base in ("required", "first") and len(others) == len(sources) and len(sources) > 1:
        raise _fail(f"{method} needs the base model {base!r} among the slice's sources", where)
    if len(sources) == 1:
        params: dict[str, Any] = {}  # one source is copied
    else:
        params = _parameters(method, spec, others, [(dict(sl.get("parameters") or {}), where), *levels])
    # Per-model parameters (one value per model besides the base) go to their sources; the base
    # leads a "first" method's sources (slerp's t = 0 end).
    per_model = {p.ours for p in spec.per_model.values() if p.ours}
    own: dict[str, dict[str, Any]] = {src["model"]: {} for src in sources}
    for key in [k for k in params if k in per_model]:
        for src, value in zip(others, params.pop(key)):
            own[src["model"]][key] = value
    if spec.base == "first":
        sources = sorted(sources, key=lambda src: src["model"] != base)
    return {"sources": [{"model": src["model"], "layer_range": list(src["layer_range"]), "params": own[src["model"]]}
                        for src in sources],
            "base": base if spec.base != "joins" else None, "params": params}


def _task_arithmetic_scales(weights: list[Any], lam: Any, normalize: bool) -> list[Any]:
    """mergekit's task arithmetic is base + λ·Σ wᵢτᵢ (/ Σ wᵢ with normalize): one scale per model."""
    if not isinstance(lam, float):
        raise _fail("task_arithmetic with a lambda that varies by tensor has no mlspec equivalent", "parameters")
    if not normalize:
        return [_scaled(w, lam) for w in weights]
    if not all(isinstance(w, float) for w in weights):
        raise _fail("task_arithmetic with normalize: true and weights that vary by tensor has no mlspec equivalent")
    total = sum(weights)
    return [_scaled(w, lam / (total if abs(total) >= 1e-8 else 1.0)) for w in weights]


def _dtypes(config: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key in ("dtype", "out_dtype"):
        if config.get(key):
            if str(config[key]) not in _DTYPES:
                raise _fail(f"{key} {config[key]!r} is not one of {', '.join(sorted(_DTYPES))}")
            out[key] = _DTYPES[str(config[key])]
    if "dtype" in out and "out_dtype" not in out:
        out["out_dtype"] = out["dtype"]  # mergekit writes in dtype when there is no out_dtype
    return out


def _tokenizer_notes(config: dict[str, Any], base: str | None, refs: list[str]) -> list[str]:
    """What the export does about the tokenizer; refuses what would change the embeddings."""
    source, tokenizer = config.get("tokenizer_source"), config.get("tokenizer")
    if source is not None and tokenizer is not None:
        raise _fail("it sets both tokenizer_source and tokenizer (mergekit refuses that too)")
    if isinstance(tokenizer, dict):
        extra = sorted(set(tokenizer) - {"source"})
        if extra:
            raise _fail(
                f"tokenizer: {', '.join(extra)}: adding tokens or padding the vocabulary re-maps the embeddings, "
                "which mlspec does not do"
            )
        source = tokenizer.get("source", "union")
    notes = []
    copied = base or (refs[0] if refs else None)
    if source is not None:
        if source == "union":
            raise _fail(
                "tokenizer_source: union builds a merged vocabulary and re-maps every model's embeddings, "
                "which mlspec does not do; use base (all models must share the base's vocabulary)"
            )
        if source not in ("base", copied):
            raise _fail(
                f"tokenizer_source: {source}: mergekit re-maps the embeddings to that model's vocabulary, which "
                f"mlspec does not do; the export copies the tokenizer of {copied!r}"
            )
        notes.append(f"# tokenizer_source: {source}: the export copies the tokenizer of {copied}.")
    if config.get("chat_template"):
        notes.append(f"# chat_template: {config['chat_template']} was not applied (the tokenizer is copied as it is).")
    return notes


# --- documents -------------------------------------------------------------------------------------
def _documents(yaml_text: str) -> list[tuple[str | None, dict[str, Any]]]:
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(yaml_text) if d is not None]
    except yaml.YAMLError as exc:
        raise _fail(f"not valid YAML ({exc})") from None
    out: list[tuple[str | None, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        where = f"document {i + 1}" if len(docs) > 1 else None
        if not isinstance(doc, dict) or "merge_method" not in doc:
            raise _fail("it has no 'merge_method'", where)
        doc = dict(doc)
        name = doc.pop("name", None)
        if name is not None and not isinstance(name, str):
            raise _fail(f"name must be a string (not {name!r})", where)
        if name in [n for n, _ in out]:
            raise _fail("several documents have no name (mergekit-multi allows one)" if name is None
                        else f"two documents are named {name!r}", where)
        _check_document(doc, where)
        out.append((name, doc))
    if not out:
        raise _fail("it has no 'merge_method'")
    return out


def _check_document(doc: dict[str, Any], where: str | None) -> None:
    present = [key for key in ("models", "slices", "modules") if doc.get(key)]
    if len(present) != 1:
        raise _fail("exactly one of 'models', 'slices' or 'modules' must be given (mergekit requires it)", where)
    if present == ["modules"]:
        raise _fail("'modules' (multi-module models) are not supported; use 'models' or 'slices'", where)
    slices = doc.get("slices") or []
    if not isinstance(slices, list) or not all(isinstance(sl, dict) for sl in slices):
        raise _fail("slices must be a list of {sources: [...]}", where)
    entries = doc.get("models") or [src for sl in slices for src in sl.get("sources") or []]
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("model"), str) and isinstance(e.get("parameters") or {}, dict)
        for e in entries
    ):
        raise _fail("every model must be given as {model: path, parameters: {name: value, ...}}", where)
    if not isinstance(doc.get("parameters") or {}, dict):
        raise _fail("parameters must be a mapping {name: value, ...}", where)
    for ref in [doc.get("base_model"), *(e["model"] for e in entries)]:
        if ref is not None and ("+" in str(ref) or "@" in str(ref)):
            raise _fail(f"model reference {ref!r}: LoRA adapters and revisions are not supported (use a local path)", where)


def _ordered(merges: list[Merge]) -> list[Merge]:
    by_name = {m.name: m for m in merges if m.name is not None}
    graph = {m.name: [r for r in m.uses() if r in by_name] for m in merges}
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise _fail(f"the merges use each other in a circle ({' -> '.join(map(str, exc.args[1]))})") from None
    named = {m.name: m for m in merges}
    return [named[n] for n in order]


def read_config(yaml_text: str) -> list[Merge]:
    """A mergekit config (one or several YAML documents) as merges, each after those it uses;
    raises :class:`MergekitImportError`."""
    merges = []
    for doc_name, doc in _documents(yaml_text):
        try:
            merges.append(_convert(doc, doc_name))
        except MergekitImportError as exc:
            if doc_name is None:
                raise
            raise MergekitImportError(str(exc).replace(": ", f": merge {doc_name!r}: ", 1)) from None
    return _ordered(merges)


def mergekit_to_spec(yaml_text: str, *, name: str = "merged") -> str:
    """The ``.merge`` spec equivalent to a mergekit config; ``name`` names the unnamed (final) merge."""
    try:
        return render(read_config(yaml_text), name)
    except ValueError as exc:
        raise _fail(str(exc)) from None
