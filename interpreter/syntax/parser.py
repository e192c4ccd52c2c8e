"""Parse spec text into an AST; turn lark's exceptions into span-carrying diagnostics.

The grammar of a dialect is ``common.lark`` followed by ``<dialect>.lark``; the dialect follows the
file extension. lark compiles it (LALR, contextual lexer) and :mod:`.lalr` runs the resulting tables,
building the AST as it reduces; text the tables reject is parsed again by lark, whose exception
becomes the diagnostic. Both lark's parser and the tables are cached under the user's cache
directory, so a fresh process loads rather than rebuilds them, and a clean parse never imports lark.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .. import usercache
from ..errors import Diagnostic, Span, SpecError, did_you_mean
from . import lalr, limits
from .ast import Program
from .build import build_program, reducers

if TYPE_CHECKING:
    from lark import Lark, Token, UnexpectedInput

__all__ = ["DIALECTS", "dialect_of", "parse", "parse_file", "keywords", "all_keywords", "statement_keywords",
           "accepted_after", "open_brackets"]

DIALECTS = {".merge": "merge", ".extrap": "extrap"}


def dialect_of(path: str | Path) -> str:
    suffix = Path(path).suffix
    if suffix not in DIALECTS:
        raise SpecError(
            Diagnostic(
                f"cannot tell the dialect of {str(path)!r}: a spec file ends in .merge or .extrap",
                None,
            )
        )
    return DIALECTS[suffix]


@cache
def _grammar_text(dialect: str) -> str:
    pkg = resources.files("mlspec.grammar")
    return pkg.joinpath("common.lark").read_text() + "\n" + pkg.joinpath(f"{dialect}.lark").read_text()


def _parser_cache(dialect: str) -> str | bool:
    """Where lark keeps the built parser: a file of the user's own (lark checks the grammar's hash in
    it and rebuilds on any change). Not the shared temporary directory, whose files anyone can plant."""
    root = usercache.directory()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False  # a read-only home: build the parser in memory every time
    return str(root / f"lark-{dialect}.cache")
class _WholeWords:
    """Keywords match whole words only. The contextual lexer tries just the terminals the parser
    accepts next, so where no name fits, ``batch_size`` would lex as the keyword ``batch`` followed
    by ``_size``; offering NAME everywhere makes it one word, reported as the unknown word it is."""

    always_accept = ("NAME",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        return stream


@cache
def _parser(dialect: str) -> Lark:
    """lark's parser of the dialect: the source of the tables, the explainer of syntax errors, and the
    editor's oracle of what may come next."""
    from lark import Lark

    return Lark(_grammar_text(dialect), parser="lalr", lexer="contextual", maybe_placeholders=True,
                postlex=_WholeWords(), cache=_parser_cache(dialect))


@cache
def _tables(dialect: str) -> lalr.Tables:
    return lalr.load_tables(dialect, _grammar_text(dialect), lambda: _parser(dialect))


@cache
def keywords(dialect: str) -> dict[str, list[str]]:
    """The dialect's keywords by role: ``decl_kind``, ``action_kw``, ``clause_kw`` — read from the
    compiled grammar, so every alternative counts however the .lark file spreads them over lines."""
    parser = _parser(dialect)
    out: dict[str, list[str]] = {role: [] for role in ("decl_kind", "action_kw", "clause_kw")}
    for rule in parser.rules:
        if rule.origin.name in out:
            out[rule.origin.name] += [str(parser.get_terminal(sym.name).pattern.value) for sym in rule.expansion]
    return out


@cache
def all_keywords(dialect: str) -> frozenset[str]:
    """Every word the dialect's grammar reserves somewhere (``study``, ``epochs``, ``x``, ``true`` …)."""
    return frozenset(t.pattern.value for t in _parser(dialect).terminals
                     if t.pattern.type == "str" and t.pattern.value.isidentifier())


def statement_keywords(dialect: str) -> list[str]:
    kw = keywords(dialect)
    return ["study", "use", "export", "report", *kw["decl_kind"], *kw["action_kw"]]


def parse(text: str, file: str = "<spec>", dialect: str | None = None) -> Program:
    dialect = dialect or dialect_of(file)
    limits.check_characters(text, file)
    try:
        statements, comments = lalr.parse(_tables(dialect), text, reducers(file, text),
                                          lambda extent: limits.too_deep(extent, file, text), limits.MAX_NESTING)
    except lalr.Rejected:
        raise SpecError(_explain(text, file, dialect), {file: text}) from None
    return build_program(statements, comments, text=text, file=file, dialect=dialect)


def _explain(text: str, file: str, dialect: str) -> Diagnostic:
    """Why the tables rejected ``text``, in lark's words turned into a diagnostic."""
    from lark import UnexpectedInput

    try:
        _parser(dialect).parse(text)
    except UnexpectedInput as exc:
        return _syntax_diagnostic(exc, text, file, dialect)
    # The tables are lark's own, run by the same rules; a fuzz test holds them in step.
    return Diagnostic("mlspec's parser rejected this spec but lark accepts it: please report this as a bug",
                      Span(file, 1, 1, 1, 2))


def parse_file(path: str | Path) -> Program:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(Diagnostic(f"no such spec file: {str(path)!r}", None)) from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise SpecError(Diagnostic(f"cannot read {str(path)!r} as a UTF-8 spec ({exc.__class__.__name__})", None)) from None
    return parse(text, str(path), dialect_of(path))


def accepted_after(text: str, dialect: str) -> set[str] | None:
    """What the grammar accepts right after ``text`` — keywords as written (``'epochs'``), other
    terminals by name (``NAME``, ``NUMBER``, ``STRING``) — or None when ``text`` itself has a
    syntax error. An editor's completion offers exactly these keywords."""
    from lark import UnexpectedInput

    parser = _parser(dialect)
    interactive = parser.parse_interactive(text)
    try:
        interactive.exhaust_lexer()
    except UnexpectedInput:
        return None
    out = set()
    for name in interactive.accepts():
        pattern = parser.get_terminal(name).pattern if name != "$END" else None
        out.add(pattern.value if pattern is not None and pattern.type == "str" else name)
    return out


# --- syntax errors -----------------------------------------------------------------------------

_TERMINAL_TEXT = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "DOT": "'.'", "$END": "the end of the file",
}


def _describe_terminal(name: str, parser: Lark) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if pattern.type == "str":
        return f"'{pattern.value}'"
    return name.lower()


def _word_at(text: str, line: int, col: int) -> tuple[str, int]:
    lines = text.splitlines() or [""]
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    match = re.match(r"[A-Za-z_][A-Za-z0-9_]*|\S", src[col - 1 :])
    return (match.group(0) if match else ""), max(1, len(match.group(0)) if match else 1)


def _syntax_diagnostic(exc: UnexpectedInput, text: str, file: str, dialect: str) -> Diagnostic:
    from lark import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken

    parser = _parser(dialect)
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        lines = text.rstrip().splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
        expected = getattr(exc, "expected", set())
        unclosed = _unclosed_bracket(text, file, line, col, expected, parser, "the end of the file")
        if unclosed is not None:
            return unclosed
        what = _expected_list(expected, parser)
        return Diagnostic(f"the spec ended unexpectedly; expected {what}", Span(file, line, col, line, col + 1))
    line, col = exc.line, exc.column
    word, width = _word_at(text, line, col)
    span = Span(file, line, col, line, col + width)
    expected: set[str] = set()
    if isinstance(exc, UnexpectedToken):
        expected = set(exc.accepts or exc.expected)
    elif isinstance(exc, UnexpectedCharacters):
        # What the parser accepts here (the lexer's own list has NAME in place of every keyword).
        state = exc.state
        expected = set(state.parse_conf.parse_table.states[state.position]) if state else set(exc.allowed or ())
    starts = statement_keywords(dialect)
    kw = keywords(dialect)
    expected_words = {_describe_terminal(t, parser).strip("'") for t in expected}
    before = _previous_code(text, line, col)
    if before is not None and before[0] < line:
        # The statement went on past the end of its line: most often an unclosed bracket.
        unclosed = _unclosed_bracket(text, file, line, col, expected, parser, f"the statement on line {line}")
        if unclosed is not None:
            return unclosed
    src = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    if word == "," and "x" in expected_words and "along" in src[: col - 1]:
        axes = re.findall(r"[A-Za-z_]\w*", src[src.rfind("along", 0, col) + len("along"):].split("#")[0])
        return Diagnostic("unexpected ','; the axes of a grid are joined with x", span,
                          help=f"write `along {' x '.join(axes)}`")
    if word and re.match(r"[A-Za-z_]", word):
        # A word where a keyword belongs: most likely a misspelt statement or clause keyword.
        clause_words = [*kw["clause_kw"], "on", "for", "to", "as", "step", "along", "x"]
        statement_words = [k for k in starts if k in expected_words]
        clause_words = [k for k in clause_words if k in expected_words]
        hint_clause = did_you_mean(word, clause_words)
        hint_stmt = did_you_mean(word, statement_words)
        if statement_words or clause_words:
            other = "extrap" if dialect == "merge" else "merge"
            mid_line = bool(src[: col - 1].strip())
            if (hint_clause and not hint_stmt) or (mid_line and clause_words and not hint_stmt):
                # A statement starts a line; a word further along it continues the statement.
                listed = [k for k in kw["clause_kw"] if k in clause_words]
                kind, hint = "keyword", hint_clause or (f"the .{dialect} clause keywords: {', '.join(listed)}" if listed else None)
            else:
                kind, hint = ("statement" if statement_words else "keyword"), hint_stmt or hint_clause
            if hint is None and word in statement_keywords(other):
                hint = f"'{word}' belongs to the .{other} dialect; this file is .{dialect}"
            return Diagnostic(f"unknown {kind} '{word}'", span,
                              help=hint or f"expected {_expected_list(expected, parser)}")
    shown = "'" + word + "'" if word else "this"
    return Diagnostic(f"unexpected {shown}; expected {_expected_list(expected, parser)}", span)


_PAIRS = {"(": ")", "[": "]"}


def open_brackets(text: str) -> list[tuple[str, int]]:
    """The brackets still open at the end of ``text``, outermost first, as (bracket, offset);
    brackets in strings and comments do not count."""
    stack: list[tuple[str, int]] = []
    for m in re.finditer(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[\[\]()]', text):
        token = m.group(0)
        if token in _PAIRS:
            stack.append((token, m.start()))
        elif token in _PAIRS.values() and stack and _PAIRS[stack[-1][0]] == token:
            stack.pop()
    return stack


def _unclosed_bracket(text: str, file: str, line: int, col: int, expected: set[str], parser: Lark,
                      until: str) -> Diagnostic | None:
    """The innermost bracket still open at (line, col), if the parser expected its closer there:
    the diagnostic points at the opening bracket, not at wherever the parser gave up."""
    expected_words = {_describe_terminal(t, parser).strip("'") for t in expected}
    lines = text.splitlines()
    upto = "\n".join(lines[: line - 1] + [lines[line - 1][: col - 1] if line <= len(lines) else ""])
    stack = open_brackets(upto)
    if not stack or _PAIRS[stack[-1][0]] not in expected_words:
        return None
    opener, offset = stack[-1]
    at_line = upto.count("\n", 0, offset) + 1
    at_col = offset - (upto.rfind("\n", 0, offset) + 1) + 1
    closer = _PAIRS[opener]
    return Diagnostic(f"this '{opener}' is never closed", Span(file, at_line, at_col, at_line, at_col + 1),
                      help=f"add '{closer}' before {until}")


def _previous_code(text: str, line: int, col: int) -> tuple[int, int] | None:
    """(line, column) of the last non-blank, non-comment character before a position."""
    lines = text.splitlines()
    for n in range(min(line, len(lines)), 0, -1):
        src = lines[n - 1] if n < line else lines[n - 1][: col - 1]
        code = re.sub(r"#.*$", "", src).rstrip()
        if code:
            return n, len(code)
    return None


def _expected_list(expected: set[str], parser: Lark) -> str:
    # Anonymous terminals (__ANON_n) are described by their text, so no lark name reaches a user.
    names = sorted(n for n in {_describe_terminal(t, parser) for t in expected} if not n.startswith("__"))
    if not names:
        return "something else"
    if len(names) > 6:
        return ", ".join(names[:6]) + ", …"
    return " or ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " or " + names[-1]
