"""editors/: the TextMate grammars follow the lark grammar, and the VS Code extension is whole."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlspec.syntax.parser import all_keywords

VSCODE = Path(__file__).resolve().parent.parent / "editors" / "vscode"


def _grammar(dialect: str) -> dict:
    return json.loads((VSCODE / "syntaxes" / f"mlspec-{dialect}.tmLanguage.json").read_text())


def _patterns(grammar: dict) -> list[str]:
    return [p[k] for p in grammar["repository"].values() for k in ("match", "begin", "end") if k in p]


@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_textmate_keywords_are_the_lark_grammars_keywords(dialect: str) -> None:
    """Every word the highlighter treats as a keyword is one in the grammar, and none is missing."""
    words: set[str] = set()
    for pattern in _patterns(_grammar(dialect)):
        for group in re.findall(r"\\b\((?:\?:)?([a-z_|]+)\)\\b", pattern):
            words |= set(group.split("|"))
    assert words == set(all_keywords(dialect))


@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_textmate_patterns_highlight_a_spec(dialect: str) -> None:
    """The patterns compile, and each scope finds what it is for in a real line of spec."""
    grammar = _grammar(dialect)
    for pattern in _patterns(grammar):
        re.compile(pattern)
    repo = grammar["repository"]
    line = ("merge ta[s] = task_arithmetic(base = init, scale = s) for s in 0.1 .. 1.5 step 1e-1  # sweep"
            if dialect == "merge" else "evaluate [dt] on mazes(count = 1000) along size x percolation")
    found = {name for name, rule in repo.items() if "match" in rule and re.search(rule["match"], line)}
    if dialect == "merge":
        assert {"comment", "number", "declaration", "call", "sweep", "keywords-clause", "operators"} <= found
        assert re.search(repo["number"]["match"], "lr = 1e-3").group(0) == "1e-3"
        assert re.search(repo["declaration"]["match"], line).group(2) == "ta"
    else:
        assert {"keywords-action", "keywords-clause", "axis-join", "call"} <= found
        assert [m.start() for m in re.finditer(repo["axis-join"]["match"], line)] == [line.index(" x ") + 1]
        assert re.search(repo["axis-join"]["match"], "model x = mlp(in = 64, out = 10)") is None


def test_vscode_extension_is_complete() -> None:
    package = json.loads((VSCODE / "package.json").read_text())
    contributes = package["contributes"]
    assert {lang["extensions"][0] for lang in contributes["languages"]} == {".merge", ".extrap"}
    for lang in contributes["languages"]:
        config = json.loads((VSCODE / lang["configuration"]).read_text())
        assert config["comments"]["lineComment"] == "#"
        assert ["(", ")"] in config["brackets"] and ["[", "]"] in config["brackets"]
    for g in contributes["grammars"]:
        assert json.loads((VSCODE / g["path"]).read_text())["scopeName"] == g["scopeName"]
    assert contributes["configuration"]["properties"]["mlspec.command"]["default"] == ["mlspec", "lsp"]
    client = (VSCODE / package["main"]).read_text()
    assert "vscode-languageclient/node" in client and "vscode-languageclient" in package["dependencies"]
