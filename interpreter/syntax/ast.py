"""The AST of a spec: pydantic nodes, each carrying the :class:`~mlspec.errors.Span` it came from.

Spans and comments are excluded from equality (``Node.same``) so that ``parse(fmt(spec))`` can be
compared with ``parse(spec)``.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ..errors import Span

__all__ = [
    "Node", "Expr", "Number", "String", "Bool", "ListExpr", "Range", "Name", "Call", "Index", "KwArg",
    "Statement", "Study", "Use", "Decl", "Binding", "Clause", "Along", "Action", "Export", "Report",
    "Program",
]


class Node(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    span: Span = Field(repr=False)

    def dump(self) -> Any:
        """The node as plain data without spans or comments — what "the same AST" means."""
        return _strip(self.model_dump())


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not (k == "span" or k.endswith("_span") or k in ("comments", "trailing"))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class Number(Node):
    node: Literal["number"] = "number"
    value: int | float
    text: str  # as written, so fmt keeps `1e-3` rather than `0.001`


class String(Node):
    node: Literal["string"] = "string"
    value: str


class Bool(Node):
    node: Literal["bool"] = "bool"
    value: bool


class ListExpr(Node):
    node: Literal["list"] = "list"
    items: list[Expr]


class Range(Node):
    node: Literal["range"] = "range"
    start: Expr
    stop: Expr
    step: Expr | None = None


class Name(Node):
    node: Literal["name"] = "name"
    id: str


class KwArg(Node):
    name: str
    name_span: Span = Field(repr=False)
    value: Expr


class Call(Node):
    """``func(args, k = v)``, or ``receiver.func(args)`` (the receiver becomes the first argument)."""

    node: Literal["call"] = "call"
    func: str
    name_span: Span = Field(repr=False)
    receiver: Expr | None = None
    args: list[Expr] = []
    kwargs: list[KwArg] = []


class Index(Node):
    """``ta[0.5]`` — one member of a sweep."""

    node: Literal["index"] = "index"
    target: Name
    keys: list[Expr]


Expr = Union[Number, String, Bool, ListExpr, Range, Name, Call, Index]  # noqa: UP007 (forward refs)


class Statement(Node):
    comments: list[str] = []  # comment lines directly above the statement
    trailing: str | None = None  # a comment at the end of the statement's last line


class Study(Statement):
    stmt: Literal["study"] = "study"
    name: str
    options: list[KwArg] = []


class Use(Statement):
    stmt: Literal["use"] = "use"
    path: str
    python: bool = False  # `use python "methods.py"`: user operators (runs only with --allow-python)


class Binding(Node):
    var: str
    values: Expr


class Decl(Statement):
    stmt: Literal["decl"] = "decl"
    kind: str
    kind_span: Span = Field(repr=False)
    name: str
    name_span: Span = Field(repr=False)
    sweep_vars: list[str] = []
    value: Expr
    on: Expr | None = None
    bindings: list[Binding] = []


class Clause(Node):
    keyword: str
    value: Expr


class Along(Node):
    keyword: Literal["along"] = "along"
    axes: list[Name]


class Action(Statement):
    stmt: Literal["action"] = "action"
    keyword: str
    subjects: Expr
    on: Expr | None = None
    clauses: list[Clause | Along] = []


class Export(Statement):
    stmt: Literal["export"] = "export"
    target: Expr
    path: str
    path_span: Span = Field(repr=False)
    format: str | None = None


class Report(Statement):
    stmt: Literal["report"] = "report"
    path: str


class Program(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    file: str
    dialect: Literal["merge", "extrap"]
    source: str = Field(repr=False)
    statements: list[Study | Use | Decl | Action | Export | Report]
    question: str = ""  # the leading comment block: what the study asks
    trailing_comments: list[str] = []

    def dump(self) -> Any:
        return [s.dump() for s in self.statements]


for _cls in (ListExpr, Range, KwArg, Call, Index, Binding, Decl, Clause, Action, Export):
    _cls.model_rebuild()
