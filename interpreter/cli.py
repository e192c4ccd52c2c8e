"""The ``mlspec`` command: run, check, graph, fmt, ops, report, compare, import.

Spec errors print as diagnostics (file:line:col, the line, a caret) with exit code 2; a failing
step exits 1 after writing everything that did finish. No Python traceback for any spec input.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click

from mlspec.errors import MlspecError, SpecError

EXIT_SPEC = 2
EXIT_FAILED = 1


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            click.echo(exc.render(), err=True)
            n = len(exc.diagnostics)
            click.echo(f"\n{n} error{'s' if n != 1 else ''} in the spec; nothing was run.", err=True)
            sys.exit(EXIT_SPEC)
        except MlspecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:  # a full disk, a read-only output directory …: say which file
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def _load(spec: str, allow_outside: bool = False, max_steps: int | None = None) -> Any:
    from mlspec.study import load

    return load(spec, allow_outside=allow_outside, **({"max_steps": max_steps} if max_steps else {}))


_MAX_STEPS = click.option("--max-steps", type=click.IntRange(1), metavar="N",
                          help="plan up to N steps [default: 10,000]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlspec")
def main() -> None:
    """mlspec — declarative studies of how neural networks learn and combine."""


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--allow-outside-out", "--allow-outside", "allow_outside", is_flag=True,
              help="accept paths outside the output folder, and `use` outside the spec's folder")
@_MAX_STEPS
@_fail_cleanly
def check(spec: str, allow_outside: bool, max_steps: int | None) -> None:
    """Validate SPEC without running anything."""
    plan = _load(spec, allow_outside, max_steps).check()
    click.echo(f"{spec}: ok — {len(plan.graph)} steps")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid"]), default="text")
@_fail_cleanly
def graph(spec: str, fmt: str) -> None:
    """Print the execution graph of SPEC (text, Graphviz dot or Mermaid)."""
    plan = _load(spec).check()
    click.echo({"text": plan.to_text, "dot": plan.to_dot, "mermaid": plan.to_mermaid}[fmt](), nl=False)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--write", "-w", is_flag=True, help="rewrite the file in place")
@_fail_cleanly
def fmt(spec: str, write: bool) -> None:
    """Print SPEC in canonical form."""
    from mlspec.syntax.fmt import format_program
    from mlspec.syntax.parser import parse_file

    text = format_program(parse_file(spec))
    if write:
        Path(spec).write_text(text)
    else:
        click.echo(text, nl=False)


@contextmanager
def _progress_bars(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), transient=True) as bars:

        @contextmanager
        def bar(total: int, description: str) -> Iterator[Callable[..., None]]:
            task = bars.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                info = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
                bars.update(task, advance=n, info=info)

            try:
                yield advance
            finally:
                bars.remove_task(task)

        yield bar


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="list each step as cached or to run, and why")
@click.option("--force", is_flag=True, help="re-run every step, ignoring the cache")
@click.option("--jobs", "-j", default=1, show_default=True, type=click.IntRange(1, 256),
              help="run up to N independent steps at once (worker processes)")
@click.option("--out", type=click.Path(file_okay=False), help="output directory [default: out/<study>]")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="MLSPEC_CACHE_DIR",
              help="artifact cache [default: .mlspec/cache, or $MLSPEC_CACHE_DIR]")
@click.option("--device", help="override the study's device (cpu, cuda, cuda:N)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local processes, or Ray tasks (RAY_ADDRESS joins a cluster)")
@click.option("--allow-outside-out", "--allow-outside", "allow_outside", is_flag=True,
              help="let exports and reports write, and `use` read, outside their folders")
@click.option("--no-progress", is_flag=True, help="no progress bars")
@_MAX_STEPS
@_fail_cleanly
def run(spec: str, dry_run: bool, force: bool, jobs: int, out: str | None, cache_dir: str | None,
        device: str | None, executor: str, allow_outside: bool, no_progress: bool, max_steps: int | None) -> None:
    """Run SPEC: every step not already in the cache, then results.json and the report."""
    from mlspec.run.cache import Cache, default_cache_dir
    from mlspec.run.executor import explain

    study = _load(spec, allow_outside, max_steps)
    plan = study.check()
    if dry_run:
        rows = explain(plan, Cache(cache_dir or default_cache_dir()), Path(out) if out else study.default_out_dir(),
                       force=force)
        width = max(len(s.name) for s, _, _ in rows) if rows else 0
        for step, state, reason in rows:
            click.echo(f"{state:<7} {step.name:<{width}}  [{step.op}]" + (f"  {reason}" if reason else ""))
        todo = sum(1 for _, state, _ in rows if state == "run")
        click.echo(f"\n{todo} to run, {len(rows) - todo} cached")
        return
    command = "mlspec " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with _progress_bars(not no_progress and sys.stderr.isatty()) as bars:
        results = study.run(out=out, jobs=jobs, force=force, cache_dir=cache_dir, progress=bars,
                            command=command, device=device, executor=executor)
    states = [o.state for o in results.outcomes.values()]
    click.echo(f"{states.count('ran')} ran, {states.count('cached')} cached"
               + (f", {len(results.failures())} failed or skipped" if results.failures() else ""))
    click.echo(f"results: {results.out_dir / 'results.json'}")
    if results.report is not None:
        click.echo(f"report:  {results.report}")
    if results.failures():
        for name, error in results.failures().items():
            step = plan.step(name)
            click.echo(f"error: step '{name}' ({step.span}) failed: {error}", err=True)
        sys.exit(EXIT_FAILED)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="output directory [default: out/<study>]")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="MLSPEC_CACHE_DIR")
@_fail_cleanly
def report(spec: str, out: str | None, cache_dir: str | None) -> None:
    """Re-render SPEC's report from the cache without computing anything."""
    from mlspec.run.cache import Cache, default_cache_dir
    from mlspec.study import collect, render

    study = _load(spec)
    plan = study.check()
    out_dir = Path(out) if out else study.default_out_dir()
    results = collect(plan, Cache(cache_dir or default_cache_dir()), out_dir)
    missing = [s.name for s in plan.steps if s.name not in results.results]
    prov_path = out_dir / "provenance.json"
    provenance = json.loads(prov_path.read_text()) if prov_path.exists() else {"command": "mlspec report"}
    provenance.pop("steps", None)
    path = render(plan, results, provenance, out_dir)
    click.echo(f"report: {path}" + (f" ({len(missing)} steps not in the cache yet)" if missing else ""))


@main.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@_fail_cleanly
def compare(a: str, b: str) -> None:
    """Put two runs' results.json side by side."""
    from mlspec.report import compare as compare_results

    try:
        left, right = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    except json.JSONDecodeError as exc:
        raise MlspecError(f"not a results.json file: {exc}") from None
    click.echo(compare_results(left, right))


@main.group(name="cache")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="MLSPEC_CACHE_DIR",
              help="artifact cache [default: .mlspec/cache, or $MLSPEC_CACHE_DIR]")
@click.pass_context
def cache_(ctx: click.Context, cache_dir: str | None) -> None:
    """Check, measure and prune the artifact cache by hand."""
    from mlspec.run.cache import Cache, default_cache_dir

    ctx.obj = Cache(cache_dir or default_cache_dir(), notify=lambda line: click.echo(line, err=True))


@cache_.command()
@click.pass_obj
@_fail_cleanly
def verify(cache: Any) -> None:
    """Check every entry against its recorded sha256; discard the damaged ones (exit 1 if any)."""
    total = sum(1 for _ in cache.keys())
    bad = cache.verify_all()
    click.echo(f"{total - len(bad)} of {total} entries intact" + (f", {len(bad)} discarded" if bad else ""))
    if bad:
        sys.exit(EXIT_FAILED)


@cache_.command()
@click.pass_obj
def size(cache: Any) -> None:
    """Entries and bytes in the cache."""
    entries, total = cache.size()
    click.echo(f"{entries} entries, {total / 2**20:.1f} MiB in {cache.root}")


@cache_.command()
@click.option("--dry-run", is_flag=True, help="list what would be removed")
@click.pass_obj
@_fail_cleanly
def gc(cache: Any, dry_run: bool) -> None:
    """Remove leftovers of interrupted runs and entries no study's last run used."""
    import shutil

    garbage = cache.garbage()
    for path in garbage:
        if dry_run:
            click.echo(str(path))
        else:
            shutil.rmtree(path, ignore_errors=True)
    click.echo(f"{'would remove' if dry_run else 'removed'} {len(garbage)} entries or leftovers")


@main.command()
@click.argument("name", required=False)
@click.option("--dialect", type=click.Choice(["merge", "extrap"]))
def ops(name: str | None, dialect: str | None) -> None:
    """List the operators, or show one operator's parameters and documentation."""
    from mlspec import registry
    from mlspec.errors import did_you_mean

    if name is None:
        for spec in registry.all_ops(dialect):
            dialects = "/".join(sorted(spec.dialects))
            click.echo(f"{spec.name:<20} {spec.output.value:<12} {dialects:<13} {spec.summary}")
        return
    spec = registry.get(name)
    if spec is None:
        hint = did_you_mean(name, registry.names())
        click.echo(f"error: unknown operator '{name}'" + (f"; {hint}" if hint else ""), err=True)
        sys.exit(EXIT_SPEC)
    click.echo(_describe_op(spec))


def _describe_op(spec: Any) -> str:
    import inspect

    lines = [f"{spec.name}  ->  {spec.output.value}   (version {spec.version}; dialects: "
             f"{', '.join(sorted(spec.dialects))})", "", inspect.cleandoc(spec.doc), ""]
    if spec.inputs:
        lines.append("inputs:")
        for p in spec.inputs:
            many = f"list of {p.kind.value}" if p.many else p.kind.value
            lines.append(f"  {p.name:<16} {many}" + ("" if p.required else " (optional)") + (f"  {p.doc}" if p.doc else ""))
    fields = spec.params.model_fields
    if fields:
        lines.append("parameters:")
        for fname, info in fields.items():
            shown = info.alias or fname
            default = "required" if info.is_required() else f"default {json.dumps(info.get_default(call_default_factory=True))}"
            ann = getattr(info.annotation, "__name__", None) or str(info.annotation).replace("typing.", "")
            lines.append(f"  {shown:<16} {ann:<24} {default}" + (f"  — {info.description}" if info.description else ""))
    return "\n".join(lines)


@main.group(name="import")
def import_() -> None:
    """Convert other tools' configurations into specs."""


@import_.command(name="mergekit")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@_fail_cleanly
def import_mergekit(config: str) -> None:
    """Print a .merge spec equivalent to a mergekit YAML CONFIG."""
    try:
        from mlspec.checkpoints.mergekit import mergekit_to_spec
    except ModuleNotFoundError:
        raise MlspecError("mergekit import needs mlspec.checkpoints") from None
    click.echo(mergekit_to_spec(Path(config).read_text()), nl=False)
