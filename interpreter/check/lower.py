"""Check a parsed spec and lower its statements to named steps.

Declarations (with sweeps), action statements (``evaluate``, ``train``, ``dynamics`` …), exports,
``use`` includes and the study's options; expressions and calls are resolved by
:class:`~mlspec.check.resolve.Resolver`. Every problem is reported at once, pointing at the spec.
Nothing here imports torch.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlspec import registry
from mlspec.check.dialects import ACTIONS, DECL_KINDS, StudyOptions
from mlspec.check.resolve import Abort, Binding, Resolver, format_value, shown
from mlspec.errors import Span, SpecError, did_you_mean
from mlspec.plan.steps import Lowered, Step, StudyInfo
from mlspec.registry import Kind, OpSpec
from mlspec.syntax import ast
from mlspec.syntax.parser import parse_file

__all__ = ["lower", "format_value"]


class _Lowerer(Resolver):
    def declare(self, binding: Binding) -> None:
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
            self.declare(Binding(d.name, d.name_span, "axis", values=values))
            return
        if not isinstance(d.value, ast.Call):
            if isinstance(d.value, (ast.Name, ast.Index)):  # an alias: `model best = ta[0.5]`
                port = registry.Port("value", Kind.ANY)
                steps = self.refs(d.value, port, d.name, {}, f"the alias '{d.name}'")
                target = self.steps[steps[0]]
                out = Kind(self.output_kind(steps[0]))
                self.check_decl_kind(d, out, allowed)
                self.declare(Binding(d.name, d.name_span, "step", out=out, steps=[target.name]))
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
            self.declare(Binding(d.name, d.name_span, "family", out=out, steps=list(members.values()),
                                  members=members))
            return
        step = self.call(d.value, d.name, {}, statement=statement, on=d.on)
        out = Kind(self.output_kind(step))
        self.check_decl_kind(d, out, allowed)
        self.declare(Binding(d.name, d.name_span, "step", out=out, steps=[step], template=d))

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
            out += self.refs(item, port, keyword, {}, keyword)
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
            if isinstance(item, ast.Index) or (isinstance(item, ast.Name) and not axes
                                               and self.lookup(item).kind == "family"):
                if axes:
                    raise self.error("members of a sweep cannot also vary along axes", item.span)
                datasets += [(step, {}, "") for step in self.subjects(item, Kind.DATASET, f"'on' of {a.keyword}")]
                continue
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
                    self.env[previous.name] = Binding(previous.name, previous.span, "step", out=previous.out,
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
        text = self.call_text(e, {}, over)
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
                self.check_kind(Kind(self.output_kind(str(ins[port.name]))), port, f"'{port.name}' of {op.name}",
                                str(ins[port.name]), a.span)
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
            raise Abort() from None
        self.sources[other.file] = other.source
        for stmt in other.statements:
            if isinstance(stmt, ast.Use):
                self.include(stmt, seen | {str(path)})
            elif isinstance(stmt, ast.Decl):
                self.guard(self.decl, stmt)

    def guard(self, fn: Any, stmt: Any) -> bool:
        try:
            fn(stmt)
        except Abort:
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
            except Abort:
                continue
        try:
            return StudyOptions.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc = str(err["loc"][0])
                span = next((k.value.span for k in s.options if k.name == loc), s.span)
                self.error(f"invalid study option '{loc}': {err['msg']} (not {shown(raw.get(loc))})", span)
            return StudyOptions()


def lower(program: ast.Program, *, allow_outside: bool = False) -> Lowered:
    """Check ``program`` and lower it to steps; raises SpecError with every problem found."""
    return _Lowerer(program, allow_outside=allow_outside).run()
