"""Build the AST as the parser reduces: one builder per grammar rule, then comments attached.

Each builder receives the children a lark tree of its rule would have, as entries
``(value, line, col, end_line, end_col, height)`` (a token's value is its text) or None for an
absent ``[optional]``, and the rule's extent; see :mod:`.lalr`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..errors import Span
from . import ast, limits

__all__ = ["reducers", "build_program"]

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(text: str) -> str:
    if "\\" not in text:
        return text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def reducers(file: str, text: str) -> dict[str, Callable[[list, tuple | None], Any]]:
    """The AST builders for one file's parse, by rule name (or alias)."""

    def at(extent: tuple | None) -> Span:
        return Span(file, *extent) if extent is not None else Span(file, 1, 1, 1, 1)

    def tok(entry: tuple) -> Span:
        return Span(file, entry[1], entry[2], entry[3], entry[4])

    def values(kids: list) -> list:
        return [k[0] for k in kids if k is not None]

    def number(k: list, x: tuple) -> ast.Number:
        sp = at(x)
        return ast.Number(span=sp, value=limits.number(k[0][0], sp, text), text=k[0][0])

    def call(x: tuple, receiver: ast.Expr | None, name: tuple, given: list) -> ast.Call:
        args: list[ast.Expr] = []
        kwargs: list[ast.KwArg] = []
        for a in given:
            if a is not None:
                (kwargs if isinstance(a[0], ast.KwArg) else args).append(a[0])
        return ast.Call(span=at(x), func=name[0], name_span=tok(name), receiver=receiver, args=args, kwargs=kwargs)

    def index(k: list, x: tuple) -> ast.Index:
        return ast.Index(span=at(x), target=ast.Name(span=tok(k[0]), id=k[0][0]), keys=values(k[1:]))

    def keyword(k: list, x: tuple) -> tuple[str, Span]:
        return k[0][0], tok(k[0])

    def decl(k: list, x: tuple) -> ast.Decl:
        kind, kind_span = k[0][0]
        return ast.Decl(span=at(x), kind=kind, kind_span=kind_span, name=k[1][0], name_span=tok(k[1]),
                        sweep_vars=k[2][0] if k[2] is not None else [], value=k[3][0],
                        on=k[4][0] if k[4] is not None else None, bindings=k[5][0] if k[5] is not None else [])

    def action(k: list, x: tuple) -> ast.Action:
        return ast.Action(span=at(x), keyword=k[0][0][0], subjects=k[1][0], on=k[2][0] if k[2] is not None else None,
                          clauses=values(k[3:]))

    def export(k: list, x: tuple) -> ast.Export:
        return ast.Export(span=at(x), target=k[0][0], path=_unquote(k[1][0]), path_span=tok(k[1]),
                          format=k[2][0] if k[2] is not None else None)

    return {
        "start": lambda k, x: values(k),
        "number": number,
        "string": lambda k, x: ast.String(span=at(x), value=_unquote(k[0][0])),
        "true": lambda k, x: ast.Bool(span=at(x), value=True),
        "false": lambda k, x: ast.Bool(span=at(x), value=False),
        "list": lambda k, x: ast.ListExpr(span=at(x), items=values(k)),
        "range": lambda k, x: ast.Range(span=at(x), start=k[0][0], stop=k[1][0],
                                        step=k[2][0] if len(k) > 2 and k[2] is not None else None),
        "name": lambda k, x: ast.Name(span=at(x), id=k[0][0]),
        "index": index,
        "call": lambda k, x: call(x, None, k[0], k[1:]),
        "method": lambda k, x: call(x, k[0][0], k[1], k[2:]),
        "kwarg": lambda k, x: ast.KwArg(span=at(x), name=k[0][0], name_span=tok(k[0]), value=k[1][0]),
        "study": lambda k, x: ast.Study(span=at(x), name=_unquote(k[0][0]),
                                        options=k[1][0] if len(k) > 1 and k[1] is not None else []),
        "options": lambda k, x: values(k),
        "use": lambda k, x: ast.Use(span=at(x), path=_unquote(k[1][0]), python=k[0] is not None),
        "report": lambda k, x: ast.Report(span=at(x), path=_unquote(k[0][0])),
        "export": export,
        "decl_kind": keyword,
        "action_kw": keyword,
        "clause_kw": keyword,
        "decl": decl,
        "sweep_vars": lambda k, x: values(k),
        "on_clause": lambda k, x: k[0][0],
        "for_clause": lambda k, x: values(k),
        "binding": lambda k, x: ast.Binding(span=at(x), var=k[0][0], values=k[1][0]),
        "action": action,
        "clause": lambda k, x: ast.Clause(span=at(x), keyword=k[0][0][0], value=k[1][0]),
        "along": lambda k, x: ast.Along(span=at(x), axes=[ast.Name(span=tok(n), id=n[0]) for n in k]),
    }


def _comment_text(comment: tuple[str, int, int]) -> str:
    return comment[0][1:].rstrip()


def build_program(statements: list[Any], comments: list[tuple[str, int, int]], *, text: str, file: str,
                  dialect: str) -> ast.Program:
    """The program of the parsed ``statements``, each comment attached to the statement it belongs to:
    the block above the first statement is the study's question, a comment on a statement's last line
    trails it, other comments go with the statement below them."""
    pending = sorted(comments, key=lambda c: (c[1], c[2]))
    attached: list[Any] = []
    question: list[str] = []
    i = 0
    for n, stmt in enumerate(statements):
        above: list[str] = []
        while i < len(pending) and pending[i][1] < stmt.span.line:
            (question if n == 0 else above).append(_comment_text(pending[i]))
            i += 1
        inner_end = stmt.span.end_line
        trailing = None
        while i < len(pending) and pending[i][1] <= inner_end:
            if pending[i][1] == inner_end:
                trailing = _comment_text(pending[i])
            else:
                above.append(_comment_text(pending[i]))  # a comment inside a statement moves above it
            i += 1
        attached.append(ast.replace(stmt, comments=above, trailing=trailing) if above or trailing else stmt)
    rest = [_comment_text(c) for c in pending[i:]]
    if not statements:
        question, rest = rest, []
    return ast.Program(file=file, dialect=dialect, source=text, statements=attached,
                       question="\n".join(q.strip() for q in question).strip(), trailing_comments=rest)
