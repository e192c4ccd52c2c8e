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

from .. import registry
from ..errors import Diagnostic, Span, SpecError, did_you_mean
from ..plan.steps import RESERVED_OUTPUTS, Lowered, Step, StudyInfo, path_component
from ..registry import Kind, OpSpec
from ..syntax import ast
from ..syntax.parser import parse_file
from .dialects import ACTIONS, DECL_KINDS, StudyOptions
from .resolve import Abort, Binding, Resolver, format_value, shown

__all__ = ["lower", "format_value", "MAX_STEPS"]


#: Steps a study may plan unless the user raises the limit (`--max-steps`): checked before any
#: sweep or grid is expanded, so a spec cannot make `check` itself run out of memory.
MAX_STEPS = 10_000


class _Lowerer(Resolver):
    def __init__(self, program: ast.Program, *, allow_outside: bool, max_steps: int = MAX_STEPS):
        super().__init__(program, allow_outside=allow_outside)
        self.max_steps = max_steps
        self.planned = 0  # steps planned by the expansions so far
        self.exports: list[tuple[Path, Span]] = []
        # `use` reads files from here and below only (symlinks resolved), unless the user allows more.
        self.spec_folder = Path(program.file).resolve().parent

    def declare(self, binding: Binding) -> None:
        self.env[binding.name] = binding
        self.later.pop(binding.name, None)
        if len(binding.steps) == 1:
            self.names_of.setdefault(binding.steps[0], []).append(binding.name)

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
            self.plan_expansion([len(g) for g in grids], d.span, f"the sweep '{d.name}'")
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

    def plan_expansion(self, factors: list[int], span: Span, what: str) -> None:
        """Count the steps an expansion will make — a product, before any of them is made — and
        refuse it past the study's limit."""
        count = 1
        for n in factors:
            count *= n
        self.planned += count
        if self.planned > self.max_steps:
            raise self.error(f"{what} plans {count:,} steps ({' × '.join(f'{n:,}' for n in factors)}); a study "
                             f"may plan at most {self.max_steps:,}", span,
                             help="make the sweep smaller, or pass --max-steps to raise the limit")

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
        grid_axes = [self.axis(n) for n in axes]
        on_items = (a.on.items if isinstance(a.on, ast.ListExpr) else [a.on]) if a.on is not None else [None]
        self.plan_expansion([len(models), len(on_items), *[len(b.values) for b in grid_axes]], a.span,
                            f"this '{a.keyword}'")
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
                    self.declare(Binding(previous.name, previous.span, "step", out=previous.out, steps=[step_name]))

    def axis(self, n: ast.Name) -> Binding:
        """An axis named in `along`; an undeclared one gets the declaration to add."""
        if n.id not in self.env and n.id not in self.later and n.id not in self.failed:
            axes = [k for k, b in self.env.items() if b.kind == "axis"]
            raise self.error(f"unknown axis '{n.id}'", n.span,
                             help=did_you_mean(n.id, axes) or f"declare it above this statement: `axis {n.id} = [...]`")
        b = self.lookup(n)
        if b.kind != "axis":
            raise self.error(f"'{n.id}' is not an axis; declare it with `axis {n.id} = [...]`", n.span)
        return b

    def _subject_name(self, step: str) -> str:
        """The name a step is known by in the spec (a lookup, so checking stays linear)."""
        for name in self.names_of.get(step, ()):
            if self.env[name].steps == [step]:
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
        if not self.output_path(s.path, s.path_span, "export"):
            raise Abort()
        self.exports.append((path, s.path_span))
        op = registry.get("export")
        assert op is not None
        steps = self.subjects(s.target, Kind.MODEL, "export")
        fmt = s.format or ("safetensors" if s.path.endswith(".safetensors") else "hf")
        for step in steps:
            target = s.path if len(steps) == 1 else \
                str(path.with_name(f"{path.stem}-{path_component(step)}{path.suffix}"))
            statement_call = ast.Call(span=s.span, func="export", name_span=s.span)
            params = self.validate(op, {"path": target, "format": fmt}, {"format": s.span}, statement_call)
            self.add_step(Step(name=f"export {step} to {target}", op="export", params=params,
                               inputs={"model": step}, span=s.span, statement="export"))

    def output_path(self, text: str, span: Span, what: str) -> bool:
        """Whether a path the spec writes stays inside the output folder and leaves the run's own
        files (results.json, provenance.json, figures/) alone; reports the problem if not."""
        path = Path(text)
        if path.is_absolute() or ".." in path.parts:
            if self.allow_outside:
                return True
            self.error(f"{what} path {text!r} leaves the output directory", span,
                       help="use a relative path, or pass --allow-outside-out")
            return False
        parts = [p for p in path.parts if p != "."]
        if not parts:
            self.error(f"{what} path {text!r} names the output directory itself", span,
                       help="name a file inside it, e.g. \"model.safetensors\"")
            return False
        if parts[0] in RESERVED_OUTPUTS:
            self.error(f"{what} path {text!r} would overwrite the run's own {parts[0]}", span,
                       help=f"the run writes {', '.join(RESERVED_OUTPUTS)} itself; choose another name")
            return False
        return True

    def check_collisions(self, report: str) -> None:
        """No export may overwrite the report or the figures beside it."""
        report_path = Path(report)
        figures = report_path.parent / "figures"
        for path, span in self.exports:
            if path == report_path or path == figures or figures in path.parents:
                what = "file" if path == report_path else "figures"
                self.error(f"export path '{path}' would overwrite the report's {what}", span,
                           help="choose another name")

    # --- program ---------------------------------------------------------------------------------
    def include(self, use: ast.Use, seen: set[str]) -> None:
        path = (Path(use.span.file).parent / use.path).resolve()
        if not self.allow_outside and not path.is_relative_to(self.spec_folder):
            raise self.error(f"'{use.path}' is outside the spec's folder ({self.spec_folder})", use.span,
                             help="copy it next to the spec, or pass --allow-outside to include it")
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
            if isinstance(stmt, ast.Use) and stmt.python:
                self.error("`use python` belongs in the spec being run, not in an included file "
                           "(so that --allow-python is asked for the code it names)", stmt.span)
            elif isinstance(stmt, ast.Use):
                self.include(stmt, seen | {str(path)})
            elif isinstance(stmt, ast.Decl) and not self.guard(self.decl, stmt):
                self.failed.add(stmt.name)

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
            if isinstance(s, ast.Use) and not s.python:  # python files are loaded first, by lower()
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
        self.check_collisions(report_name)
        if not self.steps and not self.diags:
            first = self.program.statements[0].span if self.program.statements else None
            self.error("the spec has nothing to run: it declares no data, models or analyses",
                       first or Span(self.program.file, 1, 1, 1, 1),
                       help=f"`mlspec init {self.dialect} NAME` writes a small commented spec to start from")
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
        return s.path if self.output_path(s.path, s.span, "report") else None

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


def lower(program: ast.Program, *, allow_outside: bool = False, allow_python: bool = False,
          max_steps: int = MAX_STEPS) -> Lowered:
    """Check ``program`` and lower it to steps; raises SpecError with every problem found.

    A ``use python`` file is imported (its operators registered) only with ``allow_python``;
    without it the spec is refused before any of its code runs."""
    python = _python_files(program, allow_python)
    lowered = _Lowerer(program, allow_outside=allow_outside, max_steps=max_steps).run()
    lowered.study.python = python
    return lowered


def _python_files(program: ast.Program, allowed: bool) -> list[str]:
    uses = [s for s in program.statements if isinstance(s, ast.Use) and s.python]
    sources = {program.file: program.source}
    if uses and not allowed:
        raise SpecError([Diagnostic(
            f"this spec runs Python code from '{uses[0].path}'; refusing to run it without --allow-python",
            uses[0].span, help="read the file first; pass --allow-python to mlspec check / run to allow it")],
            sources)
    files: list[str] = []
    diags: list[Diagnostic] = []
    owner: dict[str, str] = {}
    for use in uses:
        path = (Path(use.span.file).parent / use.path).resolve()
        if path.suffix != ".py" or not path.is_file():
            why = "is not a .py file" if path.suffix != ".py" else "does not exist"
            diags.append(Diagnostic(f"cannot use python '{use.path}': it {why} ({path})", use.span))
            continue
        try:
            names = registry.load_python(str(path))
        except (registry.PluginError, ValueError, TypeError) as exc:
            diags.append(Diagnostic(f"'{use.path}' did not load: {exc}", use.span))
            continue
        for name in names:
            if name in owner:
                diags.append(Diagnostic(f"'{use.path}' declares '{name}' again (also in '{owner[name]}')",
                                        use.span))
            owner[name] = use.path
        files.append(str(path))
    if diags:
        raise SpecError(diags, sources)
    return files
