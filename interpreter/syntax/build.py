"""Turn lark's parse tree into the AST, attaching spans and comments."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from lark import Token, Tree

from ..errors import Span
from . import ast, limits

__all__ = ["build_program"]

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


class _Builder:
    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text

    def span(self, item: Tree | Token) -> Span:
        if isinstance(item, Token):
            return Span(self.file, item.line or 1, item.column or 1, item.end_line or 1, item.end_column or 1)
        m = item.meta
        if getattr(m, "empty", True):
            return Span(self.file, 1, 1, 1, 1)
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    @staticmethod
    def kids(tree: Tree) -> list[Any]:
        return [c for c in tree.children if c is not None]

    # --- expressions ------------------------------------------------------------------------
    def expr(self, t: Tree | Token) -> ast.Expr:
        sp = self.span(t)
        kind = t.data if isinstance(t, Tree) else t.type
        kids = self.kids(t) if isinstance(t, Tree) else []
        if kind == "number":
            text = str(kids[0])
            return ast.Number(span=sp, value=limits.number(text, sp, self.text), text=text)
        if kind == "string":
            return ast.String(span=sp, value=_unquote(str(kids[0])))
        if kind in ("true", "false"):
            return ast.Bool(span=sp, value=kind == "true")
        if kind == "list":
            return ast.ListExpr(span=sp, items=[self.expr(k) for k in kids])
        if kind == "range":
            return ast.Range(span=sp, start=self.expr(kids[0]), stop=self.expr(kids[1]),
                             step=self.expr(kids[2]) if len(kids) > 2 else None)
        if kind == "name":
            return ast.Name(span=sp, id=str(kids[0]))
        if kind == "index":
            target = ast.Name(span=self.span(kids[0]), id=str(kids[0]))
            return ast.Index(span=sp, target=target, keys=[self.expr(k) for k in kids[1:]])
        if kind in ("call", "method"):
            receiver = self.expr(kids[0]) if kind == "method" else None
            name_tok = kids[1] if kind == "method" else kids[0]
            args: list[ast.Expr] = []
            kwargs: list[ast.KwArg] = []
            for a in kids[(2 if kind == "method" else 1):]:
                if isinstance(a, Tree) and a.data == "kwarg":
                    kwargs.append(self.kwarg(a))
                else:
                    args.append(self.expr(a))
            return ast.Call(span=sp, func=str(name_tok), name_span=self.span(name_tok), receiver=receiver,
                            args=args, kwargs=kwargs)
        raise AssertionError(f"unhandled expression {kind}")  # grammar and builder out of step

    def kwarg(self, t: Tree) -> ast.KwArg:
        name, value = t.children
        return ast.KwArg(span=self.span(t), name=str(name), name_span=self.span(name), value=self.expr(value))

    # --- statements -------------------------------------------------------------------------
    def statement(self, t: Tree) -> ast.Statement:
        sp = self.span(t)
        kids = self.kids(t)
        if t.data == "study":
            options = [self.kwarg(k) for k in self.kids(kids[1])] if len(kids) > 1 else []
            return ast.Study(span=sp, name=_unquote(str(kids[0])), options=options)
        if t.data == "use":
            python, path = t.children
            return ast.Use(span=sp, path=_unquote(str(path)), python=python is not None)
        if t.data == "report":
            return ast.Report(span=sp, path=_unquote(str(kids[0])))
        if t.data == "export":
            fmt = str(kids[2]) if len(kids) > 2 else None
            return ast.Export(span=sp, target=self.expr(kids[0]), path=_unquote(str(kids[1])),
                              path_span=self.span(kids[1]), format=fmt)
        if t.data == "decl":
            kind_tok = kids[0].children[0]
            rest = kids[2:]
            sweep_vars: list[str] = []
            if rest and isinstance(rest[0], Tree) and rest[0].data == "sweep_vars":
                sweep_vars = [str(n) for n in rest[0].children]
                rest = rest[1:]
            value, on, bindings = self.expr(rest[0]), None, []
            for extra in rest[1:]:
                if extra.data == "on_clause":
                    on = self.expr(extra.children[0])
                else:
                    bindings = [ast.Binding(span=self.span(b), var=str(b.children[0]), values=self.expr(b.children[1]))
                                for b in extra.children]
            return ast.Decl(span=sp, kind=str(kind_tok), kind_span=self.span(kind_tok), name=str(kids[1]),
                            name_span=self.span(kids[1]), sweep_vars=sweep_vars, value=value, on=on,
                            bindings=bindings)
        if t.data == "action":
            keyword = str(kids[0].children[0])
            subjects = self.expr(kids[1])
            on = None
            clauses: list[ast.Clause | ast.Along] = []
            for extra in kids[2:]:
                if extra.data == "on_clause":
                    on = self.expr(extra.children[0])
                elif extra.data == "along":
                    clauses.append(ast.Along(span=self.span(extra),
                                             axes=[ast.Name(span=self.span(n), id=str(n)) for n in extra.children]))
                else:
                    clauses.append(ast.Clause(span=self.span(extra), keyword=str(extra.children[0].children[0]),
                                              value=self.expr(extra.children[1])))
            return ast.Action(span=sp, keyword=keyword, subjects=subjects, on=on, clauses=clauses)
        raise AssertionError(f"unhandled statement {t.data}")


def _comment_text(tok: Token) -> str:
    return str(tok)[1:].rstrip()


def build_program(tree: Tree, comments: list[Token], *, text: str, file: str, dialect: str) -> ast.Program:
    builder = _Builder(file, text)
    raw = [builder.statement(c) for c in tree.children if c is not None]
    pending = sorted(comments, key=lambda c: (c.line, c.column))
    statements: list[Any] = []
    question: list[str] = []
    i = 0
    for n, stmt in enumerate(raw):
        above: list[str] = []
        while i < len(pending) and pending[i].line < stmt.span.line:
            (question if n == 0 else above).append(_comment_text(pending[i]))
            i += 1
        inner_end = stmt.span.end_line
        trailing = None
        while i < len(pending) and pending[i].line <= inner_end:
            if pending[i].line == inner_end:
                trailing = _comment_text(pending[i])
            else:
                above.append(_comment_text(pending[i]))  # a comment inside a statement moves above it
            i += 1
        statements.append(dataclasses.replace(stmt, comments=above, trailing=trailing))
    rest = [_comment_text(c) for c in pending[i:]]
    if not raw:
        question, rest = rest, []
    return ast.Program(file=file, dialect=dialect, source=text, statements=statements,
                       question="\n".join(q.strip() for q in question).strip(), trailing_comments=rest)
