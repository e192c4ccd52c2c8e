"""Operator documentation as people read it: ``mlspec ops NAME`` and an editor's hover.

One place turns an :class:`~mlspec.registry.OpSpec` into words: each parameter with its type,
range, default and choices, and — for the operators that a statement runs (``train``,
``evaluate`` …) — the clause that sets it, so the operator's and the statement's vocabulary meet.
Torch-free, like everything the checker touches.
"""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from .check.dialects import ACTIONS
from .registry import OpSpec

__all__ = ["ParamDoc", "param_docs", "type_text", "describe", "describe_markdown", "param_markdown"]

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))


@dataclass(frozen=True)
class ParamDoc:
    name: str  # as written in a spec (the alias where there is one)
    field: str  # the parameter model's field name
    type: str
    choices: tuple[str, ...]
    bounds: str
    default: str  # "required" or "default <value as JSON>"
    description: str
    clauses: tuple[str, ...]  # "`batch` in a `train` statement"


def _choices(annotation: Any) -> tuple[str, ...]:
    if get_origin(annotation) is Literal:
        return tuple(str(a) for a in get_args(annotation))
    return tuple(c for arg in get_args(annotation) for c in _choices(arg))


def type_text(annotation: Any) -> str:
    """``int``, ``float or none``, ``one of: exact, valid_path``, ``list of str`` …"""
    origin = get_origin(annotation)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        text = " or ".join(type_text(a) for a in parts)
        return text + (" or none" if len(parts) < len(get_args(annotation)) else "")
    if origin is list:
        (item,) = get_args(annotation) or (Any,)
        inner = get_origin(item) is Literal
        return "list of " + (f"({type_text(item)})" if inner else type_text(item))
    if origin is dict:
        return "call"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _bounds(info: FieldInfo) -> str:
    found = []
    for meta in info.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def _statements(spec: OpSpec) -> list[tuple[str, str, dict[str, str]]]:
    """(dialect, statement keyword, clause → parameter field) for each statement that runs ``spec``."""
    return [(dialect, keyword, rule.clauses) for dialect, rules in ACTIONS.items()
            for keyword, rule in rules.items() if rule.op == spec.name]


def _clauses(spec: OpSpec) -> dict[str, list[str]]:
    """Parameter (field name) → the statement clauses that set it."""
    out: dict[str, list[str]] = {}
    for dialect, keyword, clauses in _statements(spec):
        for clause, param in clauses.items():
            out.setdefault(param, []).append(f"`{clause}` in a `{keyword}` statement (.{dialect})")
    return out


def param_docs(spec: OpSpec) -> list[ParamDoc]:
    clauses = _clauses(spec)
    docs = []
    for name, info in spec.params.model_fields.items():
        default = "required" if info.is_required() else \
            f"default {json.dumps(info.get_default(call_default_factory=True))}"
        # A merge method's parameter that is per model or varies by tensor accepts settings; its
        # declared scalar field says its type, range and choices (mlspec.ops.merge.method).
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        declared = extra.get("scalar_field", info)
        kind = type_text(declared.annotation) + (" per model" if extra.get("per_model") else "") + \
            (" (may vary by tensor)" if extra.get("varies") else "")
        docs.append(ParamDoc(name=info.alias or name, field=name, type=kind,
                             choices=_choices(declared.annotation), bounds=_bounds(declared), default=default,
                             description=info.description or "", clauses=tuple(clauses.get(name, ()))))
    return docs


def _header(spec: OpSpec) -> str:
    return f"{spec.name}  ->  {spec.output.value}   (version {spec.version}; dialects: {', '.join(sorted(spec.dialects))})"


def _input_line(port: Any) -> tuple[str, str]:
    many = f"list of {port.kind.value}" if port.many else port.kind.value
    return port.name, many + ("" if port.required else " (optional)") + (f"  {port.doc}" if port.doc else "")


def describe(spec: OpSpec) -> str:
    """Plain text for ``mlspec ops NAME``."""
    lines = [_header(spec), "", inspect.cleandoc(spec.doc), ""]
    if spec.inputs:
        lines.append("inputs:")
        lines += [f"  {name:<16} {text}" for name, text in map(_input_line, spec.inputs)]
    params = param_docs(spec)
    if params:
        lines.append("parameters:")
        for p in params:
            kind = p.type + (f" ({p.bounds})" if p.bounds else "")
            lines.append(f"  {p.name:<16} {kind:<24} {p.default}" + (f"  — {p.description}" if p.description else ""))
    names = {p.field: p.name for p in params}
    for dialect, keyword, clauses in _statements(spec):
        written = [c if names.get(f) == c else f"{c} (sets {names.get(f, f)})" for c, f in clauses.items()]
        lines += ["", f"The `{keyword}` statement (.{dialect}) runs {spec.name}; its clauses set parameters: "
                  + ", ".join(written)]
    return "\n".join(lines)


def _param_line(p: ParamDoc) -> str:
    kind = p.type + (f", {p.bounds}" if p.bounds else "")
    text = f"- `{p.name}`: {kind}; {p.default}" + (f" — {p.description}" if p.description else "")
    return text + "".join(f"; set by {c}" for c in p.clauses)


def describe_markdown(spec: OpSpec) -> str:
    """Markdown for an editor's hover on an operator."""
    lines = [f"**{spec.name}** → {spec.output.value}", "", inspect.cleandoc(spec.doc)]
    if spec.inputs:
        lines += ["", "**inputs**"] + [f"- `{name}`: {text}" for name, text in map(_input_line, spec.inputs)]
    params = param_docs(spec)
    if params:
        lines += ["", "**parameters**"] + [_param_line(p) for p in params]
    return "\n".join(lines)


def param_markdown(spec: OpSpec, name: str) -> str | None:
    """Markdown for a hover on one parameter or input of ``spec`` (``name`` as written)."""
    port = spec.port(name)
    if port is not None:
        return f"**{name}** — input of `{spec.name}`: {_input_line(port)[1]}"
    for p in param_docs(spec):
        if name in (p.name, p.field):
            return f"**{p.name}** — parameter of `{spec.name}`\n\n" + _param_line(p)[2:]
    return None
