"""Print an AST back as canonical spec text (``mlspec fmt``); parsing the output gives the same AST."""

from __future__ import annotations

from . import ast

__all__ = ["format_program", "format_expr"]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _args(call: ast.Call) -> str:
    parts = [format_expr(a) for a in call.args] + [f"{k.name} = {format_expr(k.value)}" for k in call.kwargs]
    return ", ".join(parts)


def format_expr(e: ast.Expr) -> str:
    if isinstance(e, ast.Number):
        return e.text
    if isinstance(e, ast.String):
        return _quote(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(format_expr(i) for i in e.items) + "]"
    if isinstance(e, ast.Range):
        text = f"{format_expr(e.start)} .. {format_expr(e.stop)}"
        return text + (f" step {format_expr(e.step)}" if e.step is not None else "")
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Index):
        return f"{e.target.id}[{', '.join(format_expr(k) for k in e.keys)}]"
    if isinstance(e, ast.Call):
        prefix = "" if e.receiver is None else _receiver(e.receiver) + "."
        return f"{prefix}{e.func}({_args(e)})"
    raise TypeError(f"not an expression: {e!r}")


def _receiver(e: ast.Expr) -> str:
    text = format_expr(e)
    return f"({text})" if isinstance(e, ast.Range) else text


def _statement(s: ast.Statement) -> str:
    if isinstance(s, ast.Study):
        opts = ", ".join(f"{k.name} = {format_expr(k.value)}" for k in s.options)
        return f"study {_quote(s.name)}" + (f" ({opts})" if s.options else "")
    if isinstance(s, ast.Use):
        return f"use {'python ' if s.python else ''}{_quote(s.path)}"
    if isinstance(s, ast.Report):
        return f"report {_quote(s.path)}"
    if isinstance(s, ast.Export):
        return f"export {format_expr(s.target)} to {_quote(s.path)}" + (f" as {s.format}" if s.format else "")
    if isinstance(s, ast.Decl):
        head = s.name + (f"[{', '.join(s.sweep_vars)}]" if s.sweep_vars else "")
        text = f"{s.kind} {head} = {format_expr(s.value)}"
        if s.on is not None:
            text += f" on {format_expr(s.on)}"
        if s.bindings:
            text += " for " + ", ".join(f"{b.var} in {format_expr(b.values)}" for b in s.bindings)
        return text
    if isinstance(s, ast.Action):
        text = f"{s.keyword} {format_expr(s.subjects)}"
        if s.on is not None:
            text += f" on {format_expr(s.on)}"
        for c in s.clauses:
            if isinstance(c, ast.Along):
                text += " along " + " x ".join(a.id for a in c.axes)
            else:
                text += f" {c.keyword} {format_expr(c.value)}"
        return text
    raise TypeError(f"not a statement: {s!r}")


def _comment(text: str) -> str:
    return "#" + text if text.startswith(" ") or not text else "# " + text


def format_program(program: ast.Program) -> str:
    lines: list[str] = []
    if program.question:
        lines += [_comment(" " + q) if q else "#" for q in program.question.splitlines()]
        lines.append("")
    previous: str | None = None
    for s in program.statements:
        group = type(s).__name__ + (getattr(s, "kind", "") or "")
        if previous is not None and (group != previous or s.comments):
            lines.append("")
        lines += [_comment(c) for c in s.comments]
        text = _statement(s)
        if s.trailing is not None:
            text += "  " + _comment(s.trailing)
        lines.append(text)
        previous = group
    if program.trailing_comments:
        lines.append("")
        lines += [_comment(c) for c in program.trailing_comments]
    return "\n".join(lines) + "\n"
