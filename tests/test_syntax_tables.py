"""The table-driven parser (``mlspec.syntax.lalr``) against lark's own runtime, its oracle.

For every text, both accept or both reject; where they accept, the trees are the same: each rule's
name, its children after lark's filtering and inlining, placeholders, every token's text and
position, every tree's span, and the comments. Texts are the shipped specs, hostile fuzzing cases
and edge cases of the lexer (keywords as names, numbers beside dots, comments everywhere).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
from fuzzing import SHIPPED, grammar_specs, mutated_specs
from hypothesis import HealthCheck, given, settings
from lark import Lark, Token, Tree, UnexpectedInput

from mlspec.syntax import lalr, parser

SAME = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@cache
def _lark(dialect: str) -> tuple[Lark, list[Token]]:
    comments: list[Token] = []
    lark = Lark(parser._grammar_text(dialect), parser="lalr", lexer="contextual", propagate_positions=True,
                maybe_placeholders=True, postlex=parser._WholeWords(), lexer_callbacks={"COMMENT": comments.append})
    return lark, comments


def _from_lark(node: Any) -> Any:
    if node is None:
        return None
    if isinstance(node, Token):
        return (str(node), node.line, node.column, node.end_line, node.end_column)
    assert isinstance(node, Tree)
    extent = None if node.meta.empty else (node.meta.line, node.meta.column, node.meta.end_line, node.meta.end_column)
    return (node.data, [_from_lark(c) for c in node.children], extent)


class _Trees(dict):
    """Reducers that build generic trees shaped like :func:`_from_lark`'s."""

    def __missing__(self, name: str) -> Any:
        def build(kids: list, extent: tuple | None) -> Any:
            return (name, [None if k is None else (k[:5] if isinstance(k[0], str) else k[0]) for k in kids], extent)

        return build


def _too_deep(extent: tuple | None) -> None:
    raise RecursionError("too deep")


def lark_result(text: str, dialect: str) -> Any:
    lark, comments = _lark(dialect)
    comments.clear()
    try:
        tree = lark.parse(text)
    except UnexpectedInput:
        return "rejected"
    return _from_lark(tree), [(str(c), c.line, c.column) for c in comments]


def tables_result(text: str, dialect: str) -> Any:
    try:
        return lalr.parse(parser._tables(dialect), text, _Trees(), _too_deep, 10**9)
    except lalr.Rejected:
        return "rejected"


def assert_same(text: str, dialect: str) -> None:
    assert tables_result(text, dialect) == lark_result(text, dialect), text


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_specs_parse_to_lark_s_trees(name: str) -> None:
    result = tables_result(SHIPPED[name], name.rsplit(".", 1)[1])
    assert result != "rejected"
    assert result == lark_result(SHIPPED[name], name.rsplit(".", 1)[1])


EDGES = [
    "",
    "# only a comment",
    "model model = mlp(in = 1)",  # a keyword where a name belongs
    "data on = digits()\ndata for = on.classes(0 .. 4)",
    "evaluate [a] on [b] metrics [accuracy] split test",
    "data d = f(x = 0..1, y = .5 .. 1.5 step .25, z = -1e-3, w = 1.5.f())",  # numbers beside dots
    "data d = f(x = 1..)",
    "model a = m.5",
    "data d = f(batch_size = 1)",
    'study "s" (seed = 0,)  # trailing comma\nuse python "m.py"\nuse "other.merge"\n',
    'export m to "m.safetensors" as safetensors\nreport "r.html"',
    "merge ta[s, t] = f(a, b) on low for s in 0 .. 1 step 0.5, t in [1, 2]",
    "data d = f(\n  a = 1,  # inside\n  b = [1,\n 2],\n)\n# after",
    "model a = ((m))\nmodel b = (m).f()\nmodel c = m[1, 2]",
    'data d = f("a\\"b", "\\\\", "é")',
    "data d = f(1 2)",
    "data d = f(",
    "data d = $",
    "evaluate [a] on [b] metrics",
    "axis size = along",
    'study "s"\r\ndata d = digits()\r\n# c\r\nmodel m = mlp(in = 64)\r\n',  # CRLF line ends
    "data d = digits()\t# tab\n\fmodel m = mlp(in = 64)\n",
    'data d = digits(x = "a#b") # a comment sign inside a string\n',
    "data é = digits()",
]


@pytest.mark.parametrize("text", EDGES)
@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_edge_cases_parse_as_lark_parses_them(text: str, dialect: str) -> None:
    assert_same(text, dialect)


EXTRAP_EDGES = [
    "train [dt] on mazes epochs 2 with adam(lr = 1e-3) validation 0.1",
    "evaluate [dt] on mazes along size x percolation iterations [5, 10]",
    "evaluate [dt] on mazes along size, percolation",
    "dynamics [dt] on mazes iterations 30 detect [fixed_point] window 5 x",
]


@pytest.mark.parametrize("text", EXTRAP_EDGES)
def test_extrap_clauses_parse_as_lark_parses_them(text: str) -> None:
    assert_same(text, "extrap")


@SAME
@given(grammar_specs())
def test_grammar_aware_specs_parse_as_lark_parses_them(case: tuple[str, str]) -> None:
    assert_same(*case)


@SAME
@given(mutated_specs())
def test_mutated_specs_parse_as_lark_parses_them(case: tuple[str, str]) -> None:
    assert_same(*case)


def test_the_cached_tables_are_lark_s_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    grammar = parser._grammar_text("merge")
    built: list[int] = []

    def build() -> Lark:
        built.append(1)
        return parser._parser("merge")

    first = lalr.load_tables("merge", grammar, build)
    assert built == [1]
    (cached,) = (tmp_path / "mlspec").glob("tables-merge-*.marshal")
    again = lalr.load_tables("merge", grammar, build)
    assert built == [1] and again.data == first.data == lalr.tables_from_lark(parser._parser("merge"))
    blob = bytearray(cached.read_bytes())
    blob[-5] ^= 0xFF  # one flipped byte: the checksum no longer holds
    cached.write_bytes(bytes(blob))
    assert lalr.load_tables("merge", grammar, build).data == first.data
    assert built == [1, 1]
    # Another grammar is another file; the first one's tables are not used for it.
    lalr.load_tables("merge", grammar + "\n// changed\n", build)
    assert len(list((tmp_path / "mlspec").glob("tables-merge-*.marshal"))) == 2


def test_a_clean_check_never_imports_lark(tmp_path) -> None:
    import subprocess
    import sys

    spec = tmp_path / "s.merge"
    spec.write_text(SHIPPED["quickstart.merge"])
    code = "import sys; from mlspec import study; study.load(sys.argv[1]).plan; print('lark' in sys.modules)"
    run = [sys.executable, "-c", code, str(spec)]
    subprocess.run(run, check=True, capture_output=True)  # the first may build and cache the tables
    assert subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip() == "False"
