"""``mlspec lsp``: the Language Server Protocol over stdio (pygls), for .merge and .extrap files.

Every open document is re-checked on each change and its diagnostics published; hover,
completion, definition, formatting and symbols answer from :mod:`mlspec.lsp.analysis`. This
module only translates between the protocol's positions (0-based, in the client's code units)
and the analysis's spans (1-based characters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument

from .. import __version__
from ..errors import Diagnostic, Span
from . import analysis

__all__ = ["server", "serve"]

T = TypeVar("T")
server = LanguageServer("mlspec", __version__)
_documents: dict[str, analysis.Document] = {}

_SYMBOL_KINDS = {"study": lsp.SymbolKind.Module, "model": lsp.SymbolKind.Class, "merge": lsp.SymbolKind.Class,
                 "data": lsp.SymbolKind.Variable, "task": lsp.SymbolKind.Variable, "axis": lsp.SymbolKind.Array,
                 "curve": lsp.SymbolKind.Function, "surface": lsp.SymbolKind.Function,
                 "analysis": lsp.SymbolKind.Function}
_COMPLETION_KINDS = {"keyword": lsp.CompletionItemKind.Keyword, "operator": lsp.CompletionItemKind.Function,
                     "parameter": lsp.CompletionItemKind.Property, "name": lsp.CompletionItemKind.Variable,
                     "value": lsp.CompletionItemKind.EnumMember}


def _range(span: Span, doc: TextDocument) -> lsp.Range:
    """A span (1-based characters, end exclusive) as a protocol range in the client's units."""
    chars = lsp.Range(start=lsp.Position(line=max(0, span.line - 1), character=max(0, span.col - 1)),
                      end=lsp.Position(line=max(0, span.end_line - 1), character=max(0, span.end_col - 1)))
    return doc.position_codec.range_to_client_units(doc.lines, chars)


def _position(doc: TextDocument, position: lsp.Position) -> tuple[int, int]:
    if position.line >= len(doc.lines):  # the empty line after a final newline (the codec would clamp it)
        return position.line + 1, 1
    chars = doc.position_codec.position_from_client_units(doc.lines, position)
    return chars.line + 1, chars.character + 1


def _diagnostic(d: Diagnostic, doc: TextDocument, uri: str) -> lsp.Diagnostic:
    span = d.span or Span(doc.path, 1, 1, 1, 1)
    related = [lsp.DiagnosticRelatedInformation(
        location=lsp.Location(uri=from_fs_path(s.file) or uri, range=_range(s, doc)), message=label)
        for s, label in d.labels]
    return lsp.Diagnostic(range=_range(span, doc), message=d.message + (f"\nhelp: {d.help}" if d.help else ""),
                          severity=lsp.DiagnosticSeverity.Error if d.severity == "error" else lsp.DiagnosticSeverity.Warning,
                          source="mlspec", related_information=related or None)


def _refresh(ls: LanguageServer, uri: str) -> None:
    doc = ls.workspace.get_text_document(uri)
    path = to_fs_path(uri) or doc.path
    result = analysis.analyse(doc.source, path, _documents.get(uri))
    _documents[uri] = result
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
        uri=uri, version=doc.version, diagnostics=[_diagnostic(d, doc, uri) for d in result.diagnostics]))


def _current(ls: LanguageServer, uri: str) -> tuple[analysis.Document, TextDocument]:
    doc = ls.workspace.get_text_document(uri)
    known = _documents.get(uri)
    if known is None or known.text != doc.source:
        _refresh(ls, uri)
    return _documents[uri], doc


def _ask(ls: LanguageServer, params: lsp.TextDocumentPositionParams,
         question: Callable[[analysis.Document, int, int], T]) -> tuple[T, TextDocument]:
    """The analysis's answer about the position in ``params``, and the document it is in."""
    result, doc = _current(ls, params.text_document.uri)
    return question(result, *_position(doc, params.position)), doc


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: LanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _refresh(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: LanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _refresh(ls, params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: LanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    # The saved file may be one that other open specs `use`: every open spec is analysed afresh, so
    # their diagnostics, and the declarations and text their hovers show, are the file's new ones.
    for uri in dict.fromkeys([params.text_document.uri, *_documents]):
        _refresh(ls, uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: LanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    _documents.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: LanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    text, _ = _ask(ls, params, analysis.hover)
    if text is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text))


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=["(", ",", "="]))
def completion(ls: LanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    found, _ = _ask(ls, params, analysis.complete)
    items = [lsp.CompletionItem(label=c.label, kind=_COMPLETION_KINDS[c.kind], detail=c.detail or None,
                                documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=c.documentation)
                                if c.documentation else None, insert_text=c.insert)
             for c in found]
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: LanguageServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    span, doc = _ask(ls, params, analysis.definition)
    if span is None:
        return None
    uri = from_fs_path(span.file) or params.text_document.uri
    target = doc if uri == params.text_document.uri else ls.workspace.get_text_document(uri)
    return lsp.Location(uri=uri, range=_range(span, target))


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: LanguageServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    result, doc = _current(ls, params.text_document.uri)
    text = analysis.formatted(result)
    if text is None or text == doc.source:
        return None
    end = lsp.Position(line=len(doc.lines), character=0)
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end), new_text=text)]


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbols(ls: LanguageServer, params: lsp.DocumentSymbolParams) -> list[lsp.DocumentSymbol]:
    result, doc = _current(ls, params.text_document.uri)
    return [lsp.DocumentSymbol(name=s.name, kind=_SYMBOL_KINDS.get(s.kind, lsp.SymbolKind.Variable), detail=s.detail,
                               range=_range(s.span, doc), selection_range=_range(s.selection, doc))
            for s in analysis.symbols(result)]


def serve() -> None:
    """Answer an editor on stdin/stdout until it disconnects."""
    server.start_io()
