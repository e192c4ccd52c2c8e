"""The ``mlspec`` command: run, check, graph, fmt, ops, report, compare, import, init, lsp.

Spec errors print as diagnostics (file:line:col, the line, a caret) with exit code 2; a failing
step exits 1 after writing everything that did finish. No Python traceback for any spec input.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

import click

from .errors import MlspecError, SpecError

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
            where = " in the spec" if any(d.span is not None for d in exc.diagnostics) else ""
            click.echo(f"\n{n} error{'s' if n != 1 else ''}{where}; nothing was run.", err=True)
            sys.exit(EXIT_SPEC)
        except MlspecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except OSError as exc:  # a full disk, a read-only output directory …: say which file
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper


def _load(spec: str, allow_outside: bool = False, allow_python: bool = False, max_steps: int | None = None) -> Any:
    """The study of SPEC, checked and planned (a SpecError otherwise).

    The cyclic garbage collector is paused meanwhile: parsing and checking allocate tens of thousands
    of small objects and no garbage worth collecting, and one full collection over everything click,
    pydantic and the catalogues loaded cost a 1,000-line check about 50 ms, a sixth of it. A run's
    steps collect as usual."""
    import gc

    paused = gc.isenabled()
    gc.disable()
    try:
        from .study import load

        study = load(spec, allow_outside=allow_outside, allow_python=allow_python,
                     **({"max_steps": max_steps} if max_steps else {}))
        study.check()
        return study
    finally:
        if paused:
            gc.enable()


_allow_python = click.option(
    "--allow-python", is_flag=True,
    help="run the Python files the spec names with `use python` (their code runs as you)")
_MAX_STEPS = click.option("--max-steps", type=click.IntRange(1), metavar="N",
                          help="plan up to N steps [default: 10,000]")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlspec")
def main() -> None:
    """mlspec — declarative studies of how neural networks learn and combine."""


#: Set by a command that leaves nothing to clean up (no file half written, no thread, no pool): the
#: program then ends without Python's interpreter teardown, which took 50-70 ms after `mlspec check`
#: of a 1,000-line spec, a fifth of the whole command.
_QUICK_EXIT = False


def _quick_exit_after() -> None:
    global _QUICK_EXIT
    _QUICK_EXIT = True


def entry() -> None:
    """The ``mlspec`` program (and ``python -m mlspec``): :func:`main`, ending at once after a
    command that allows it. Tests call :func:`main` itself, which never ends the process."""
    try:
        main()
    except SystemExit as exc:
        if not _QUICK_EXIT or not (exc.code is None or isinstance(exc.code, int)):
            raise
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            raise exc from None
        os._exit(exc.code or 0)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--allow-outside-out", "--allow-outside", "allow_outside", is_flag=True,
              help="accept paths outside the output folder, and `use` outside the spec's folder")
@_MAX_STEPS
@_allow_python
@_fail_cleanly
def check(spec: str, allow_outside: bool, max_steps: int | None, allow_python: bool) -> None:
    """Validate SPEC without running anything."""
    _quick_exit_after()
    plan = _load(spec, allow_outside, allow_python, max_steps).plan
    click.echo(f"{spec}: ok — {len(plan)} steps")


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "dot", "mermaid"]), default="text")
@_allow_python
@_fail_cleanly
def graph(spec: str, fmt: str, allow_python: bool) -> None:
    """Print the execution graph of SPEC (text, Graphviz dot or Mermaid)."""
    _quick_exit_after()
    plan = _load(spec, allow_python=allow_python).plan
    click.echo({"text": plan.to_text, "dot": plan.to_dot, "mermaid": plan.to_mermaid}[fmt](), nl=False)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--write", "-w", is_flag=True, help="rewrite the file in place")
@_fail_cleanly
def fmt(spec: str, write: bool) -> None:
    """Print SPEC in canonical form."""
    from .syntax.fmt import format_program
    from .syntax.parser import parse_file

    text = format_program(parse_file(spec))
    if write:
        Path(spec).write_text(text)
    else:
        click.echo(text, nl=False)


@contextmanager
def _progress_bars() -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .run.progress import describe_fields

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), transient=True) as bars:

        @contextmanager
        def bar(total: int, description: str) -> Iterator[Callable[..., None]]:
            task = bars.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: Any) -> None:
                if "started" in fields or "finished" in fields:  # the runner's step events: name the step
                    info = str(fields.get("started") or fields.get("finished"))
                else:
                    info = describe_fields(fields)
                bars.update(task, advance=n, info=info)

            try:
                yield advance
            finally:
                bars.remove_task(task)

        yield bar


@contextmanager
def _progress(silent: bool) -> Iterator[Any]:
    """Bars on a terminal; plain lines (one per step, and periodic ones inside long steps) in a log."""
    if silent:
        yield None
    elif sys.stderr.isatty():
        with _progress_bars() as bars:
            yield bars
    else:
        from .run.progress import plain_progress

        yield plain_progress(sys.stderr)


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
@click.option("--no-progress", is_flag=True, help="no progress bars or progress lines")
@click.option("--quiet", "-q", is_flag=True, help="print nothing but errors")
@_MAX_STEPS
@_allow_python
@_fail_cleanly
def run(spec: str, dry_run: bool, force: bool, jobs: int, out: str | None, cache_dir: str | None,
        device: str | None, executor: str, allow_outside: bool, no_progress: bool, quiet: bool,
        max_steps: int | None, allow_python: bool) -> None:
    """Run SPEC: every step not already in the cache, then results.json and the report."""
    from .run.cache import Cache, default_cache_dir
    from .run.executor import explain

    study = _load(spec, allow_outside, allow_python, max_steps)
    plan = study.plan
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
    with _progress(quiet or no_progress) as progress:
        results = study.run(out=out, jobs=jobs, force=force, cache_dir=cache_dir, progress=progress,
                            command=command, device=device, executor=executor)
    states = [o.state for o in results.outcomes.values()]
    if not quiet:
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
@_allow_python
@_fail_cleanly
def report(spec: str, out: str | None, cache_dir: str | None, allow_python: bool) -> None:
    """Re-render SPEC's report from the cache without computing anything."""
    from .run.cache import Cache, default_cache_dir
    from .study import collect, read_provenance, render

    study = _load(spec, allow_python=allow_python)
    plan = study.plan
    out_dir = Path(out) if out else study.default_out_dir()
    results = collect(plan, Cache(cache_dir or default_cache_dir()), out_dir)
    missing = [s.name for s in plan.steps if s.name not in results.results]
    provenance = read_provenance(out_dir) or {"command": "mlspec report"}
    provenance.pop("steps", None)
    path = render(plan, results, provenance, out_dir)
    click.echo(f"report: {path}" + (f" ({len(missing)} steps not in the cache yet)" if missing else ""))


@main.command()
@click.argument("a", type=click.Path(exists=True, dir_okay=False))
@click.argument("b", type=click.Path(exists=True, dir_okay=False))
@click.option("--rtol", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="relative tolerance: numbers differ when |B − A| > atol + rtol·|A|")
@click.option("--atol", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="absolute tolerance")
@click.option("--all", "show_all", is_flag=True, help="list every value, not only those that differ")
@_fail_cleanly
def compare(a: str, b: str, rtol: float, atol: float, show_all: bool) -> None:
    """Put two runs' results.json side by side; exit 1 when any value differs beyond the tolerance."""
    from .report.compare import compare as compare_results
    from .report.compare import rows

    try:
        left, right = json.loads(Path(a).read_text()), json.loads(Path(b).read_text())
    except json.JSONDecodeError as exc:
        raise MlspecError(f"not a results.json file: {exc}") from None
    found = rows(left, right, rtol=rtol, atol=atol)
    click.echo(compare_results(left, right, rtol=rtol, atol=atol, show_all=show_all, found=found))
    if any(r.differs for r in found):
        sys.exit(EXIT_FAILED)


@main.group(name="cache")
@click.option("--cache-dir", type=click.Path(file_okay=False), envvar="MLSPEC_CACHE_DIR",
              help="artifact cache [default: .mlspec/cache, or $MLSPEC_CACHE_DIR]")
@click.pass_context
def cache_(ctx: click.Context, cache_dir: str | None) -> None:
    """Check, measure and prune the artifact cache by hand."""
    from .run.cache import Cache, default_cache_dir

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
@_fail_cleanly
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
@click.option("--python", "python_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="also list the operators a Python file declares (imports it: its code runs)")
@_fail_cleanly
def ops(name: str | None, dialect: str | None, python_files: tuple[str, ...]) -> None:
    """List the operators, or show one operator's parameters and documentation."""
    from . import registry
    from .errors import did_you_mean

    for file in python_files:
        try:
            registry.load_python(file)
        except (registry.PluginError, ValueError, TypeError) as exc:
            click.echo(f"error: {file} did not load: {exc}", err=True)
            sys.exit(EXIT_SPEC)

    if name is None:
        import shutil
        import textwrap

        width = max(80, shutil.get_terminal_size((100, 24)).columns)
        for spec in registry.all_ops(dialect):
            dialects = "/".join(sorted(spec.dialects))
            head = f"{spec.name:<20} {spec.output.value:<12} {dialects:<13} "
            click.echo(textwrap.fill(spec.summary, width, initial_indent=head, subsequent_indent=" " * len(head),
                                     break_on_hyphens=False))
        return
    spec = registry.get(name)
    if spec is None:
        hint = did_you_mean(name, registry.names())
        click.echo(f"error: unknown operator '{name}'" + (f"; {hint}" if hint else ""), err=True)
        sys.exit(EXIT_SPEC)
    from .describe import describe

    click.echo(describe(spec))


@main.command()
def lsp() -> None:
    """Serve editors over stdio: diagnostics as you type, hover, completion, go-to-definition."""
    try:
        from .lsp.server import serve
    except ModuleNotFoundError as exc:
        click.echo(f"error: `mlspec lsp` needs {exc.name}: pip install 'mlspec[lsp]'", err=True)
        sys.exit(EXIT_FAILED)
    serve()


@main.command()
@click.argument("words", nargs=-1, required=True, metavar="[merge|extrap] NAME")
@_fail_cleanly
def init(words: tuple[str, ...]) -> None:
    """Write NAME.merge (or NAME.extrap): a small commented study that checks and runs."""
    from .starters import write_starter

    if len(words) > 2 or (len(words) == 2 and words[0] not in ("merge", "extrap")):
        raise click.UsageError("usage: mlspec init [merge|extrap] NAME")
    path = write_starter(words[0] if len(words) == 2 else "merge", words[-1])
    click.echo(f"wrote {path}\nnext: mlspec run {shlex.quote(str(path))}")


@main.group(name="import")
def import_() -> None:
    """Convert other tools' configurations into specs."""


@import_.command(name="mergekit")
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@_fail_cleanly
def import_mergekit(config: str) -> None:
    """Print a .merge spec equivalent to a mergekit YAML CONFIG."""
    try:
        from .checkpoints.mergekit import mergekit_to_spec
    except ModuleNotFoundError:
        raise MlspecError("mergekit import needs mlspec.checkpoints") from None
    click.echo(mergekit_to_spec(Path(config).read_text()), nl=False)
