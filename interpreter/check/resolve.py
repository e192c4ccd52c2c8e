"""Resolve a spec's expressions and operator calls against the registry.

Names resolve with "did you mean", calls are matched to operator signatures, parameters are
validated by each operator's pydantic model and input kinds are checked; each call becomes a
named :class:`~mlspec.plan.steps.Step`. Problems become diagnostics that point at the spec text.
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .. import registry
from ..errors import Diagnostic, Span, did_you_mean
from ..plan.steps import Step
from ..registry import Kind, OpSpec
from ..syntax import ast
from ..syntax.fmt import format_expr

__all__ = ["Resolver", "Abort", "Binding", "format_value", "shown"]


class Abort(Exception):
    """Stop lowering the current statement; its diagnostic is already recorded."""


@dataclass
class Binding:
    name: str
    span: Span
    kind: str  # "step" | "family" | "axis"
    out: Kind = Kind.ANY
    steps: list[str] = field(default_factory=list)
    members: dict[tuple[Any, ...], str] = field(default_factory=dict)
    values: list[Any] = field(default_factory=list)  # axis values
    template: ast.Decl | None = None  # a decl whose call can be re-invoked with overrides


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(round(v, 12))
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def shown(v: Any) -> str:
    """A value as a user would write it in a spec (strings quoted)."""
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(shown(x) for x in v) + "]"
    return format_value(v)


def _range_values(start: Any, stop: Any, step: Any) -> list[Any]:
    if step == 0:
        raise ValueError("a range's step cannot be 0")
    spread = (stop - start) / step  # a float: finite, as every literal is (syntax/limits.py)
    if not math.isfinite(spread) or spread > 100_000:
        raise ValueError(f"the range {start} .. {stop} step {step} has {spread + 1:.4g} values (at most 100,000)")
    count = int(spread + 1e-9) + 1
    if count <= 0:
        raise ValueError(f"the range {start} .. {stop} step {step} is empty")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in (start, stop, step)):
        return [start + i * step for i in range(count)]
    return [round(start + i * step, 12) for i in range(count)]


class Resolver:
    """Names, values and operator calls; :class:`~mlspec.check.lower` adds the statements."""

    def __init__(self, program: ast.Program, *, allow_outside: bool):
        self.program = program
        self.dialect = program.dialect
        self.allow_outside = allow_outside
        self.diags: list[Diagnostic] = []
        self.sources: dict[str, str] = {program.file: program.source}
        self.env: dict[str, Binding] = {}
        self.later: dict[str, Span] = {}  # names declared further down (for "used before declared")
        self.steps: dict[str, Step] = {}
        self.families: dict[str, list[str]] = {}
        self.failed: set[str] = set()  # declarations that already have a diagnostic
        self.names_of: dict[str, list[str]] = {}  # step -> the names bound to it alone, in order

    # --- diagnostics ----------------------------------------------------------------------
    def error(self, message: str, span: Span | None, help: str | None = None,
              labels: list[tuple[Span, str]] | None = None) -> Abort:
        self.diags.append(Diagnostic(message, span, help=help, labels=labels or []))
        return Abort()

    # --- values ---------------------------------------------------------------------------
    def value(self, e: ast.Expr, scope: dict[str, Any]) -> Any:
        """A parameter value: literals, lists, ranges, sweep variables, axes, symbols, nested calls."""
        if isinstance(e, (ast.Number, ast.String, ast.Bool)):
            return e.value
        if isinstance(e, ast.ListExpr):
            return [self.value(i, scope) for i in e.items]
        if isinstance(e, ast.Range):
            start, stop = self.value(e.start, scope), self.value(e.stop, scope)
            step = self.value(e.step, scope) if e.step is not None else 1
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (start, stop, step)):
                raise self.error("a range needs numbers: `0 .. 1 step 0.1`", e.span)
            try:
                return _range_values(start, stop, step)
            except ValueError as exc:
                raise self.error(str(exc), e.span) from None
        if isinstance(e, ast.Name):
            if e.id in scope:
                return scope[e.id]
            binding = self.env.get(e.id)
            if binding is not None and binding.kind == "axis":
                return binding.values
            if binding is not None:
                raise self.error(f"'{e.id}' is a {binding.out.value}, but a value is expected here", e.span)
            return e.id  # a symbol: `by = weight_matching`, `device = auto`
        if isinstance(e, ast.Call):
            if e.args or e.receiver is not None:
                raise self.error(f"write the settings of '{e.func}' as keywords: `{e.func}(name = value)`", e.span)
            return {"type": e.func, **{k.name: self.value(k.value, scope) for k in e.kwargs}}
        raise self.error("a sweep member is a model, not a value", e.span)

    # --- references -------------------------------------------------------------------------
    def lookup(self, name: ast.Name) -> Binding:
        binding = self.env.get(name.id)
        if binding is not None:
            return binding
        if name.id in self.failed:
            raise Abort()  # its own error is already reported; don't add "unknown name" noise
        if name.id in self.later:
            raise self.error(f"'{name.id}' is used before it is declared", name.span,
                             labels=[(self.later[name.id], "declared here")],
                             help="move the declaration above its first use")
        raise self.error(f"unknown name '{name.id}'", name.span, help=did_you_mean(name.id, self.env))

    def refs(self, e: ast.Expr, port: registry.Port, owner: str, scope: dict[str, Any], role: str) -> list[str]:
        """The step names an input expression denotes (nested calls become steps here). ``role`` names
        the receiving end in messages: "'on' of train", "evaluate"."""
        if isinstance(e, ast.ListExpr):
            if not port.many:
                raise self.error(f"{role} takes one {port.kind.value}, not a list", e.span)
            out: list[str] = []
            for i, item in enumerate(e.items):  # an indexed range inside a list adds its members: [bd, c[1 .. k]]
                item_port = registry.Port(port.name, port.kind, many=isinstance(item, ast.Index))
                out += self.refs(item, item_port, f"{owner}[{i}]", scope, role)
            return out
        if isinstance(e, ast.Name):
            if e.id in scope:
                raise self.error(f"'{e.id}' is a sweep variable; {role} needs "
                                 f"{port.kind.article} {port.kind.value}", e.span)
            binding = self.lookup(e)
            if binding.kind == "axis":
                raise self.error(f"'{e.id}' is an axis of values; {role} needs "
                                 f"{port.kind.article} {port.kind.value}", e.span)
            self.check_kind(binding.out, port, role, e.id, e.span)
            if binding.kind == "family" and not port.many:
                some = next(iter(binding.members))
                raise self.error(
                    f"'{e.id}' is a sweep of {len(binding.steps)} steps; {role} takes one",
                    e.span, help=f"pick one member, e.g. {e.id}[{', '.join(format_value(v) for v in some)}]")
            return list(binding.steps)
        if isinstance(e, ast.Index):
            binding = self.lookup(e.target)
            if binding.kind != "family":
                raise self.error(f"'{e.target.id}' is not a sweep, so it cannot be indexed", e.span)
            values = [self.value(k, scope) for k in e.keys]
            keys = list(itertools.product(*[v if isinstance(v, list) else [v] for v in values]))
            if len(keys) > 1 and not port.many:  # `ft[1 .. n]`: several members, in the order written
                raise self.error(f"'{format_expr(e)}' names {len(keys)} members of a sweep; {role} takes one",
                                 e.span)
            return [self.member(binding, key, port, role, e) for key in keys]
        if isinstance(e, ast.Call):
            template = self.env.get(e.func)
            # A re-used declaration is named by its text (`d(test_fraction = 0.25)`), so two uses share it.
            step_name = self.call_text(e, scope) if template is not None and template.template is not None else owner
            name = self.call(e, step_name, scope, statement=f"(inside {owner})")
            self.check_kind(Kind(self.output_kind(name)), port, role, name, e.span)
            return [name]
        raise self.error(f"{role} needs {port.kind.article} {port.kind.value}, "
                         f"not {format_expr(e)}", e.span)

    def member(self, binding: Binding, key: tuple[Any, ...], port: registry.Port, role: str, e: ast.Index) -> str:
        for member_key, step in binding.members.items():
            if len(member_key) == len(key) and all(_same(a, b) for a, b in zip(member_key, key)):
                self.check_kind(binding.out, port, role, step, e.span)
                return step
        known = ", ".join(f"[{', '.join(format_value(v) for v in k)}]" for k in list(binding.members)[:8])
        raise self.error(f"'{e.target.id}' has no member [{', '.join(format_value(v) for v in key)}]",
                         e.span, help=f"members: {known}")

    def call_text(self, c: ast.Call, scope: dict[str, Any],
                  overrides: dict[str, tuple[Any, Span]] | None = None) -> str:
        """A step name for a call: ``d(test_fraction = 0.25)``, with sweep variables replaced by their
        values and ``overrides`` (an axis grid point) replacing or adding settings."""
        settings = {k.name: shown(self.value(k.value, scope)) for k in c.kwargs}
        settings.update({name: shown(value) for name, (value, _span) in (overrides or {}).items()})
        receiver = "" if c.receiver is None else format_expr(c.receiver) + "."
        parts = [format_expr(a) for a in c.args] + [f"{k} = {v}" for k, v in settings.items()]
        return f"{receiver}{c.func}({', '.join(parts)})"

    def output_kind(self, step: str) -> str:
        spec = registry.get(self.steps[step].op)
        return spec.output.value if spec else Kind.ANY.value

    def check_kind(self, got: Kind, port: registry.Port, role: str, what: str, span: Span) -> None:
        if not port.kind.accepts(got):
            raise self.error(f"{role} needs {port.kind.article} {port.kind.value}, "
                             f"but '{what}' is {got.article} {got.value}", span)

    # --- calls ----------------------------------------------------------------------------
    def call(self, c: ast.Call, name: str, scope: dict[str, Any], *, statement: str,
             on: ast.Expr | None = None, overrides: dict[str, tuple[Any, Span]] | None = None,
             family: str | None = None, sweep: dict[str, Any] | None = None) -> str:
        """Lower one call to a step called ``name`` (or reuse an identical existing step)."""
        overrides = dict(overrides or {})
        binding = self.env.get(c.func)
        if binding is not None and binding.template is not None and registry.get(c.func) is None:
            # `mazes(count = 1000)`: re-invoke the declaration's call with these settings on top.
            if c.args:
                raise self.error(f"re-using '{c.func}' takes keyword settings only", c.span)
            for k in c.kwargs:
                overrides.setdefault(k.name, (self.value(k.value, scope), k.name_span))
            decl = binding.template
            assert isinstance(decl.value, ast.Call)
            return self.call(decl.value, name, scope, statement=statement, on=decl.on, overrides=overrides,
                             family=family, sweep=sweep)
        op = registry.get(c.func)
        if op is None and c.func in self.failed:
            raise Abort()  # a re-use of a declaration that already has its own error
        if op is None or self.dialect not in op.dialects:
            pool = registry.names(self.dialect) + [b for b, v in self.env.items() if v.template is not None]
            hint = did_you_mean(c.func, pool)
            if op is not None:
                hint = f"'{c.func}' is an operator of the .{sorted(op.dialects)[0]} dialect"
            elif binding is not None:
                hint = f"'{c.func}' is a {binding.out.value}; only declared calls can be re-used with settings"
            raise self.error(f"unknown operator '{c.func}'", c.name_span,
                             help=hint or "run `mlspec ops` to list the operators")
        inputs: dict[str, str | list[str]] = {}
        raw: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        given = {k.name for k in c.kwargs}
        positional = ([c.receiver] if c.receiver is not None else []) + list(c.args)
        ports = [p for p in op.inputs if p.name not in given and not (p.name == "on" and on is not None)]
        fields = [f for f, info in op.params.model_fields.items() if (info.alias or f) not in given and f not in given]
        i = 0
        while i < len(positional):
            arg = positional[i]
            if ports:
                port = ports.pop(0)
                if port.many and not ports:
                    items = positional[i:]
                    sub = items[0] if len(items) == 1 and isinstance(items[0], ast.ListExpr) else \
                        ast.ListExpr(span=arg.span, items=items)
                    inputs[port.name] = self.refs(sub, port, f"{name}.{port.name}", scope, _role(port, op))
                    break
                found = self.refs(arg, port, f"{name}.{port.name}", scope, _role(port, op))
                inputs[port.name] = found if port.many else found[0]
            elif fields:
                field_name = fields.pop(0)
                info = op.params.model_fields[field_name]
                raw[info.alias or field_name] = self.value(arg, scope)
                spans[field_name] = arg.span
            else:
                raise self.error(f"{op.name} takes {len(positional) - len(positional[i:])} positional "
                                 f"argument(s); this one is extra", arg.span)
            i += 1
        param_names = _param_names(op.params)
        for k in c.kwargs:
            port = op.port(k.name)
            if port is not None:
                found = self.refs(k.value, port, f"{name}.{port.name}", scope, _role(port, op))
                inputs[port.name] = found if port.many else found[0]
            elif k.name in param_names or op.params.model_config.get("extra") == "allow":
                raw[k.name] = self.value(k.value, scope)
                spans[k.name] = k.value.span
            else:
                pool = [p.name for p in op.inputs] + sorted(param_names)
                raise self.error(f"{op.name} has no parameter '{k.name}'", k.name_span,
                                 help=did_you_mean(k.name, pool) or f"{op.name} takes: {', '.join(pool)}")
        if on is not None:
            port = op.port("on")
            if port is None:
                raise self.error(f"{op.name} does not take a dataset with `on`", on.span)
            found = self.refs(on, port, f"{name}.on", scope, _role(port, op))
            inputs["on"] = found if port.many else found[0]
        for key, (val, span) in overrides.items():
            if op.port(key) is not None or key not in param_names:
                pool = sorted(param_names)
                raise self.error(f"{op.name} has no parameter '{key}'", span, help=did_you_mean(key, pool))
            raw[key] = val
            spans[key] = span
        for port in op.inputs:
            if port.required and port.name not in inputs:
                how = "`on <dataset>`" if port.name == "on" else f"`{port.name} = ...`"
                raise self.error(f"{op.name} needs '{port.name}' ({port.kind.article} {port.kind.value})",
                                 c.span, help=f"add {how}")
        params = self.validate(op, raw, spans, c)
        if op.check_inputs is not None:
            problem = op.check_inputs(inputs, params)
            if problem:
                raise self.error(problem, c.span)
        return self.add_step(Step(name=name, op=op.name, params=params, inputs=inputs, span=c.span,
                                  statement=statement, family=family, sweep=sweep))

    def validate(self, op: OpSpec, raw: dict[str, Any], spans: dict[str, Span], c: ast.Call) -> dict[str, Any]:
        for name in registry.file_fields(op.params):
            key = info_alias(op, name)
            if isinstance(raw.get(key), str) and not Path(raw[key]).is_absolute():
                raw[key] = str((Path(c.span.file).parent / raw[key]).resolve())
        try:
            model = op.params.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                if not err["loc"]:  # a check across parameters, or of the call as a whole
                    self.error(f"{op.name}: {err['msg'].replace('Value error, ', '')}", c.span)
                    continue
                loc = str(err["loc"][0])
                field_name = next((f for f, info in op.params.model_fields.items()
                                   if loc in (f, info.alias)), loc)
                span = spans.get(loc) or spans.get(field_name) or c.span
                written = info_alias(op, field_name)
                if err["type"] == "missing":
                    self.error(f"{op.name} needs the parameter '{written}'", c.span,
                               help=f"add `{written} = ...`")
                else:
                    got = raw.get(written, raw.get(field_name))
                    msg = err["msg"].replace("Value error, ", "")
                    if "(not " not in msg:  # a validator's own message may quote the value already
                        msg += f" (not {shown(got)})"
                    self.error(f"invalid '{written}' for {op.name}: {msg}", span)
            raise Abort() from None
        return model.model_dump(mode="json")

    def add_step(self, step: Step) -> str:
        existing = self.steps.get(step.name)
        if existing is not None:
            if (existing.op, existing.params, existing.inputs) == (step.op, step.params, step.inputs):
                return step.name
            raise self.error(f"two different steps would be called '{step.name}'", step.span,
                             labels=[(existing.span, "the other one")])
        self.steps[step.name] = step
        return step.name

    # --- statements ---------------------------------------------------------------------------
def _role(port: registry.Port, op: OpSpec) -> str:
    return f"'{port.name}' of {op.name}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return bool(a == b)


@functools.cache
def _param_names(params: type) -> frozenset[str]:
    """Every name a parameter may be written by: its field name and its alias."""
    return frozenset({info.alias or f for f, info in params.model_fields.items()} | set(params.model_fields))


def info_alias(op: OpSpec, field_name: str) -> str:
    info = op.params.model_fields.get(field_name)
    return (info.alias or field_name) if info else field_name
