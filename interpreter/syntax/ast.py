"""The AST of a spec: frozen dataclasses, each carrying the :class:`~mlspec.errors.Span` it came from.

``dump()`` leaves spans and comments out, so that ``parse(fmt(spec)).dump() == parse(spec).dump()``
says two specs mean the same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..errors import Span

__all__ = [
    "Node", "Expr", "Number", "String", "Bool", "ListExpr", "Range", "Name", "Call", "Index", "KwArg",
    "Statement", "Study", "Use", "Decl", "Binding", "Clause", "Along", "Action", "Export", "Report",
    "Program", "fields_of",
]

#: Nodes are plain frozen dataclasses: the parser's output is well-typed by construction, and a
#: validating model would cost a spec check more (its classes alone took 60 ms to import) than the
#: whole rest of the checker's own work.
_node = dataclass(frozen=True, slots=True, kw_only=True)


@_node
class Node:
    span: Span = field(repr=False)

    def dump(self) -> Any:
        """The node as plain data without spans or comments — what "the same AST" means."""
        return _strip(self)


def fields_of(node: Node) -> list[str]:
    """The names of a node's fields, in declaration order."""
    return [f.name for f in dataclasses.fields(node)]


def _strip(value: Any) -> Any:
    if isinstance(value, Node):
        return {f.name: _strip(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.name == "span" or f.name.endswith("_span") or f.name in ("comments", "trailing"))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


@_node
class Number(Node):
    node: Literal["number"] = "number"
    value: int | float
    text: str  # as written, so fmt keeps `1e-3` rather than `0.001`


@_node
class String(Node):
    node: Literal["string"] = "string"
    value: str


@_node
class Bool(Node):
    node: Literal["bool"] = "bool"
    value: bool


@_node
class ListExpr(Node):
    node: Literal["list"] = "list"
    items: list[Expr]


@_node
class Range(Node):
    node: Literal["range"] = "range"
    start: Expr
    stop: Expr
    step: Expr | None = None


@_node
class Name(Node):
    node: Literal["name"] = "name"
    id: str


@_node
class KwArg(Node):
    name: str
    name_span: Span = field(repr=False)
    value: Expr


@_node
class Call(Node):
    """``func(args, k = v)``, or ``receiver.func(args)`` (the receiver becomes the first argument)."""

    node: Literal["call"] = "call"
    func: str
    name_span: Span = field(repr=False)
    receiver: Expr | None = None
    args: list[Expr] = field(default_factory=list)
    kwargs: list[KwArg] = field(default_factory=list)


@_node
class Index(Node):
    """``ta[0.5]`` — one member of a sweep."""

    node: Literal["index"] = "index"
    target: Name
    keys: list[Expr]


Expr = Union[Number, String, Bool, ListExpr, Range, Name, Call, Index]  # noqa: UP007 (forward refs)


@_node
class Statement(Node):
    comments: list[str] = field(default_factory=list)  # comment lines directly above the statement
    trailing: str | None = None  # a comment at the end of the statement's last line


@_node
class Study(Statement):
    stmt: Literal["study"] = "study"
    name: str
    options: list[KwArg] = field(default_factory=list)


@_node
class Use(Statement):
    stmt: Literal["use"] = "use"
    path: str
    python: bool = False  # `use python "methods.py"`: user operators (runs only with --allow-python)


@_node
class Binding(Node):
    var: str
    values: Expr


@_node
class Decl(Statement):
    stmt: Literal["decl"] = "decl"
    kind: str
    kind_span: Span = field(repr=False)
    name: str
    name_span: Span = field(repr=False)
    sweep_vars: list[str] = field(default_factory=list)
    value: Expr
    on: Expr | None = None
    bindings: list[Binding] = field(default_factory=list)


@_node
class Clause(Node):
    keyword: str
    value: Expr


@_node
class Along(Node):
    keyword: Literal["along"] = "along"
    axes: list[Name]


@_node
class Action(Statement):
    stmt: Literal["action"] = "action"
    keyword: str
    subjects: Expr
    on: Expr | None = None
    clauses: list[Clause | Along] = field(default_factory=list)


@_node
class Export(Statement):
    stmt: Literal["export"] = "export"
    target: Expr
    path: str
    path_span: Span = field(repr=False)
    format: str | None = None


@_node
class Report(Statement):
    stmt: Literal["report"] = "report"
    path: str


@dataclass(kw_only=True)
class Program:
    file: str
    dialect: Literal["merge", "extrap"]
    source: str = field(repr=False)
    statements: list[Study | Use | Decl | Action | Export | Report]
    question: str = ""  # the leading comment block: what the study asks
    trailing_comments: list[str] = field(default_factory=list)

    def dump(self) -> Any:
        return [s.dump() for s in self.statements]
