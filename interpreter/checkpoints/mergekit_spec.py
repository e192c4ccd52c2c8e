"""The spec text of merges imported from mergekit (torch-free): one ``load`` per checkpoint, one
``merge`` per mergekit document, an ``export`` for each merge no other merge uses."""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings as st

__all__ = ["Merge", "render"]

_KEYWORDS = {"true", "false", "step", "on", "for", "in", "to", "as", "study", "use", "export", "report"}


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


def render(merges: list[Merge], final: str) -> str:
    """The spec: the checkpoints loaded once each, the merges in order, exports of those no merge uses.
    Slices become ``stack(...)`` calls."""
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


def _layers(src: dict[str, Any], ids: dict[str, str]) -> str:
    start, end = src["layer_range"]
    extra = "".join(f", {k} = {_value(v)}" for k, v in src.get("params", {}).items())
    return f'layers(model = "{ids[src["model"]]}", start = {start}, end = {end}{extra})'


def _stack(target: str, m: Merge, ids: dict[str, str]) -> list[str]:
    models = list(dict.fromkeys(ids[src["model"]] for sl in m.slices or [] for src in sl["sources"]))
    args = [f"method = {m.op}"]
    if m.base is not None and m.base in ids:
        args.append(f"base = {ids[m.base]}")
    args.append(f"models = [{', '.join(models)}]")
    args += [f"{k} = {_value(v)}" for k, v in m.params.items()]
    slices = []
    for sl in m.slices or []:
        sources = [_layers(src, ids) for src in sl["sources"]]
        if len(sources) == 1 and not sl["params"]:
            slices.append(sources[0])
            continue
        extra = [f"{k} = {_value(v)}" for k, v in sl["params"].items()]
        if sl.get("base") is not None and sl["base"] != m.base:
            extra.append(f'base = "{ids[sl["base"]]}"')
        slices.append("slice(sources = [" + ", ".join(sources) + "]" + "".join(f", {e}" for e in extra) + ")")
    return [f"merge {target} = stack(", *[f"    {a}," for a in args], "    slices = [",
            *[f"        {s}," for s in slices], "    ],", ")"]


def _call(target: str, m: Merge, ids: dict[str, str]) -> list[str]:
    if m.slices:
        return _stack(target, m, ids)
    args = [f"method = {m.op}"]
    if m.base is not None:
        args.append(f"base = {ids[m.base]}")
    args.append(f"models = [{', '.join(ids[r] for r in m.models)}]")
    args += [f"{k} = {_value(v)}" for k, v in m.params.items()]
    return [f"merge {target} = merge_checkpoints(", *[f"    {a}," for a in args], ")"]
