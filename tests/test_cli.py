"""The command line: ops, check, graph, fmt, report, compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlspec.cli import main

SPEC = """\
# Which half is easier?
study "cli" (seed = 0)
data digits = digits()
model m = mlp(in = 64, hidden = [8], out = 10)
model t = train(m, on = digits, epochs = 1)
evaluate [t] on [digits]
"""


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_ops_lists_operators_with_kinds() -> None:
    out = invoke("ops")
    assert out.exit_code == 0
    names = {line.split()[0] for line in out.output.splitlines()}
    assert {"digits", "classes", "mlp", "train", "average", "task_arithmetic", "interpolate", "evaluate",
            "export"} <= names


def test_ops_name_shows_parameters_defaults_and_docs() -> None:
    out = invoke("ops", "train")
    assert out.exit_code == 0
    assert "train  ->  Model" in out.output and "cross-entropy" in out.output
    assert "epochs" in out.output and "default 20" in out.output and "model" in out.output
    mlp = invoke("ops", "mlp").output
    assert "in " in mlp and "required" in mlp  # aliases shown as written in specs
    bad = CliRunner().invoke(main, ["ops", "averge"])
    assert bad.exit_code == 2 and "did you mean 'average'?" in bad.stderr


def test_ops_list_shows_whole_first_sentences() -> None:
    from mlspec import registry

    listing = " ".join(invoke("ops").output.split())  # wrapped to the terminal: compare word by word
    for spec in registry.all_ops():
        assert spec.summary.endswith((".", "!", "?", ")")), spec.summary
        assert " ".join(spec.summary.split()) in listing
    breadcrumbs = registry.get("breadcrumbs")
    assert breadcrumbs is not None and breadcrumbs.summary.endswith("then task arithmetic or TIES.")
    connect = registry.get("connect")  # the sentence ends before the example on the same paragraph
    assert connect is not None and connect.summary.endswith("score it against the straight line.")


def test_ops_shows_choices_ranges_and_the_clauses_that_set_parameters() -> None:
    evaluate = invoke("ops", "evaluate_extrap").output
    assert "one of: exact, valid_path" in evaluate
    dynamics = invoke("ops", "dynamics").output
    assert "list of (one of: fixed_point, cycle, pca, betti, deadend)" in dynamics
    train = invoke("ops", "train_recurrent").output
    # The operator's parameters and the `train` statement's clauses use one vocabulary.
    assert "  batch " in train and "  validation " in train and "batch_size" not in train
    assert "int (≥ 1)" in train and "float (≥ 0.0, < 1.0)" in train
    assert "its clauses set parameters: epochs, with (sets loss), lr, batch," in train


def test_every_operator_describes_its_types_in_spec_terms() -> None:
    from mlspec import registry

    for spec in registry.all_ops():
        out = invoke("ops", spec.name)
        assert out.exit_code == 0
        assert "typing." not in out.output and "Literal" not in out.output and "NoneType" not in out.output


def test_check_graph_and_fmt(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text(SPEC)
    assert "ok — 4 steps" in invoke("check", str(spec)).output
    assert "t  [train]  <- m, digits" in invoke("graph", str(spec)).output
    assert '"m" -> "t"' in invoke("graph", str(spec), "--format", "dot").output
    assert invoke("graph", str(spec), "--format", "mermaid").output.startswith("graph LR")
    formatted = invoke("fmt", str(spec)).output
    assert formatted.startswith("# Which half is easier?\n\nstudy \"cli\" (seed = 0)")
    spec.write_text(formatted)
    assert invoke("fmt", str(spec)).output == formatted


def test_report_rerenders_from_cache_and_compare(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text(SPEC)
    out, cache = tmp_path / "o", tmp_path / "c"
    assert invoke("run", str(spec), "--out", str(out), "--cache-dir", str(cache)).exit_code == 0
    (out / "report.html").unlink()
    rerender = invoke("report", str(spec), "--out", str(out), "--cache-dir", str(cache))
    assert rerender.exit_code == 0 and (out / "report.html").exists()
    spec.write_text(SPEC + "model t2 = train(m, on = digits, epochs = 2)\n")  # a step never run
    partial = invoke("report", str(spec), "--out", str(out), "--cache-dir", str(cache))
    assert "(1 steps not in the cache yet)" in partial.output
    assert "not run" in (out / "report.html").read_text()
    spec.write_text(SPEC)
    other = json.loads((out / "results.json").read_text())
    other["results"]["evaluate t on digits"]["accuracy"] = 0.5
    (tmp_path / "b.json").write_text(json.dumps(other))
    cmp = invoke("compare", str(out / "results.json"), str(tmp_path / "b.json"))
    assert cmp.exit_code == 1 and "evaluate t on digits" in cmp.output and "0.5" in cmp.output  # 1: they differ


def test_missing_file_is_a_clean_error(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["check", str(tmp_path / "nope.merge")])
    assert out.exit_code == 2 and "no such spec file" in out.stderr and "Traceback" not in out.output


def test_report_in_a_subfolder_keeps_its_figures_beside_it(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text(SPEC + 'report "sub/r.html"\n')
    out = invoke("run", str(spec), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    assert out.exit_code == 0, out.output
    html = (tmp_path / "o" / "sub" / "r.html").read_text()
    linked = [p for p in (tmp_path / "o" / "sub" / "figures").iterdir() if p.suffix == ".png"]
    assert linked and all(f"figures/{p.name}" in html for p in linked)


def test_an_unwritable_output_directory_is_a_clean_error(tmp_path: Path) -> None:
    spec = tmp_path / "s.merge"
    spec.write_text(SPEC)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = CliRunner().invoke(main, ["run", str(spec), "--out", str(blocker / "o"), "--cache-dir",
                                    str(tmp_path / "c")])
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "Not a directory" in out.stderr or "File exists" in out.stderr


def test_init_writes_a_commented_spec_that_checks_and_says_what_to_type_next(tmp_path: Path,
                                                                             monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    merge = invoke("init", "first")
    assert merge.exit_code == 0 and merge.output == "wrote first.merge\nnext: mlspec run first.merge\n"
    extrap = invoke("init", "extrap", "mazes")
    assert extrap.exit_code == 0 and "next: mlspec run mazes.extrap" in extrap.output
    first = (tmp_path / "first.merge").read_text()
    for name in ("first.merge", "mazes.extrap"):
        text = (tmp_path / name).read_text()
        assert text.startswith("# ") and text.count("\n#") >= 4  # commented for a first reader
        checked = invoke("check", name)
        assert checked.exit_code == 0 and " steps" in checked.output
    again = CliRunner().invoke(main, ["init", "first"])
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert (tmp_path / "first.merge").read_text() == first  # not overwritten
    wrong = CliRunner().invoke(main, ["init", "nonsense", "x"])
    assert wrong.exit_code == 2 and "mlspec init [merge|extrap] NAME" in wrong.output


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_init_specs_run(tmp_path: Path, monkeypatch, dialect: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert invoke("init", dialect, "starter").exit_code == 0
    ran = invoke("run", f"starter.{dialect}", "--cache-dir", str(tmp_path / "cache"), "--no-progress")
    assert ran.exit_code == 0, ran.output
    assert (tmp_path / "out" / "starter" / "report.html").exists()


def test_the_program_ends_quickly_yet_prints_everything_and_keeps_exit_codes(tmp_path: Path) -> None:
    """`mlspec check` and `graph` end the process without interpreter teardown: whatever they
    printed still arrives through a pipe, and spec errors still exit 2 with their diagnostic."""
    import subprocess
    import sys

    good = tmp_path / "g.merge"
    good.write_text('study "g"\ndata d = digits()\nmodel m = mlp(in = 64, out = 10)\n'
                    "model t = train(m, on = d, epochs = 1)\n")
    bad = tmp_path / "b.merge"
    bad.write_text('study "b"\ndata d = digits(\n')
    ok = subprocess.run([sys.executable, "-m", "mlspec", "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: ok — 3 steps"
    graph = subprocess.run([sys.executable, "-m", "mlspec", "graph", str(good)], capture_output=True, text=True)
    assert graph.returncode == 0 and "train" in graph.stdout and graph.stdout.endswith("\n")
    failed = subprocess.run([sys.executable, "-m", "mlspec", "check", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "this '(' is never closed" in failed.stderr and failed.stderr.rstrip().endswith("nothing was run.")
