"""What an editor asks about one spec, answered in plain values (no protocol types).

Diagnostics come from the checker itself — :func:`~mlspec.syntax.parser.parse` and
:func:`~mlspec.check.lower.lower`, the path ``mlspec check`` takes — so the editor and the command
line report the same messages, spans and suggestions. Positions are 1-based (line, column) in
characters, like :class:`~mlspec.errors.Span`; the server converts to the protocol's units.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import registry
from ..check.dialects import ACTIONS, DECL_KINDS, StudyOptions
from ..check.lower import lower
from ..describe import describe_markdown, param_docs, param_markdown
from ..errors import Diagnostic, Span, SpecError
from ..registry import Kind, OpSpec
from ..syntax import ast
from ..syntax.fmt import format_program
from ..syntax.parser import DIALECTS, accepted_after, open_brackets, parse, statement_keywords

__all__ = ["Document", "Completion", "Symbol", "analyse", "hover", "complete", "definition", "symbols",
           "formatted"]

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Document:
    path: str
    text: str
    dialect: str | None
    program: ast.Program | None  # the last text that parsed (kept while the current text does not)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # What the spec can see, found once per version of the text (every request asks): each declared
    # name's declaration, and the text of every file they are in.
    _seen: tuple[dict[str, ast.Decl], dict[str, str]] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Completion:
    label: str
    kind: str  # "keyword" | "operator" | "parameter" | "name" | "value"
    detail: str = ""
    documentation: str = ""
    insert: str | None = None  # text to insert when it differs from the label


@dataclass(frozen=True)
class Symbol:
    name: str
    kind: str  # the declaration keyword ("model", "data", "axis" …) or "study"
    detail: str
    span: Span
    selection: Span


def analyse(text: str, path: str, previous: Document | None = None) -> Document:
    """Parse and check ``text`` as the spec at ``path``. Diagnostics from files it ``use``s are
    shown on the `use` statement that brings them in."""
    dialect = DIALECTS.get(Path(path).suffix)
    if dialect is None:
        return Document(path, text, None, None)
    try:
        program = parse(text, path, dialect)
    except SpecError as exc:
        known = _before_error(text, path, dialect, exc) or (previous.program if previous is not None else None)
        return Document(path, text, dialect, known, _localise(exc.diagnostics, known, path))
    try:
        lower(program)
    except SpecError as exc:
        return Document(path, text, dialect, program, _localise(exc.diagnostics, program, path))
    return Document(path, text, dialect, program)


def _before_error(text: str, path: str, dialect: str, exc: SpecError) -> ast.Program | None:
    """While a statement is half typed, the statements above it still declare names to offer."""
    span = exc.diagnostics[0].span if exc.diagnostics else None
    if span is None:
        return None
    try:
        return parse("\n".join(text.split("\n")[: span.line - 1]), path, dialect)
    except SpecError:
        return None


def _localise(diags: list[Diagnostic], program: ast.Program | None, path: str) -> list[Diagnostic]:
    out = []
    uses = [s for s in program.statements if isinstance(s, ast.Use)] if program is not None else []
    for d in diags:
        if d.span is not None and d.span.file == path:
            out.append(d)
            continue
        where = _use_of(uses, d.span.file) if d.span is not None else None
        origin = f"{Path(d.span.file).name}:{d.span.line}:{d.span.col}: " if d.span is not None else ""
        out.append(Diagnostic(origin + d.message, where.span if where else Span(path, 1, 1, 1, 1), help=d.help))
    return out


def _use_of(uses: list[ast.Use], file: str) -> ast.Use | None:
    """The `use` statement that includes ``file`` — directly, or else the first (nested includes)."""
    for u in uses:
        if (Path(u.span.file).parent / u.path).resolve() == Path(file).resolve():
            return u
    return uses[0] if uses else None


# --- what is under the cursor ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Target:
    what: str  # "op" | "param" | "name" | "use" | "clause" | "statement" | "option"
    region: Span
    call: ast.Call | None = None
    word: str = ""
    action: ast.Action | None = None


def _inside(span: Span, line: int, col: int) -> bool:
    return (span.line, span.col) <= (line, col) <= (span.end_line, span.end_col)


def _size(span: Span) -> tuple[int, int]:
    return span.end_line - span.line, span.end_col - span.col


def _word_span(span: Span, word: str) -> Span:
    return Span(span.file, span.line, span.col, span.line, span.col + len(word))


def _nodes(node: ast.Node, call: ast.Call | None = None) -> Iterator[tuple[ast.Node, ast.Call | None]]:
    yield node, call
    inner = node if isinstance(node, ast.Call) else call
    for name in ast.fields_of(node):
        value = getattr(node, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, ast.Node):
                yield from _nodes(item, inner)


def _targets(program: ast.Program) -> Iterator[_Target]:
    for stmt in program.statements:
        for node, call in _nodes(stmt):
            if isinstance(node, ast.Call):
                yield _Target("op", node.name_span, call=node, word=node.func)
            elif isinstance(node, ast.KwArg) and isinstance(stmt, ast.Study):
                yield _Target("option", node.name_span, word=node.name)
            elif isinstance(node, ast.KwArg) and call is not None:
                yield _Target("param", node.name_span, call=call, word=node.name)
            elif isinstance(node, ast.Name):
                yield _Target("name", node.span, word=node.id)
            elif isinstance(node, ast.Index):
                yield _Target("name", node.target.span, word=node.target.id)
            elif isinstance(node, ast.Decl):
                yield _Target("name", node.name_span, word=node.name)
            elif isinstance(node, ast.Use):
                yield _Target("use", node.span, word=node.path)
            elif isinstance(node, ast.Clause) and isinstance(stmt, ast.Action):
                yield _Target("clause", _word_span(node.span, node.keyword), word=node.keyword, action=stmt)
            elif isinstance(node, ast.Action):
                yield _Target("statement", _word_span(node.span, node.keyword), word=node.keyword, action=node)


def _target_at(doc: Document, line: int, col: int) -> _Target | None:
    if doc.program is None:
        return None
    found = [t for t in _targets(doc.program) if _inside(t.region, line, col)]
    return min(found, key=lambda t: _size(t.region)) if found else None


# --- declarations, here and in `use`d files ----------------------------------------------------------

def _declarations(doc: Document) -> dict[str, ast.Decl]:
    """Every declaration the spec can see: its own, and those of the files it uses (recursively)."""
    return _visible(doc)[0]


def _visible(doc: Document) -> tuple[dict[str, ast.Decl], dict[str, str]]:
    if doc._seen is not None:
        return doc._seen
    out: dict[str, ast.Decl] = {}
    texts: dict[str, str] = {doc.path: doc.text}
    seen: set[Path] = set()

    def visit(program: ast.Program) -> None:
        for stmt in program.statements:
            if isinstance(stmt, ast.Use):
                path = (Path(stmt.span.file).parent / stmt.path).resolve()
                if path in seen or not path.is_file():
                    continue
                seen.add(path)
                try:
                    text = path.read_text(encoding="utf-8")
                    included = parse(text, str(path), program.dialect)
                except (SpecError, OSError, UnicodeDecodeError):
                    continue
                texts[str(path)] = text
                visit(included)
            elif isinstance(stmt, ast.Decl):
                out.setdefault(stmt.name, stmt)

    if doc.program is not None:
        visit(doc.program)
    doc._seen = (out, texts)
    return doc._seen


def _decl_kinds(doc: Document, decl: ast.Decl) -> tuple[Kind, ...]:
    return DECL_KINDS.get(doc.dialect or "", {}).get(decl.kind, ())


def _operator_of(doc: Document, func: str) -> OpSpec | None:
    """The operator a call of ``func`` runs: a registered one, or the one behind a re-used declaration."""
    op = registry.get(func)
    if op is not None:
        return op
    decl = _declarations(doc).get(func)
    if decl is not None and isinstance(decl.value, ast.Call):
        return registry.get(decl.value.func)
    return None


def _decl_markdown(decl: ast.Decl, doc: Document) -> str:
    """A declaration as written, and where when it is in another file."""
    here = decl.span.file == doc.path
    text = _visible(doc)[1].get(decl.span.file, "")
    source = "\n".join(text.splitlines()[decl.span.line - 1: decl.span.end_line])
    where = "" if here else f" — in {Path(decl.span.file).name}:{decl.span.line}"
    return f"**{decl.kind} {decl.name}**{where}\n\n```\n{source}\n```"


# --- the editor's questions ------------------------------------------------------------------------

def hover(doc: Document, line: int, col: int) -> str | None:
    """Markdown for what is under the cursor: an operator, a parameter, a clause, a declared name."""
    t = _target_at(doc, line, col)
    if t is None:
        return None
    if t.what == "op" and t.call is not None:
        decl = None if registry.get(t.word) else _declarations(doc).get(t.word)
        if decl is not None:
            return _decl_markdown(decl, doc)
        op = registry.get(t.word)
        return describe_markdown(op) if op is not None else None
    if t.what == "param" and t.call is not None:
        op = _operator_of(doc, t.call.func)
        return param_markdown(op, t.word) if op is not None else None
    if t.what == "name":
        decl = _declarations(doc).get(t.word)
        return _decl_markdown(decl, doc) if decl is not None else None
    if t.what == "option":
        info = StudyOptions.model_fields.get(t.word)
        return f"**{t.word}** — study option: {info.description}" if info is not None else None
    rule = ACTIONS.get(doc.dialect or "", {}).get(t.action.keyword) if t.action is not None else None
    op = registry.get(rule.op) if rule is not None else None
    if rule is None or op is None:
        return None
    if t.what == "statement":
        return f"`{t.word}` runs the operator `{op.name}` for each subject\n\n" + describe_markdown(op)
    if t.what == "clause" and t.word in rule.clauses:
        return param_markdown(op, rule.clauses[t.word])
    return None


def definition(doc: Document, line: int, col: int) -> Span | None:
    """Where the name under the cursor is declared, or the file a `use` names."""
    t = _target_at(doc, line, col)
    if t is None:
        return None
    if t.what == "use":
        path = (Path(doc.path).parent / t.word).resolve()
        return Span(str(path), 1, 1, 1, 1) if path.is_file() else None
    if t.what in ("name", "op"):
        decl = _declarations(doc).get(t.word)
        return decl.name_span if decl is not None else None
    return None


def symbols(doc: Document) -> list[Symbol]:
    """The study and its declarations, in order."""
    out: list[Symbol] = []
    for s in doc.program.statements if doc.program is not None else []:
        if isinstance(s, ast.Study):
            out.append(Symbol(s.name, "study", "study", s.span, s.span))
        elif isinstance(s, ast.Decl):
            value = s.value.func + "(…)" if isinstance(s.value, ast.Call) else ""
            out.append(Symbol(s.name, s.kind, f"{s.kind} = {value}".strip(" ="), s.span, s.name_span))
    return out


def formatted(doc: Document) -> str | None:
    """The document in canonical form (``mlspec fmt``); None when it does not parse."""
    if doc.dialect is None:
        return None
    try:
        return format_program(parse(doc.text, doc.path, doc.dialect))
    except SpecError:
        return None


# --- completion ------------------------------------------------------------------------------------

def _open_call(before: str) -> tuple[str, str] | None:
    """(function name, text after its '(') of the innermost call still open at the end of ``before``."""
    stack = open_brackets(before)
    if not stack or stack[-1][0] != "(":
        return None  # inside a list: a value, not a parameter name
    start = stack[-1][1]
    name = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*$", before[:start])
    return (name.group(1), before[start + 1:]) if name else None


def _statement_start(before: str) -> str:
    """The keyword that starts the statement the cursor is in."""
    for line in reversed(before.splitlines() or [""]):
        m = re.match(r"([A-Za-z_]+)\b", line)
        if m:
            return m.group(1)
    return ""


def complete(doc: Document, line: int, col: int) -> list[Completion]:
    """Keywords the grammar accepts at the cursor, operators, parameters, names of the right kind,
    and a parameter's choices."""
    if doc.dialect is None:
        return []
    lines = doc.text.split("\n")
    before = "\n".join(lines[: line - 1] + [lines[line - 1][: col - 1] if line <= len(lines) else ""])
    partial = _WORD.search(before)
    before = before[: partial.start()] if partial else before
    accepted = accepted_after(before, doc.dialect)
    decls = _declarations(doc)
    out: list[Completion] = []
    call = _open_call(before)
    if call is not None:
        out += _in_call(doc, decls, *call)
        if out and out[0].kind == "value":
            return out  # `norm = |`: the parameter's choices, nothing else
    if accepted is None:
        return out
    rule = ACTIONS[doc.dialect].get(_statement_start(before))
    words = {w for w in accepted if re.fullmatch(r"[a-z_]+", w)}
    if before.endswith("\n") or not before:  # a line's first word starts a statement
        words &= set(statement_keywords(doc.dialect))
    elif rule is not None:  # the clauses of this statement, not of the others
        words -= _clause_words(doc.dialect) - set(rule.clauses) - ({"along"} if rule.grid else set())
    else:
        words -= _clause_words(doc.dialect)
    out += [Completion(word, "keyword") for word in sorted(words)]
    if "NAME" in accepted and call is None:
        decl_kind = re.match(r"\s*([a-z]+)\s+[A-Za-z_]\w*(\[[^\]]*\])?\s*=\s*$", before.split("\n")[-1])
        if decl_kind is not None:  # `model c = |`: the operators that make a model
            out += _operators(doc, DECL_KINDS[doc.dialect].get(decl_kind.group(1), ()))
        out += _names(doc, decls, None)
    return out


def _clause_words(dialect: str) -> set[str]:
    return {c for rule in ACTIONS[dialect].values() for c in rule.clauses} | {"along"}


def _operators(doc: Document, kinds: tuple[Kind, ...]) -> list[Completion]:
    return [Completion(op.name, "operator", f"→ {op.output.value}", describe_markdown(op))
            for op in registry.all_ops(doc.dialect) if not kinds or op.output in kinds]


def _names(doc: Document, decls: dict[str, ast.Decl], want: Kind | None) -> list[Completion]:
    out = []
    for name, decl in decls.items():
        kinds = _decl_kinds(doc, decl)
        if want is None or want is Kind.ANY or any(want.accepts(k) for k in kinds):
            out.append(Completion(name, "name", decl.kind, _decl_markdown(decl, doc)))
    return out


def _in_call(doc: Document, decls: dict[str, ast.Decl], func: str, inside: str) -> list[Completion]:
    op = _operator_of(doc, func)
    if op is None:
        return []
    value_of = re.search(r"([A-Za-z_]\w*)\s*=\s*$", inside)
    if value_of is not None:  # `key = |`: names of the port's kind, or the parameter's choices
        port = op.port(value_of.group(1))
        if port is not None:
            return _names(doc, decls, port.kind)
        for p in param_docs(op):
            if value_of.group(1) in (p.name, p.field):
                return [Completion(c, "value", f"{p.name} of {op.name}") for c in p.choices]
        return []
    if inside.strip() and not re.search(r"[(,]\s*$", "(" + inside):
        return []
    given = set(re.findall(r"([A-Za-z_]\w*)\s*=", inside))
    out = [Completion(f"{p.name} =", "parameter", f"{p.kind.value} input of {op.name}", insert=f"{p.name} = ")
           for p in op.inputs if p.name not in given]
    out += [Completion(f"{p.name} =", "parameter", f"{p.type}; {p.default}", param_markdown(op, p.name) or "",
                       insert=f"{p.name} = ") for p in param_docs(op) if p.name not in given]
    return out + _names(doc, decls, op.inputs[0].kind if op.inputs else None)
