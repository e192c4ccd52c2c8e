"""`mlspec lsp` end to end: a real LSP client talks to the server over stdio."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlspec.cli import main
from mlspec.errors import SpecError

pytest.importorskip("pygls")

from lsp_client import LspClient  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "diagnostics"
QUICK = (ROOT / "specs" / "quickstart.merge").read_text()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LspClient]:
    c = LspClient([sys.executable, "-m", "mlspec", "lsp"], tmp_path_factory.mktemp("lsp"))
    yield c
    c.close()


def _line_of(text: str, needle: str) -> tuple[int, int]:
    """0-based (line, character) of the first occurrence of ``needle``."""
    before = text[: text.index(needle)]
    return before.count("\n"), len(before.split("\n")[-1])


def test_a_misspelt_operator_is_reported_on_its_line_with_a_suggestion(client: LspClient, tmp_path: Path) -> None:
    uri = client.open(tmp_path / "q.merge", QUICK)
    assert client.diagnostics(uri) == []
    line, char = _line_of(QUICK, "average(a, b)")
    client.edit(uri, line, char, char + len("average"), "averge")  # an incremental edit, as editors send
    (diag,) = client.diagnostics(uri)
    assert diag["message"] == "unknown operator 'averge'\nhelp: did you mean 'average'?"
    assert diag["range"] == {"start": {"line": line, "character": char},
                             "end": {"line": line, "character": char + len("averge")}}
    assert diag["severity"] == 1 and diag["source"] == "mlspec"
    client.edit(uri, line, char, char + len("averge"), "average")
    assert client.diagnostics(uri) == []


def _cli_diagnostics(path: Path) -> list[tuple[str, int, int]]:
    import mlspec

    try:
        mlspec.load(path).check()
    except SpecError as exc:
        return [(d.message + (f"\nhelp: {d.help}" if d.help else ""), d.span.line - 1 if d.span else 0,
                 d.span.col - 1 if d.span else 0) for d in exc.diagnostics]
    return []


@pytest.mark.parametrize("spec", sorted(p for p in GOLDEN.iterdir() if p.suffix in (".merge", ".extrap")),
                         ids=lambda p: p.name)
def test_diagnostics_are_the_same_as_mlspec_check(client: LspClient, spec: Path) -> None:
    """Every golden case: the editor shows what `mlspec check` prints — message, help and place."""
    uri = client.open(spec, spec.read_text())
    got = [(d["message"], d["range"]["start"]["line"], d["range"]["start"]["character"])
           for d in client.diagnostics(uri)]
    expected = _cli_diagnostics(spec)
    assert expected and got == expected


def test_hover_on_an_operator_shows_its_parameters(client: LspClient, tmp_path: Path) -> None:
    uri = client.open(tmp_path / "h.merge", QUICK)
    client.diagnostics(uri)
    line, char = _line_of(QUICK, "task_arithmetic(")
    hover = client.request("textDocument/hover", client.at(uri, line, char + 3))
    text = hover["contents"]["value"]
    assert hover["contents"]["kind"] == "markdown"
    assert text.startswith("**task_arithmetic** → Model") and "**parameters**" in text and "`scale`" in text
    line, char = _line_of(QUICK, "epochs = 3")
    param = client.request("textDocument/hover", client.at(uri, line, char + 2))["contents"]["value"]
    assert param.startswith("**epochs** — parameter of `train`") and "≥ 1" in param and "default 20" in param
    line, char = _line_of(QUICK, "base, on = low")
    name = client.request("textDocument/hover", client.at(uri, line, char + 1))["contents"]["value"]
    assert "**model base**" in name and "model base = train(init, on = digits, epochs = 3, lr = 1e-3)" in name
    assert client.request("textDocument/hover", client.at(uri, 0, 0)) is None  # a comment: nothing to say


def test_completion_offers_operators_parameters_names_and_choices(client: LspClient, tmp_path: Path) -> None:
    text = QUICK + "model c = \n"
    uri = client.open(tmp_path / "c.merge", text)
    client.diagnostics(uri)
    last = text.count("\n") - 1
    items = client.request("textDocument/completion", client.at(uri, last, len("model c = ")))["items"]
    labels = {i["label"] for i in items}
    assert {"average", "ties", "mlp", "train"} <= labels  # operators that make a model
    assert "digits" not in {i["label"] for i in items if i["kind"] == 3}  # not a data operator
    assert {"a", "b", "init"} <= labels  # declared names
    client.change(uri, QUICK + "model c = mlp(in = 64, norm = ")
    client.diagnostics(uri)
    choices = client.request("textDocument/completion", client.at(uri, last, len("model c = mlp(in = 64, norm = ")))
    assert {i["label"] for i in choices["items"]} == {"none", "layernorm", "batchnorm"}
    client.change(uri, QUICK + "model c = train(a, ")
    client.diagnostics(uri)
    params = client.request("textDocument/completion", client.at(uri, last, len("model c = train(a, ")))["items"]
    assert {"on =", "epochs =", "lr ="} <= {i["label"] for i in params}
    assert next(i for i in params if i["label"] == "epochs =")["insertText"] == "epochs = "
    client.change(uri, QUICK + "model c = train(a, on = ")
    client.diagnostics(uri)
    data = client.request("textDocument/completion", client.at(uri, last, len("model c = train(a, on = ")))["items"]
    names = {i["label"] for i in data if i["kind"] == 6}
    assert names == {"digits", "low", "high"}  # only datasets fit `on`


def test_completion_offers_the_keywords_valid_at_the_cursor(client: LspClient, tmp_path: Path) -> None:
    text = "task mazes = maze(size = 5)\nmodel dt = dt_net(width = 8)\ntrain [dt] on mazes epochs 2 \n"
    uri = client.open(tmp_path / "k.extrap", text)
    client.diagnostics(uri)
    items = client.request("textDocument/completion", client.at(uri, 2, len("train [dt] on mazes epochs 2 ")))
    keywords = {i["label"] for i in items["items"] if i["kind"] == 14}
    assert {"lr", "batch", "with", "validation", "evaluate", "axis"} <= keywords  # clauses, next statements
    assert not keywords & {"detect", "window", "correctness", "along"}  # other statements' clauses
    start = client.request("textDocument/completion", client.at(uri, 3, 0))["items"]
    assert {i["label"] for i in start} == {"study", "use", "task", "data", "model", "axis", "analysis", "train",
                                           "evaluate", "dynamics", "export", "report"}


def test_definition_of_names_and_use_files(client: LspClient, tmp_path: Path) -> None:
    (tmp_path / "common.merge").write_text("data digits = digits()\nmodel init = mlp(in = 64, out = 10)\n")
    text = 'use "common.merge"\nmodel a = train(init, on = digits, epochs = 1)\nmerge m = average(a, init)\n'
    uri = client.open(tmp_path / "d.merge", text)
    assert client.diagnostics(uri) == []
    here = client.request("textDocument/definition", client.at(uri, 2, text.split("\n")[2].index("a,")))
    assert here["uri"] == uri and here["range"]["start"] == {"line": 1, "character": 6}
    there = client.request("textDocument/definition", client.at(uri, 1, text.split("\n")[1].index("init")))
    assert there["uri"] == (tmp_path / "common.merge").resolve().as_uri()
    assert there["range"]["start"] == {"line": 1, "character": 6}
    used = client.request("textDocument/definition", client.at(uri, 0, 8))
    assert used["uri"] == (tmp_path / "common.merge").resolve().as_uri()


def test_an_error_in_a_used_file_shows_on_the_use_line(client: LspClient, tmp_path: Path) -> None:
    (tmp_path / "lib.merge").write_text("data digits = digits()\nmodel init = mlp(in = 64, out = 10, widht = 3)\n")
    uri = client.open(tmp_path / "u.merge", 'use "lib.merge"\nmodel a = train(init, on = digits)\n')
    (diag,) = client.diagnostics(uri)
    assert diag["message"].startswith("lib.merge:2:37: mlp has no parameter 'widht'")
    assert "did you mean 'width'?" in diag["message"] or "help:" in diag["message"]
    assert diag["range"]["start"]["line"] == 0


def test_formatting_is_mlspec_fmt(client: LspClient, tmp_path: Path) -> None:
    messy = 'study   "f"(seed=0)\ndata  d=digits( )\nmodel m = mlp(in=64,out=10)\nmodel t=train(m,on=d)\n'
    path = tmp_path / "f.merge"
    path.write_text(messy)
    uri = client.open(path, messy)
    client.diagnostics(uri)
    (edit,) = client.request("textDocument/formatting", {"textDocument": {"uri": uri},
                                                         "options": {"tabSize": 4, "insertSpaces": True}})
    assert edit["newText"] == CliRunner().invoke(main, ["fmt", str(path)]).output
    assert edit["range"]["start"] == {"line": 0, "character": 0}


def test_document_symbols_are_the_declarations(client: LspClient, tmp_path: Path) -> None:
    uri = client.open(tmp_path / "s.merge", QUICK)
    client.diagnostics(uri)
    symbols = client.request("textDocument/documentSymbol", {"textDocument": {"uri": uri}})
    names = [s["name"] for s in symbols]
    assert names == ["quickstart", "digits", "low", "high", "init", "base", "a", "b", "avg", "ta", "ab"]
    init = symbols[names.index("init")]
    assert init["detail"] == "model = mlp(…)"
    assert init["selectionRange"]["start"] == {"line": _line_of(QUICK, "model init")[0], "character": 6}


def test_hover_on_a_statement_and_its_clauses_names_the_operator_parameters() -> None:
    """A clause is a parameter under another name: hovering `batch` in a train statement says so."""
    from mlspec.lsp.analysis import analyse, hover

    text = "task mazes = maze(size = 5)\nmodel dt = dt_net(width = 8)\ntrain [dt] on mazes epochs 2 with progressive_loss(alpha = 0.5) batch 10\n"
    doc = analyse(text, "/nowhere/t.extrap")
    assert doc.diagnostics == []
    line = text.split("\n")[2]
    batch = hover(doc, 3, line.index("batch") + 2)
    assert batch is not None and batch.startswith("**batch** — parameter of `train_recurrent`")
    with_ = hover(doc, 3, line.index("with") + 1)
    assert with_ is not None and with_.startswith("**loss** — parameter of `train_recurrent`")
    assert "set by `with` in a `train` statement" in with_
    train = hover(doc, 3, 2)
    assert train is not None and train.startswith("`train` runs the operator `train_recurrent`")


def test_the_server_does_not_import_torch() -> None:
    """Starting the server stays quick: like `mlspec check`, it never loads torch."""
    import subprocess

    code = "import sys, mlspec.lsp.server\nassert 'torch' not in sys.modules, 'the language server imported torch'\n"
    subprocess.run([sys.executable, "-c", code], check=True)
