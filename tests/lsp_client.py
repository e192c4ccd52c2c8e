"""A small Language Server Protocol client over stdio, written from the protocol (not from pygls,
which the server uses), for the end-to-end tests and benchmarks/lsp_latency.py."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


class LspClient:
    def __init__(self, command: list[str], root: Path):
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.pending: list[dict[str, Any]] = []  # notifications read while waiting for something else
        self.next_id = 0
        self.versions: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()
        self.request("initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": {}})
        self.notify("initialized", {})

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            headers = {}
            while (line := out.readline().decode()) not in ("\r\n", ""):
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
            if not headers:
                return  # the server closed its output
            self.messages.put(json.loads(out.read(int(headers["content-length"]))))

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        self.proc.stdin.flush()

    def _next(self, match: Any, timeout: float) -> dict[str, Any]:
        for i, message in enumerate(self.pending):
            if match(message):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                stderr = self.proc.stderr.read().decode() if self.proc.poll() is not None and self.proc.stderr else ""
                raise TimeoutError(f"no answer from the server in {timeout} s {stderr}") from None
            if match(message):
                return message
            self.pending.append(message)

    def request(self, method: str, params: dict[str, Any], timeout: float = 60.0) -> Any:
        self.next_id += 1
        ident = self.next_id
        self._send({"id": ident, "method": method, "params": params})
        answer = self._next(lambda m: m.get("id") == ident and "method" not in m, timeout)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer.get("result")

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self._send({"method": method, "params": params})

    def diagnostics(self, uri: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The next diagnostics the server publishes for ``uri`` at its current version."""
        version = self.versions.get(uri)

        def match(m: dict[str, Any]) -> bool:
            p = m.get("params", {})
            return (m.get("method") == "textDocument/publishDiagnostics" and p.get("uri") == uri
                    and p.get("version") in (version, None))

        return self._next(match, timeout)["params"]["diagnostics"]  # type: ignore[no-any-return]

    def open(self, path: Path, text: str) -> str:
        uri = path.resolve().as_uri()
        self.versions[uri] = 1
        language = "mlspec-" + path.suffix[1:]
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1,
                                                               "text": text}})
        return uri

    def change(self, uri: str, text: str) -> None:
        """Replace the whole text (a full-document change)."""
        self.versions[uri] += 1
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": self.versions[uri]},
                                               "contentChanges": [{"text": text}]})

    def edit(self, uri: str, line: int, start: int, end: int, text: str) -> None:
        """Replace characters [start, end) of one 0-based line (an incremental change)."""
        self.versions[uri] += 1
        where = {"start": {"line": line, "character": start}, "end": {"line": line, "character": end}}
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": self.versions[uri]},
                                               "contentChanges": [{"range": where, "text": text}]})

    def at(self, uri: str, line: int, character: int) -> dict[str, Any]:
        return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character}}

    def close(self) -> None:
        try:
            self.request("shutdown", {}, timeout=10)
            self.notify("exit", {})
            self.proc.wait(timeout=10)
        except (TimeoutError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
