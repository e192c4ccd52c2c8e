"""The AST of a spec: frozen keyword-only records, each carrying the :class:`~mlspec.errors.Span` it came from.

``dump()`` leaves spans and comments out, so that ``parse(fmt(spec)).dump() == parse(spec).dump()``
says two specs mean the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union

try:
    from typing import dataclass_transform
except ImportError:  # Python 3.10
    from typing_extensions import dataclass_transform

from ..errors import Span

__all__ = [
    "Node", "Expr", "Number", "String", "Bool", "ListExpr", "Range", "Name", "Call", "Index", "KwArg",
    "Statement", "Study", "Use", "Decl", "Binding", "Clause", "Along", "Action", "Export", "Report",
    "Program", "fields_of", "replace",
]


_REQUIRED: Any = object()


class _Field:
    """A field's default (``default_factory`` for a fresh list per node) and whether repr shows it."""

    def __init__(self, default: Any = _REQUIRED, default_factory: Callable[[], Any] | None = None,
                 repr: bool = True):
        self.default, self.default_factory, self.repr = default, default_factory, repr


def field(*, default: Any = _REQUIRED, default_factory: Callable[[], Any] | None = None, repr: bool = True) -> Any:
    return _Field(default, default_factory, repr)


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(field,))
def _node(cls: type) -> type:
    """Make ``cls`` a frozen, keyword-only record of its annotated fields (its bases' first), as
    ``dataclass(frozen=True, kw_only=True)`` would. A spec's check builds ten thousand nodes, and
    the dataclass machinery cost 12-20 ms to import and a few microseconds a node to construct;
    this makes one ``__init__`` per class that fills the instance dictionary directly."""
    fields: dict[str, _Field] = {}
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("_field_specs", {}))
    for name in cls.__dict__.get("__annotations__", {}):
        if name.startswith("_"):
            continue
        value = cls.__dict__.get(name, _REQUIRED)
        if isinstance(value, _Field):
            fields[name] = value
            if value.default is _REQUIRED or value.default_factory is not None:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        else:
            fields[name] = _Field(value, repr=fields[name].repr if name in fields else True)
    cls._field_specs = fields  # type: ignore[attr-defined]
    env: dict[str, Any] = {"_REQUIRED": _REQUIRED}
    params, body = [], []
    for name, f in fields.items():
        if f.default_factory is not None:
            env[f"_f_{name}"] = f.default_factory
            params.append(f"{name}=_REQUIRED")
            body.append(f"{name}=_f_{name}() if {name} is _REQUIRED else {name}")
        elif f.default is _REQUIRED:
            params.append(name)
            body.append(f"{name}={name}")
        else:
            env[f"_d_{name}"] = f.default
            params.append(f"{name}=_d_{name}")
            body.append(f"{name}={name}")
    source = f"def __init__(self, *, {', '.join(params)}):\n    self.__dict__.update({', '.join(body)})\n"
    exec(source, env)  # noqa: S102 (our own generated code, from the class's field names)
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    cls._fields = tuple(fields)  # type: ignore[attr-defined]
    cls._shown = tuple(n for n, f in fields.items() if f.repr)  # type: ignore[attr-defined]
    return cls


@_node
class Node:
    span: Span = field(repr=False)

    _fields: tuple[str, ...] = ()
    _shown: tuple[str, ...] = ()

    def dump(self) -> Any:
        """The node as plain data without spans or comments — what "the same AST" means."""
        return _strip(self)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: AST nodes are frozen (use ast.replace)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: AST nodes are frozen")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self._fields))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._shown)})"


def fields_of(node: Node) -> list[str]:
    """The names of a node's fields, in declaration order."""
    return list(node._fields)


def replace(node: Any, **changes: Any) -> Any:
    """A copy of ``node`` with some fields changed."""
    return type(node)(**{**{n: getattr(node, n) for n in node._fields}, **changes})


def _strip(value: Any) -> Any:
    if isinstance(value, Node):
        return {n: _strip(getattr(value, n)) for n in value._fields
                if not (n == "span" or n.endswith("_span") or n in ("comments", "trailing"))}
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
