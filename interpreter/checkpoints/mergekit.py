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

import keyword
import re
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any

from mlspec.checkpoints import settings as st
from mlspec.checkpoints.mergekit_methods import METHODS, REQUIRED, MethodMap, Param
from mlspec.errors import MlspecError

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
_KEYWORDS = {"true", "false", "step", "on", "for", "in", "to", "as", "study", "use", "export", "report"}


def _fail(message: str, where: str | None = None) -> MergekitImportError:
    prefix = f"{where}: " if where else ""
    return MergekitImportError(f"cannot import this mergekit config: {prefix}{message}")


@dataclass
class Merge:
    """One mergekit document, converted: the mlspec operator, its inputs (model references: paths
    or other documents' names) and its parameters in mlspec's names."""

    name: str | None
    method: str
    op: str
    base: str | None
    models: list[str]
    params: dict[str, Any]
    slices: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    def uses(self) -> list[str]:
        refs = [self.base, *self.models] if self.base else list(self.models)
        for sl in self.slices or []:
            refs += [src["model"] for src in sl["sources"]]
        return refs


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
    return param.convert(value) if param.convert else value


def _global(glob: dict[str, Any], key: str, param: Param, method: str) -> Any:
    where = f"parameters: {key}"
    if param.flag:
        return _flag(glob.get(key), param, where)
    given = _setting(glob[key], where) if glob.get(key) is not None else None
    value = _fallback(given, param.default)
    if value is REQUIRED:
        raise _fail(f"{method} needs the parameter '{key}' (mergekit requires it)")
    return value


def _per_model(entry: dict[str, Any], glob: dict[str, Any], key: str, param: Param, method: str) -> Any:
    own = (entry.get("parameters") or {}).get(key)
    where = f"{entry['model']}: {key}"
    given = _setting(own, where) if own is not None else None
    shared = _setting(glob[key], f"parameters: {key}") if glob.get(key) is not None else None
    value = _fallback(given, _fallback(shared, param.default))
    if value is REQUIRED:
        raise _fail(
            f"{method} needs '{key}' for every model; {entry['model']!r} has none and there is no global {key}"
        )
    return value


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
    glob = dict(config.get("parameters") or {})
    if method == "model_stock" and glob.get("filter_wise"):
        raise _fail("model_stock with filter_wise: true has no mlspec equivalent", "parameters")
    slices = config.get("slices")
    if slices:
        base, others = config.get("base_model"), []
    else:
        base, others = _inputs(config, spec, method)
    params: dict[str, Any] = {}
    for key, param in spec.per_model.items():
        values = [_per_model(e, glob, key, param, method) for e in others]
        if param.ours is not None and any(v is not None for v in values):
            params[param.ours] = values
    for key, param in spec.globals.items():
        value = _global(glob, key, param, method)
        if param.ours is not None and value is not None and param.ours not in params:
            params[param.ours] = value
    if method == "task_arithmetic":
        params["scale"] = _task_arithmetic_scales(params["scale"], glob)
        params.pop("normalize", None)
    params.update(spec.fixed)
    params.update(_dtypes(config))
    refs = [e["model"] for e in others]
    if spec.base == "first":
        refs, base = [base, *refs], None
    return Merge(name, method, spec.ours, base, refs, params, slices, _tokenizer_notes(config, base, refs))


def _task_arithmetic_scales(weights: list[Any], glob: dict[str, Any]) -> list[Any]:
    """mergekit's task arithmetic is base + λ·Σ wᵢτᵢ (/ Σ wᵢ with normalize): one scale per model."""
    lam = glob.get("lambda", 1.0)
    if not isinstance(lam, int | float) or isinstance(lam, bool):
        raise _fail("task_arithmetic with a lambda that varies by tensor has no mlspec equivalent", "parameters")
    if not glob.get("normalize", False):
        return [_scaled(w, float(lam)) for w in weights]
    if not all(isinstance(w, float) for w in weights):
        raise _fail("task_arithmetic with normalize: true and weights that vary by tensor has no mlspec equivalent")
    total = sum(weights)
    return [_scaled(w, float(lam) / (total if abs(total) >= 1e-8 else 1.0)) for w in weights]


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
    entries = doc.get("models") or [src for sl in doc.get("slices") or [] for src in (sl or {}).get("sources") or []]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("model"), str) for e in entries):
        raise _fail("every model must be given as {model: path, parameters: {...}}", where)
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
    return _render(read_config(yaml_text), name)


# --- spec text --------------------------------------------------------------------------------------
def _value(v: Any) -> str:
    """A normalised setting (or option) as spec text."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(int(v)) if float(v).is_integer() else f"{v:.12g}"  # 0.4, not 0.39999999999999997
    if isinstance(v, str):
        return v
    if st.is_rules(v):
        if all(r["filter"] is None or _plain(r["filter"]) for r in v):
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


def _plain(word: str) -> bool:
    return word.isidentifier() and word not in _KEYWORDS and not keyword.iskeyword(word)


def _identifier(path: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", Path(path.rstrip("/")).name).strip("_").lower() or "model"
    if stem[0].isdigit() or not _plain(stem):
        stem = "m_" + stem
    name, i = stem, 2
    while name in taken:
        name, i = f"{stem}_{i}", i + 1
    taken.add(name)
    return name


def _render(merges: list[Merge], final: str) -> str:
    taken: set[str] = set()
    merge_ids = {m.name: _identifier(m.name or final, taken) for m in merges}
    paths = [r for m in merges for r in m.uses() if r not in merge_ids]
    ids = {p: _identifier(p, taken) for p in dict.fromkeys(paths)}
    ids.update({n: i for n, i in merge_ids.items() if n is not None})
    methods = ", ".join(dict.fromkeys(m.method for m in merges))
    lines = [
        f"# Imported from a mergekit config (merge_method: {methods}).",
        "# Checkpoints are read from local paths only: replace hub ids with downloaded directories.",
        *[note for m in merges for note in m.notes],
        "",
        f'study "{merge_ids[merges[-1].name]}" (seed = 0)',
        "",
        *[f'model {ids[p]} = load("{p}")' for p in dict.fromkeys(paths)],
    ]
    for m in merges:
        lines += ["", *_call(merge_ids[m.name], m, ids)]
    used = {r for m in merges for r in m.uses()}
    lines += [""] + [f'export {merge_ids[m.name]} to "{merge_ids[m.name]}" as hf' for m in merges if m.name not in used]
    return "\n".join(lines) + "\n"


def _call(target: str, m: Merge, ids: dict[str, str]) -> list[str]:
    args = [f"method = {m.op}"]
    if m.base is not None:
        args.append(f"base = {ids[m.base]}")
    args.append(f"models = [{', '.join(ids[r] for r in m.models)}]")
    args += [f"{k} = {_value(v)}" for k, v in m.params.items()]
    return [f"merge {target} = merge_checkpoints(", *[f"    {a}," for a in args], ")"]
