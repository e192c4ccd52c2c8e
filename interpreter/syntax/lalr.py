"""A lean LALR(1) driver over the tables lark builds from ``grammar/*.lark``.

lark stays the grammar's compiler and the explainer of syntax errors; this module only runs its
tables fast. lark's own runtime spends about half of a 1,000-line spec's check in token objects,
tree-building wrappers and position propagation; here one regular expression lexes, a loop of dict
lookups shifts and reduces, and each reduction calls the AST builder for its rule directly, with the
rule's span taken from its first and last symbols.

What a reduction hands its builder is exactly the children a lark ``Tree`` of that rule would have
(anonymous tokens filtered, ``_rules`` inlined, ``[optional]`` placeholders as None, ``?rules`` with
one child passed through); each child is an entry ``(value, line, col, end_line, end_col, height)``,
a token's value being its text. Heights count the levels of those trees (tokens are 0).

The tables are plain data (``marshal``), cached per grammar in the user's cache directory, so a
check that parses cleanly never imports lark. Any input the tables reject is handed back to the
caller, who asks lark to parse it and explain the error.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Tables", "Rejected", "tables_from_lark", "load_tables", "parse"]

#: The layout of the cached tables (a cache of another layout is rebuilt).
FORMAT = 1

Entry = tuple  # (value, line, col, end_line, end_col, height)


class Rejected(Exception):
    """The tables do not accept the text; lark's own parse says why."""


class Tables:
    """One dialect's lexer and LALR tables, as plain data."""

    def __init__(self, data: dict[str, Any]):
        self.data = data
        self.lexer = re.compile("|".join(f"(?P<{name}>{regex})" for name, regex in data["terminals"])
                                + r"|(?P<_ERROR>.)", re.DOTALL)
        self.ignore = frozenset(data["ignore"])
        self.keywords: dict[str, str] = data["keywords"]
        self.states: list[dict[str, int]] = data["states"]
        # A ?rule of one symbol that it passes through is a "unit": its reduction only moves the state.
        self.rules: list[tuple] = [(origin, name, "unit" if kind == "expand1" and size == 1 and plan == ((0, False, 0),)
                                    and not trailing else kind, size, plan, trailing)
                                   for origin, name, kind, size, plan, trailing in data["rules"]]
        self.start: int = data["start"]
        self.end: int = data["end"]


def tables_from_lark(parser: Any) -> dict[str, Any]:
    """The tables of a built lark LALR parser (lexer ``contextual``, ``maybe_placeholders``)."""
    conf = parser.parser.parser.parser.parse_table
    terminals = sorted(parser.terminals,
                       key=lambda t: (-t.priority, -t.pattern.max_width, -len(t.pattern.value), t.name))
    words = {str(t.name): str(t.pattern.value) for t in terminals
             if t.pattern.type == "str" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t.pattern.value)}
    lexed = [(str(t.name), str(t.pattern.to_regexp())) for t in terminals if t.name not in words]
    rule_index = {rule: i for i, rule in enumerate(parser.rules)}
    states: list[dict[str, int]] = [{} for _ in range(max(conf.states) + 1)]
    for state, actions in conf.states.items():
        for symbol, (action, arg) in actions.items():
            states[state][str(symbol)] = arg if action.name == "Shift" else -1 - rule_index[arg]
    rules = []
    for rule in parser.rules:
        expansion, options = rule.expansion, rule.options
        empty = options.empty_indices
        nones = ([len(ones) for ones in "".join(str(int(b)) for b in empty).split("0")] if empty
                 else [0] * (len(expansion) + 1))
        plan, pending = [], 0
        for i, sym in enumerate(expansion):
            pending += nones[i]
            if options.keep_all_tokens or not (sym.is_term and sym.filter_out):
                plan.append((i, not sym.is_term and sym.name.startswith("_"), pending))
                pending = 0
        pending += nones[len(expansion)]
        origin = str(rule.origin.name)  # (plain strings: a freshly built grammar names things with Tokens)
        kind = "inline" if origin.startswith("_") else ("expand1" if options.expand1 and not rule.alias else "tree")
        rules.append((origin, str(rule.alias or origin), kind, len(expansion), tuple(plan), pending))
    return {"format": FORMAT, "terminals": lexed, "ignore": sorted(map(str, parser.lexer_conf.ignore)),
            "keywords": {text: name for name, text in words.items()}, "states": states, "rules": rules,
            "start": conf.start_states["start"], "end": conf.end_states["start"]}


def _cache_file(dialect: str, grammar: str) -> Path:
    """The cache file of a grammar's tables, named by the grammar and by this module's own source (which
    decides what the tables hold). In the user's own cache directory, like lark's parser cache."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlspec"
    key = hashlib.sha256(grammar.encode() + b"\0" + Path(__file__).read_bytes()).hexdigest()[:16]
    return root / f"tables-{dialect}-{key}.marshal"


def load_tables(dialect: str, grammar: str, build: Callable[[], Any]) -> Tables:
    """The dialect's tables: from the cache when its checksum holds, else built by ``build()`` (a lark
    parser) and cached. A cache that cannot be written only costs the next process the build."""
    path = _cache_file(dialect, grammar)
    try:
        blob = path.read_bytes()
        digest, payload = blob[:32], blob[32:]
        if hashlib.sha256(payload).digest() == digest:
            data = marshal.loads(payload)
            if isinstance(data, dict) and data.get("format") == FORMAT:
                return Tables(data)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    data = tables_from_lark(build())
    payload = marshal.dumps(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
    except OSError:
        pass
    return Tables(data)


def parse(tables: Tables, text: str, reducers: dict[str, Callable[[list, tuple], Any]],
          too_deep: Callable[[tuple], Any], max_height: int, comment: str = "COMMENT",
          ) -> tuple[Any, list[tuple[str, int, int]]]:
    """Parse ``text``: the value the start rule's reducer returns, and the comments as (text, line,
    column). ``reducers[name](children, extent)`` builds a tree rule's value; ``extent`` is
    ``(line, col, end_line, end_col)`` or None for an empty rule. A statement whose tree is more than
    ``max_height`` levels deep calls ``too_deep(extent)`` at the smallest expression that is, which
    raises. Raises :class:`Rejected` where the tables reject."""
    states, rules, keywords, ignore = tables.states, tables.rules, tables.keywords, tables.ignore
    state_stack = [tables.start]
    values: list[Entry] = []
    comments: list[tuple[str, int, int]] = []
    line, line_start = 1, 0

    def reduce(rule: tuple) -> None:
        origin, name, kind, size, plan, trailing = rule
        if size:
            raw = values[-size:]
            del values[-size:]
            del state_stack[-size:]
            first, last = raw[0], raw[-1]
            extent = (first[1], first[2], last[3], last[4])
            height = max([e[5] for e in raw]) if size > 1 else first[5]
        else:
            raw, extent, height = [], None, 0
        kids: list[Any] = []
        for i, expand, nones in plan:
            if nones:
                kids += [None] * nones
            if expand:
                if kids:
                    kids += raw[i][0]
                else:
                    kids = raw[i][0]  # a left-recursive list grows in place (its entry is gone)
            else:
                kids.append(raw[i])
        if trailing:
            kids += [None] * trailing
        if kind == "inline":
            value = kids
        elif kind == "expand1" and len(kids) == 1:
            value = kids[0][0]
            height = kids[0][5]
        else:
            height += 1
            if height > max_height and origin != "start":
                too_deep(extent)  # (the start rule is one level above every statement)
            value = reducers[name](kids, extent)
        state_stack.append(states[state_stack[-1]][origin])
        if extent is None:
            values.append((value, 1, 1, 1, 1, height))
        else:
            values.append((value, *extent, height))

    for match in tables.lexer.finditer(text):
        kind = match.lastgroup
        token = match.group()
        start = match.start()
        if kind in ignore:
            if kind == comment:
                comments.append((token, line, start - line_start + 1))
            newlines = token.count("\n")
            if newlines:
                line += newlines
                line_start = start + token.rindex("\n") + 1
            continue
        if kind == "_ERROR":
            raise Rejected
        col = start - line_start + 1
        if kind == "NAME" and token in keywords and keywords[token] in states[state_stack[-1]]:
            kind = keywords[token]
        while True:
            code = states[state_stack[-1]].get(kind)
            if code is None:
                raise Rejected
            if code >= 0:
                state_stack.append(code)
                values.append((token, line, col, line, col + len(token), 0))
                break
            rule = rules[-1 - code]
            if rule[2] == "unit":  # the entry stays as it is; only the state moves
                state_stack[-1] = states[state_stack[-2]][rule[0]]
            else:
                reduce(rule)
    while state_stack[-1] != tables.end:
        code = states[state_stack[-1]].get("$END")
        if code is None or code >= 0:
            raise Rejected
        rule = rules[-1 - code]
        if rule[2] == "unit":
            state_stack[-1] = states[state_stack[-2]][rule[0]]
        else:
            reduce(rule)
    return values[-1][0], comments
