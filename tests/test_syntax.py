"""Parsing, spans and the canonical formatter (fmt ∘ parse is a fixed point)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlspec.errors import SpecError
from mlspec.syntax import ast
from mlspec.syntax.fmt import format_expr, format_program
from mlspec.syntax.parser import parse, parse_file

SPECS = sorted((Path(__file__).parent.parent / "specs").glob("*.*"))
SPEC_FILES = [p for p in SPECS if p.suffix in (".merge", ".extrap")]

MERGE_SKETCH = """\
# digits.merge — do two MLPs trained from different seeds sit in one basin?
study "digits-basins" (seed = 0, device = auto)
data digits = digits(test_fraction = 0.25)          # ships with scikit-learn
data low    = digits.classes(0 .. 4)
model init = mlp(in = 64, hidden = [256, 256], out = 10)
model a    = train(init, on = low,  epochs = 40, lr = 1e-3)
model c    = train(mlp(in = 64, hidden = [256, 256], out = 10), on = digits)
merge ta[s] = task_arithmetic(base = init, models = [a, c], scale = s) for s in 0.1 .. 1.5 step 0.1
evaluate [a, c, ta] on [low, digits] metrics [accuracy, loss]
curve raw     = interpolate(a, c,   steps = 25) on digits
export ta[0.5] to "out/ta.safetensors" as safetensors
report "out/digits-basins.html"
"""

EXTRAP_SKETCH = """\
study "maze-extrapolation" (seed = 0)
task mazes = maze(generator = dfs, size = 9, percolation = 0.0, deadend_start = true)
model dt = dt_net(width = 128, recall = true, iterations = 30)
train [dt] on mazes(count = 50000) epochs 50 with progressive_loss(alpha = 0.01)
axis size = [9, 19, 29]
axis percolation = [0.0, 0.01]
evaluate [dt] on mazes(count = 1000) along size x percolation iterations [30, 100, 300]
dynamics [dt] on mazes(size = 33, count = 64) iterations 3000 detect [fixed_point, cycle]
"""


def test_merge_sketch_parses_with_spans_and_question() -> None:
    program = parse(MERGE_SKETCH, "d.merge")
    assert program.dialect == "merge"
    assert program.question.startswith("digits.merge — do two MLPs")
    decl = program.statements[2]
    assert isinstance(decl, ast.Decl) and decl.name == "low"
    assert isinstance(decl.value, ast.Call) and decl.value.func == "classes"
    assert isinstance(decl.value.receiver, ast.Name) and decl.value.receiver.id == "digits"
    rng = decl.value.args[0]
    assert isinstance(rng, ast.Range) and (rng.start.value, rng.stop.value) == (0, 4)  # type: ignore[union-attr]
    assert (decl.span.line, decl.span.col) == (4, 1) and decl.name_span.col == 6
    lr = program.statements[4].value.kwargs[2]  # type: ignore[union-attr]
    assert lr.name == "lr" and lr.value.value == 1e-3 and lr.value.text == "1e-3"
    assert program.statements[1].trailing == " ships with scikit-learn"


def test_extrap_sketch_parses() -> None:
    program = parse(EXTRAP_SKETCH, "m.extrap")
    actions = [s for s in program.statements if isinstance(s, ast.Action)]
    assert [a.keyword for a in actions] == ["train", "evaluate", "dynamics"]
    along = actions[1].clauses[0]
    assert isinstance(along, ast.Along) and [a.id for a in along.axes] == ["size", "percolation"]


def test_dialect_follows_extension() -> None:
    with pytest.raises(SpecError, match="unknown statement 'task'"):
        parse(EXTRAP_SKETCH, "m.merge")
    with pytest.raises(SpecError, match="cannot tell the dialect"):
        parse("", "x.yaml")


@pytest.mark.parametrize("text,file", [(MERGE_SKETCH, "a.merge"), (EXTRAP_SKETCH, "a.extrap")])
def test_fmt_round_trip_of_sketches(text: str, file: str) -> None:
    program = parse(text, file)
    once = format_program(program)
    again = parse(once, file)
    assert again.dump() == program.dump()
    assert format_program(again) == once


@pytest.mark.parametrize("spec", SPEC_FILES, ids=[p.name for p in SPEC_FILES])
def test_fmt_is_a_fixed_point_on_every_shipped_spec(spec: Path) -> None:
    program = parse_file(spec)
    once = format_program(program)
    reparsed = parse(once, str(spec))
    assert reparsed.dump() == program.dump()
    assert reparsed.question == program.question
    assert format_program(reparsed) == once


# --- random expressions: parse(fmt(e)) == e ---------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
    lambda n: n not in {"true", "false", "step", "x", "on", "for", "in", "to", "as", "along"})
numbers = st.one_of(st.integers(-1000, 1000).map(str),
                    st.floats(-1e3, 1e3, allow_nan=False).map(lambda f: repr(round(f, 4))),
                    st.sampled_from(["1e-3", "2.5E+4", "0.0", "-7e2"]))
strings = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')


def _exprs() -> st.SearchStrategy[str]:
    atoms = st.one_of(numbers, strings, names, st.sampled_from(["true", "false"]))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        args = st.lists(st.one_of(inner, st.tuples(names, inner).map(lambda t: f"{t[0]} = {t[1]}")), max_size=3)
        return st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
            st.tuples(names, args).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(names, names, args).map(lambda t: f"{t[0]}.{t[1]}({', '.join(t[2])})"),
        )

    base = st.recursive(atoms, extend, max_leaves=8)
    ranges = st.tuples(numbers, numbers, st.none() | numbers).map(
        lambda t: f"{t[0]} .. {t[1]}" + (f" step {t[2]}" if t[2] else ""))
    return st.one_of(base, ranges)


@settings(max_examples=150, deadline=None)
@given(_exprs(), names)
def test_random_expressions_round_trip(expr: str, name: str) -> None:
    text = f"model {name} = f(value = {expr})\n"
    program = parse(text, "r.merge")
    value = program.statements[0].value.kwargs[0].value  # type: ignore[union-attr]
    printed = format_program(program)
    assert parse(printed, "r.merge").dump() == program.dump()
    assert format_expr(value) in printed
