"""Hostile spec texts for the fuzzing test and ``benchmarks/fuzz.py``: grammar-aware ones (built
from the language's own pieces, with extreme values) and mutations of the shipped specs.

A case passes when checking it either succeeds or raises a :class:`~mlspec.errors.SpecError`;
any other exception is a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from mlspec import registry
from mlspec.errors import SpecError

SPECS = Path(__file__).resolve().parent.parent / "specs"
SHIPPED = {p.name: p.read_text() for p in sorted(SPECS.glob("*.*"))}

# --- grammar-aware ------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "init", "digits", "low", "mazes", "dt", "size", "s", "m", "x", "ta", "data"])
EXTREME_NUMBERS = st.sampled_from(["0", "-1", "1e400", "-1e400", "1e-400", "9" * 25, "9" * 5000, "1e308",
                                   "2.5", ".5", "-0.0", "123456789012345678901", "0.0000001"])
NUMBERS = st.one_of(EXTREME_NUMBERS, st.integers(-10**6, 10**6).map(str),
                    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr))
STRINGS = st.one_of(
    st.sampled_from(['"x"', '"../../x"', '"/etc/passwd"', '"results.json"', '"a\\"b"', '"figures/f"', '"."', '""',
                     '"report.html"', '"specs/quickstart.merge"']),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\\n'), max_size=12)
    .map(lambda s: f'"{s}"'),
)
OPERATORS = st.sampled_from(sorted(registry.names()) + ["nope", "train", "digits", "classes"])
KEYWORDS = st.sampled_from(["in", "out", "hidden", "epochs", "lr", "scale", "density", "models", "base", "on",
                            "steps", "size", "count", "width", "iterations", "test_fraction", "seed", "device"])


def _expr(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(NUMBERS, STRINGS, NAMES, st.sampled_from(["true", "false", "auto"]))
    if depth <= 0:
        return leaf
    sub = st.deferred(lambda: _expr(depth - 1))
    return st.one_of(
        leaf,
        st.lists(sub, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.tuples(NUMBERS, NUMBERS, st.one_of(st.none(), NUMBERS))
        .map(lambda t: f"{t[0]} .. {t[1]}" + (f" step {t[2]}" if t[2] else "")),
        st.tuples(OPERATORS, st.lists(st.tuples(KEYWORDS, sub), max_size=4))
        .map(lambda t: f"{t[0]}(" + ", ".join(f"{k} = {v}" for k, v in t[1]) + ")"),
        st.tuples(NAMES, st.lists(sub, min_size=1, max_size=2)).map(lambda t: f"{t[0]}[{', '.join(t[1])}]"),
        st.tuples(NAMES, OPERATORS, sub).map(lambda t: f"{t[0]}.{t[1]}({t[2]})"),
    )


EXPR = _expr(3)


def _statement(dialect: str) -> st.SearchStrategy[str]:
    kinds = (["data", "model", "merge", "curve", "surface", "analysis"] if dialect == "merge"
             else ["task", "data", "model", "axis", "analysis"])
    decl = st.tuples(st.sampled_from(kinds), NAMES, EXPR).map(lambda t: f"{t[0]} {t[1]} = {t[2]}")
    sweep = st.tuples(st.sampled_from(kinds), NAMES, st.lists(NAMES, min_size=1, max_size=3), EXPR, EXPR).map(
        lambda t: f"{t[0]} {t[1]}[{', '.join(t[2])}] = {t[3]} for " + ", ".join(f"{v} in {t[4]}" for v in t[2]))
    actions = st.sampled_from(["evaluate"] if dialect == "merge" else ["train", "evaluate", "dynamics"])
    clauses = st.sampled_from(["metrics", "split"] if dialect == "merge"
                              else ["epochs", "with", "iterations", "detect", "lr", "batch"])
    action = st.tuples(actions, EXPR, st.one_of(st.none(), EXPR), st.lists(st.tuples(clauses, EXPR), max_size=2),
                       st.one_of(st.none(), st.lists(NAMES, min_size=1, max_size=4))).map(
        lambda t: f"{t[0]} {t[1]}" + (f" on {t[2]}" if t[2] else "") + "".join(f" {k} {v}" for k, v in t[3])
        + (f" along {' x '.join(t[4])}" if t[4] else ""))
    other = st.one_of(
        st.tuples(STRINGS, st.lists(st.tuples(st.sampled_from(["seed", "device", "nope"]), EXPR), max_size=2))
        .map(lambda t: f"study {t[0]}" + (" (" + ", ".join(f"{k} = {v}" for k, v in t[1]) + ")" if t[1] else "")),
        STRINGS.map(lambda s: f"use {s}"),
        STRINGS.map(lambda s: f"report {s}"),
        st.tuples(EXPR, STRINGS, st.sampled_from(["", " as hf", " as safetensors", " as nope"]))
        .map(lambda t: f"export {t[0]} to {t[1]}{t[2]}"),
    )
    return st.one_of(decl, sweep, action, other)


@st.composite
def grammar_specs(draw: st.DrawFn) -> tuple[str, str]:
    """``(text, dialect)`` assembled from the language's statements with extreme values."""
    dialect = draw(st.sampled_from(["merge", "extrap"]))
    statements = draw(st.lists(_statement(dialect), max_size=8))
    return "\n".join(statements) + "\n", dialect


# --- mutation-based ------------------------------------------------------------------------------

TOKENS = ["(", ")", "[", "]", ",", "=", '"', "..", " step ", " for ", " in ", " on ", " x ", "#", "\n",
          "1e400", "9" * 400, "-", ".", "\x00", "\ud800", "é", "\t", "along", "model", "merge", "evaluate",
          "study", "use", "export", "report", "[" * 200, "]" * 200, "a" * 300]


@st.composite
def mutated_specs(draw: st.DrawFn) -> tuple[str, str]:
    """A shipped spec with a few random edits: deletions, duplications, insertions, line swaps."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    text = SHIPPED[name]
    for _ in range(draw(st.integers(1, 4))):
        n = len(text)
        i = draw(st.integers(0, n))
        j = draw(st.integers(i, min(n, i + 40)))
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "swap", "replace"]))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] * draw(st.integers(1, 3)) + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "replace":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text, name.rsplit(".", 1)[1]


# --- running a case ------------------------------------------------------------------------------


@dataclass
class Outcome:
    state: str  # "ok" | "spec error" | "crash"
    seconds: float
    detail: str = ""


def check_case(text: str, dialect: str, folder: Path = SPECS) -> Outcome:
    """Parse and check one spec text as if it were ``folder/fuzz.<dialect>``."""
    import mlspec

    start = time.perf_counter()
    try:
        plan = mlspec.loads(text, str(folder / f"fuzz.{dialect}")).plan
        plan.to_text()
        state, detail = "ok", ""
    except SpecError as exc:
        exc.render().encode("utf-8")  # the message itself must print
        state, detail = "spec error", ""
    except Exception as exc:  # a crash: anything but a spec error
        state, detail = "crash", f"{type(exc).__name__}: {exc}"[:300]
    return Outcome(state, time.perf_counter() - start, detail)
