"""Check a parsed spec against the registry and lower it to named steps.

This is where names resolve (with "did you mean"), calls are matched to operator signatures,
parameters are validated by each operator's pydantic model, input kinds are checked, sweeps expand
and statements (``evaluate``, ``train``, ``export`` …) become steps. Every problem becomes a
:class:`~mlspec.errors.Diagnostic` pointing at the spec text; all of them are reported at once.
Nothing here imports torch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlspec import registry
from mlspec.check.dialects import ACTIONS, DECL_KINDS, StudyOptions
from mlspec.errors import Diagnostic, Span, SpecError, did_you_mean
from mlspec.plan.steps import Lowered, Step, StudyInfo
from mlspec.registry import Kind, OpSpec
from mlspec.syntax import ast
from mlspec.syntax.fmt import format_expr
from mlspec.syntax.parser import parse_file

__all__ = ["lower", "format_value"]


class _Abort(Exception):
    """Stop lowering the current statement; its diagnostic is already recorded."""


@dataclass
class _Binding:
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


def _shown(v: Any) -> str:
    """A value as a user would write it in a spec (strings quoted)."""
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_shown(x) for x in v) + "]"
    return format_value(v)


def _range_values(start: Any, stop: Any, step: Any) -> list[Any]:
    if step == 0:
        raise ValueError("a range's step cannot be 0")
    count = int((stop - start) / step + 1e-9) + 1
    if count <= 0:
        raise ValueError(f"the range {start} .. {stop} step {step} is empty")
    if count > 100_000:
        raise ValueError(f"the range {start} .. {stop} step {step} has {count} values (at most 100,000)")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in (start, stop, step)):
        return [start + i * step for i in range(count)]
    return [round(start + i * step, 12) for i in range(count)]


class _Lowerer:
    def __init__(self, program: ast.Program, *, allow_outside: bool):
        self.program = program
        self.dialect = program.dialect
        self.allow_outside = allow_outside
        self.diags: list[Diagnostic] = []
        self.sources: dict[str, str] = {program.file: program.source}
        self.env: dict[str, _Binding] = {}
        self.later: dict[str, Span] = {}  # names declared further down (for "used before declared")
        self.steps: dict[str, Step] = {}
        self.families: dict[str, list[str]] = {}
        self.failed: set[str] = set()  # declarations that already have a diagnostic

    # --- diagnostics ----------------------------------------------------------------------
    def error(self, message: str, span: Span | None, help: str | None = None,
              labels: list[tuple[Span, str]] | None = None) -> _Abort:
        self.diags.append(Diagnostic(message, span, help=help, labels=labels or []))
        return _Abort()

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
    def lookup(self, name: ast.Name) -> _Binding:
        binding = self.env.get(name.id)
        if binding is not None:
            return binding
        if name.id in self.failed:
            raise _Abort()  # its own error is already reported; don't add "unknown name" noise
        if name.id in self.later:
            raise self.error(f"'{name.id}' is used before it is declared", name.span,
                             labels=[(self.later[name.id], "declared here")],
                             help="move the declaration above its first use")
        raise self.error(f"unknown name '{name.id}'", name.span, help=did_you_mean(name.id, self.env))

    def refs(self, e: ast.Expr, port: registry.Port, owner: str, scope: dict[str, Any],
             op: OpSpec) -> list[str]:
        """The step names an input expression denotes (nested calls become steps here)."""
        if isinstance(e, ast.ListExpr):
            if not port.many:
                raise self.error(f"'{port.name}' of {op.name} takes one {port.kind.value}, not a list", e.span)
            out: list[str] = []
            for i, item in enumerate(e.items):
                out += self.refs(item, registry.Port(port.name, port.kind), f"{owner}[{i}]", scope, op)
            return out
        if isinstance(e, ast.Name):
            if e.id in scope:
                raise self.error(f"'{e.id}' is a sweep variable; '{port.name}' of {op.name} needs "
                                 f"{port.kind.article} {port.kind.value}", e.span)
            binding = self.lookup(e)
            if binding.kind == "axis":
                raise self.error(f"'{e.id}' is an axis of values; '{port.name}' of {op.name} needs "
                                 f"{port.kind.article} {port.kind.value}", e.span)
            self.check_kind(binding.out, port, op, e.id, e.span)
            if binding.kind == "family" and not port.many:
                some = next(iter(binding.members))
                raise self.error(
                    f"'{e.id}' is a sweep of {len(binding.steps)} steps; '{port.name}' of {op.name} takes one",
                    e.span, help=f"pick one member, e.g. {e.id}[{', '.join(format_value(v) for v in some)}]")
            return list(binding.steps)
        if isinstance(e, ast.Index):
            binding = self.lookup(e.target)
            if binding.kind != "family":
                raise self.error(f"'{e.target.id}' is not a sweep, so it cannot be indexed", e.span)
            key = tuple(self.value(k, scope) for k in e.keys)
            for member_key, step in binding.members.items():
                if len(member_key) == len(key) and all(_same(a, b) for a, b in zip(member_key, key)):
                    self.check_kind(binding.out, port, op, step, e.span)
                    return [step]
            known = ", ".join(f"[{', '.join(format_value(v) for v in k)}]" for k in list(binding.members)[:8])
            raise self.error(f"'{e.target.id}' has no member [{', '.join(format_value(v) for v in key)}]",
                             e.span, help=f"members: {known}")
        if isinstance(e, ast.Call):
            template = self.env.get(e.func)
            # A re-used declaration is named by its text (`d(test_fraction = 0.25)`), so two uses share it.
            step_name = self.call_text(e, scope) if template is not None and template.template is not None else owner
            name = self.call(e, step_name, scope, statement=f"(inside {owner})")
            self.check_kind(Kind(self.output_kind(name)), port, op, name, e.span)
            return [name]
        raise self.error(f"'{port.name}' of {op.name} needs {port.kind.article} {port.kind.value}, "
                         f"not {format_expr(e)}", e.span)

    def call_text(self, c: ast.Call, scope: dict[str, Any]) -> str:
        """``d(test_fraction = 0.25)`` with sweep variables replaced by their values."""
        kwargs = ", ".join(f"{k.name} = {_shown(self.value(k.value, scope))}" for k in c.kwargs)
        return f"{c.func}({kwargs})"

    def output_kind(self, step: str) -> str:
        spec = registry.get(self.steps[step].op)
        return spec.output.value if spec else Kind.ANY.value

    def check_kind(self, got: Kind, port: registry.Port, op: OpSpec, what: str, span: Span) -> None:
        if not port.kind.accepts(got):
            raise self.error(f"'{port.name}' of {op.name} needs {port.kind.article} {port.kind.value}, "
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
                    inputs[port.name] = self.refs(sub, port, f"{name}.{port.name}", scope, op)
                    break
                found = self.refs(arg, port, f"{name}.{port.name}", scope, op)
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
        param_names = {info.alias or f for f, info in op.params.model_fields.items()} | set(op.params.model_fields)
        for k in c.kwargs:
            port = op.port(k.name)
            if port is not None:
                found = self.refs(k.value, port, f"{name}.{port.name}", scope, op)
                inputs[port.name] = found if port.many else found[0]
            elif k.name in param_names:
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
            found = self.refs(on, port, f"{name}.on", scope, op)
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
                shown = info_alias(op, field_name)
                if err["type"] == "missing":
                    self.error(f"{op.name} needs the parameter '{shown}'", c.span,
                               help=f"add `{shown} = ...`")
                else:
                    got = raw.get(shown, raw.get(field_name))
                    msg = err["msg"].replace("Value error, ", "")
                    self.error(f"invalid '{shown}' for {op.name}: {msg} (not {_shown(got)})", span)
            raise _Abort() from None
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
    def declare(self, binding: _Binding) -> None:
        self.env[binding.name] = binding
        self.later.pop(binding.name, None)

    def decl(self, d: ast.Decl) -> None:
        previous = self.env.get(d.name)
        if previous is not None:
            raise self.error(f"'{d.name}' is declared twice", d.name_span,
                             labels=[(previous.span, "first declared here")], help="give one of them another name")
        allowed = DECL_KINDS[self.dialect].get(d.kind, ())
        statement = f"{d.kind} {d.name}"
        if d.kind == "axis":
            if d.on is not None or d.bindings or d.sweep_vars:
                raise self.error("an axis is a list of values: `axis size = [9, 19, 29]`", d.span)
            values = self.value(d.value, {})
            values = values if isinstance(values, list) else [values]
            self.declare(_Binding(d.name, d.name_span, "axis", values=values))
            return
        if not isinstance(d.value, ast.Call):
            if isinstance(d.value, (ast.Name, ast.Index)):  # an alias: `model best = ta[0.5]`
                port = registry.Port("value", Kind.ANY)
                steps = self.refs(d.value, port, d.name, {}, _ALIAS)
                target = self.steps[steps[0]]
                out = Kind(self.output_kind(steps[0]))
                self.check_decl_kind(d, out, allowed)
                self.declare(_Binding(d.name, d.name_span, "step", out=out, steps=[target.name]))
                return
            raise self.error(f"a {d.kind} is declared with an operator call, e.g. `{d.kind} {d.name} = op(...)`",
                             d.value.span)
        if bool(d.sweep_vars) != bool(d.bindings):
            raise self.error("a sweep names its variables on both sides: `merge ta[s] = f(scale = s) for s in ...`",
                             d.name_span)
        if d.bindings:
            names = [b.var for b in d.bindings]
            if sorted(names) != sorted(d.sweep_vars):
                raise self.error(f"the sweep variables [{', '.join(d.sweep_vars)}] and the `for` variables "
                                 f"({', '.join(names)}) differ", d.name_span)
            grids = []
            for b in d.bindings:
                vals = self.value(b.values, {})
                grids.append(vals if isinstance(vals, list) else [vals])
            members: dict[tuple[Any, ...], str] = {}
            order = [names.index(v) for v in d.sweep_vars]
            out = Kind.ANY
            for combo in itertools.product(*grids):
                scope = dict(zip(names, combo))
                key = tuple(combo[i] for i in order)
                member = f"{d.name}[{', '.join(format_value(v) for v in key)}]"
                step = self.call(d.value, member, scope, statement=statement, on=d.on, family=d.name,
                                 sweep={v: scope[v] for v in d.sweep_vars})
                members[key] = step
                out = Kind(self.output_kind(step))
            self.check_decl_kind(d, out, allowed)
            self.families[d.name] = list(members.values())
            self.declare(_Binding(d.name, d.name_span, "family", out=out, steps=list(members.values()),
                                  members=members))
            return
        step = self.call(d.value, d.name, {}, statement=statement, on=d.on)
        out = Kind(self.output_kind(step))
        self.check_decl_kind(d, out, allowed)
        self.declare(_Binding(d.name, d.name_span, "step", out=out, steps=[step], template=d))

    def check_decl_kind(self, d: ast.Decl, out: Kind, allowed: tuple[Kind, ...]) -> None:
        if out is not Kind.ANY and out not in allowed:
            fits = [k for k, kinds in DECL_KINDS[self.dialect].items() if out in kinds]
            raise self.error(f"'{d.kind} {d.name}' is declared as a {d.kind}, but its value is "
                             f"{out.article} {out.value}", d.kind_span,
                             help=f"declare it as `{fits[0]} {d.name} = ...`" if fits else None)

    def subjects(self, e: ast.Expr, want: Kind, keyword: str) -> list[str]:
        port = registry.Port("subjects", want, many=True)
        items = e.items if isinstance(e, ast.ListExpr) else [e]
        out: list[str] = []
        for item in items:
            out += self.refs(item, port, keyword, {}, _action_spec(keyword))
        return out

    def action(self, a: ast.Action) -> None:
        rule = ACTIONS[self.dialect][a.keyword]
        op = registry.get(rule.op)
        if op is None:
            raise self.error(f"'{a.keyword}' needs the operator '{rule.op}', which is not installed", a.span)
        raw: dict[str, tuple[Any, Span]] = {}
        axes: list[ast.Name] = []
        for clause in a.clauses:
            if isinstance(clause, ast.Along):
                if not rule.grid:
                    raise self.error(f"'{a.keyword}' has no `along` clause", clause.span)
                axes = clause.axes
                continue
            param = rule.clauses.get(clause.keyword)
            if param is None:
                raise self.error(f"'{a.keyword}' has no '{clause.keyword}' clause", clause.span,
                                 help=f"its clauses: {', '.join(sorted(rule.clauses)) or 'none'}")
            raw[param] = (self.value(clause.value, {}), clause.value.span)
        if a.on is None and rule.needs_on:
            raise self.error(f"'{a.keyword}' needs `on <data>`", a.span)
        models = self.subjects(a.subjects, Kind.MODEL, a.keyword)
        datasets: list[tuple[str | None, dict[str, tuple[Any, Span]], str]] = []
        grid_axes = [self.lookup(n) for n in axes]
        for n, b in zip(axes, grid_axes):
            if b.kind != "axis":
                raise self.error(f"'{n.id}' is not an axis; declare it with `axis {n.id} = [...]`", n.span)
        on_items = (a.on.items if isinstance(a.on, ast.ListExpr) else [a.on]) if a.on is not None else [None]
        for item in on_items:
            for combo in itertools.product(*[b.values for b in grid_axes]):
                over = {n.id: (v, n.span) for n, v in zip(axes, combo)}
                point = ", ".join(f"{n.id} = {format_value(v)}" for n, v in zip(axes, combo))
                if item is None:
                    datasets.append((None, over, point))
                else:
                    datasets.append((self.dataset(item, over), over, point))
        for model in models:
            for data, over, point in datasets:
                name = rule.step_name(self._subject_name(model), data, point)
                if name in self.steps and self.steps[name].inputs.get("model") != model:
                    name = rule.step_name(model, data, point)  # `dt` evaluated before and after training
                grid_point = {k: v for k, (v, _s) in over.items()} if point else None
                step_name = self.action_step(op, name, {"model": model, "on": data}, a, raw, grid_point)
                if rule.rebinds:
                    previous = self.env[self._subject_name(model)]
                    self.env[previous.name] = _Binding(previous.name, previous.span, "step", out=previous.out,
                                                       steps=[step_name])

    def _subject_name(self, step: str) -> str:
        for name, b in self.env.items():
            if b.steps == [step]:
                return name
        return step

    def dataset(self, e: ast.Expr, over: dict[str, tuple[Any, Span]]) -> str:
        """The data of an action's `on`, re-invoked with the axis values of one grid point."""
        if isinstance(e, ast.Name) and not over:
            b = self.lookup(e)
            if b.kind != "step":
                raise self.error(f"'{e.id}' is not one dataset", e.span)
            return b.steps[0]
        if isinstance(e, ast.Name):
            b = self.lookup(e)
            if b.template is None:
                raise self.error(f"'{e.id}' cannot vary along axes: it is not declared by a call", e.span)
            e = ast.Call(span=e.span, func=e.id, name_span=e.span)
        if not isinstance(e, ast.Call):
            raise self.error("expected data: a name or a call such as `mazes(count = 1000)`", e.span)
        text = format_expr(e)
        if over:
            extra = ", ".join(f"{k} = {format_value(v)}" for k, (v, _s) in over.items())
            text = text[:-1] + (", " if e.kwargs or e.args else "") + extra + ")"
        return self.call(e, text, {}, statement=f"data {text}", overrides=over)

    def action_step(self, op: OpSpec, name: str, inputs: dict[str, str | None], a: ast.Action,
                    raw: dict[str, tuple[Any, Span]], sweep: dict[str, Any] | None) -> str:
        """One step of an action statement; its clauses (``raw``) are the operator's parameters."""
        params = {k: v for k, (v, _s) in raw.items()}
        spans = {k: s for k, (_v, s) in raw.items()}
        statement_call = ast.Call(span=a.span, func=op.name, name_span=a.span)
        validated = self.validate(op, params, spans, statement_call)
        ins: dict[str, str | list[str]] = {k: v for k, v in inputs.items() if v is not None}
        for port in op.inputs:
            if port.name in ins:
                self.check_kind(Kind(self.output_kind(str(ins[port.name]))), port, op, str(ins[port.name]), a.span)
        return self.add_step(Step(name=name, op=op.name, params=validated, inputs=ins, span=a.span,
                                  statement=a.keyword, sweep=sweep))

    def export(self, s: ast.Export) -> None:
        path = Path(s.path)
        if not self.allow_outside and (path.is_absolute() or ".." in path.parts):
            raise self.error(f"export path {s.path!r} leaves the output directory", s.path_span,
                             help="use a relative path, or pass --allow-outside-out")
        op = registry.get("export")
        assert op is not None
        steps = self.subjects(s.target, Kind.MODEL, "export")
        fmt = s.format or ("safetensors" if s.path.endswith(".safetensors") else "hf")
        for step in steps:
            target = s.path if len(steps) == 1 else str(path.with_name(f"{path.stem}-{step}{path.suffix}"))
            statement_call = ast.Call(span=s.span, func="export", name_span=s.span)
            params = self.validate(op, {"path": target, "format": fmt}, {"format": s.span}, statement_call)
            self.add_step(Step(name=f"export {step} to {target}", op="export", params=params,
                               inputs={"model": step}, span=s.span, statement="export"))

    # --- program ---------------------------------------------------------------------------------
    def include(self, use: ast.Use, seen: set[str]) -> None:
        path = (Path(use.span.file).parent / use.path).resolve()
        if str(path) in seen:
            raise self.error(f"'{use.path}' is already included (a `use` cycle)", use.span)
        if path.suffix != Path(self.program.file).suffix:
            raise self.error(f"a .{self.dialect} spec can only use .{self.dialect} files", use.span)
        try:
            other = parse_file(path)
        except SpecError as exc:
            if exc.diagnostics and exc.diagnostics[0].span is None:
                raise self.error(f"cannot use '{use.path}': no such file ({path})", use.span) from None
            self.diags += exc.diagnostics
            self.sources.update(exc.sources)
            raise _Abort() from None
        self.sources[other.file] = other.source
        for stmt in other.statements:
            if isinstance(stmt, ast.Use):
                self.include(stmt, seen | {str(path)})
            elif isinstance(stmt, ast.Decl):
                self.guard(self.decl, stmt)

    def guard(self, fn: Any, stmt: Any) -> bool:
        try:
            fn(stmt)
        except _Abort:
            return False
        return True

    def run(self) -> Lowered:
        options = StudyOptions()
        study_name = Path(self.program.file).stem
        report_name = "report.html"
        studies = [s for s in self.program.statements if isinstance(s, ast.Study)]
        for extra in studies[1:]:
            self.error("a spec has one `study` statement", extra.span, labels=[(studies[0].span, "the first one")])
        if studies:
            study_name = studies[0].name
            options = self.study_options(studies[0])
        for s in self.program.statements:
            if isinstance(s, ast.Decl):
                self.later.setdefault(s.name, s.name_span)
        for s in self.program.statements:
            if isinstance(s, ast.Use):
                self.guard(lambda u: self.include(u, {str(Path(self.program.file).resolve())}), s)
            elif isinstance(s, ast.Decl):
                if not self.guard(self.decl, s):
                    self.failed.add(s.name)
            elif isinstance(s, ast.Action):
                self.guard(self.action, s)
            elif isinstance(s, ast.Export):
                self.guard(self.export, s)
            elif isinstance(s, ast.Report):
                report_name = self.report_name(s) or report_name
        if self.diags:
            raise SpecError(self.diags, self.sources)
        info = StudyInfo(name=study_name, seed=options.seed, device=options.device, dialect=self.dialect,
                         spec_file=self.program.file, spec_text=self.program.source,
                         question=self.program.question, report_name=report_name)
        return Lowered(study=info, steps=self.steps, families=self.families, sources=self.sources)

    def report_name(self, s: ast.Report) -> str | None:
        path = Path(s.path)
        if path.suffix != ".html":
            self.error(f"a report is an .html file (not {s.path!r})", s.span)
            return None
        if not self.allow_outside and (path.is_absolute() or ".." in path.parts):
            self.error(f"report path {s.path!r} leaves the output directory", s.span,
                       help="use a relative path, or pass --allow-outside-out")
            return None
        return s.path

    def study_options(self, s: ast.Study) -> StudyOptions:
        raw: dict[str, Any] = {}
        for k in s.options:
            if k.name not in StudyOptions.model_fields:
                self.error(f"unknown study option '{k.name}'", k.name_span,
                           help=did_you_mean(k.name, StudyOptions.model_fields))
                continue
            try:
                raw[k.name] = self.value(k.value, {})
            except _Abort:
                continue
        try:
            return StudyOptions.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = str(err["loc"][0])
                span = next((k.value.span for k in s.options if k.name == loc), s.span)
                self.error(f"invalid study option '{loc}': {err['msg']} (not {_shown(raw.get(loc))})", span)
            return StudyOptions()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return bool(a == b)


def info_alias(op: OpSpec, field_name: str) -> str:
    info = op.params.model_fields.get(field_name)
    return (info.alias or field_name) if info else field_name


_ALIAS = OpSpec(name="alias", doc="", inputs=(registry.Port("value", Kind.ANY),), output=Kind.ANY, impl="")


def _action_spec(keyword: str) -> OpSpec:
    return OpSpec(name=keyword, doc="", inputs=(registry.Port("subjects", Kind.MODEL, many=True),),
                  output=Kind.ANY, impl="")


def lower(program: ast.Program, *, allow_outside: bool = False) -> Lowered:
    """Check ``program`` and lower it to steps; raises SpecError with every problem found."""
    return _Lowerer(program, allow_outside=allow_outside).run()
