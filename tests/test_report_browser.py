"""Open rendered reports in headless Chromium, offline, and check what a reader would see.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages
separated by NUL bytes on fds 3 and 4), so no websocket library is needed. The network is off three
ways: an unreachable proxy, a resolver that resolves nothing, and DevTools' offline emulation; any
request other than the report's own file fails the test. A full-page screenshot of each report is
written to ``tests/artifacts/``.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from report_bundles import extrap_bundle, merge_bundle

from mlspec.report import render_report
from mlspec.report.bundle import fmt, number

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
    "--window-size=1200,900",
]


def _high(fd: int) -> int:
    """``fd`` moved to a number >= 10 (close-on-exec, like every fd Python makes)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """A headless Chromium and one page, spoken to over the DevTools pipe."""

    def __init__(self, profile: Path) -> None:
        to_child_r, self._to_child = (_high(fd) for fd in os.pipe())
        self._from_child, from_child_w = (_high(fd) for fd in os.pipe())
        # DevTools reads fd 3 and writes fd 4 of the browser; bash moves the pipe ends (all >= 10,
        # so none is already 3 or 4) there.
        wire = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        self.proc = subprocess.Popen(
            [
                "bash",
                "-c",
                wire,
                "chromium",
                str(CHROMIUM),
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(to_child_r, from_child_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_child], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_child)
        os.close(self._from_child)


PROBE = """JSON.stringify({
  figures: [...document.querySelectorAll("figure.figure")].map(f => {
    const svg = f.querySelector("svg.plot"); const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    let data = null; try { data = JSON.parse(f.querySelector("script.figure-data").textContent) } catch (e) {}
    return {id: f.id, width: r.width, height: r.height, hasData: data !== null, data: data,
            label: svg ? svg.getAttribute("aria-label") || "" : "",
            svgText: svg ? [...svg.querySelectorAll("text")].map(t => t.textContent).join(" | ") : ""};
  }),
  tables: Object.fromEntries([...document.querySelectorAll("table[id]")].map(t =>
    [t.id, [...t.querySelectorAll("tr")].map(r => [...r.children].map(c => c.innerText.trim()))])),
  text: document.body.innerText,
  title: document.title,
})"""


def open_report(path: Path, screenshot: Path, tmp_path: Path) -> dict[str, Any]:
    """Load ``path`` offline; return the page probe plus every problem the browser reported."""
    browser = Browser(tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.page(f"{domain}.enable")
        browser.page(
            "Network.emulateNetworkConditions",
            offline=True,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        browser.page("Page.navigate", url=path.as_uri())
        browser.wait_for("Page.loadEventFired")
        probe = json.loads(
            browser.page("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
        )
        size = browser.page("Page.getLayoutMetrics")["cssContentSize"]
        shot = browser.page(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = browser.events
    finally:
        browser.close()
    probe["errors"] = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    probe["errors"] += [
        e["params"]
        for e in events
        if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")
    ]
    probe["errors"] += [
        e["params"]["entry"]
        for e in events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"
    ]
    probe["requests"] = [
        e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"
    ]
    return probe


def check_report(report: Path, results: dict[str, Any], screenshot: Path, tmp_path: Path) -> dict[str, Any]:
    probe = open_report(report, screenshot, tmp_path)
    assert probe["errors"] == []
    assert [u for u in probe["requests"] if u != report.as_uri() and not u.startswith("data:")] == []
    assert probe["figures"], "the report has no figures"
    for fig in probe["figures"]:
        assert fig["width"] > 100 and fig["height"] > 50, fig
        assert fig["hasData"] and len(fig["label"]) > 40, fig
    for record in results.values():  # sweep members (``ta[0.2]``) are summarised by their best point
        if not isinstance(record, dict):
            continue
        if number(record.get("accuracy")) is not None and "[" not in str(record.get("model", "[")):
            assert fmt(record["accuracy"]) in probe["text"], record
        if isinstance(record.get("barriers"), dict):
            assert fmt(record["barriers"]["loss_max_minus_linear"]) in probe["text"], record
    assert screenshot.stat().st_size > 10_000
    return probe


def check_claims(probe: dict[str, Any], results: dict[str, Any]) -> None:
    """What the page claims agrees with itself: barriers in the table are the ones the figure marks;
    a sweep figure draws its baselines and marks the point selected on validation, the point the
    summary table shows; every budget of an extrapolation grid is drawn."""
    figures, tables = probe["figures"], probe["tables"]
    if "table-barriers" in tables:
        header, *rows = tables["table-barriers"]
        assert rows
        for row in rows:
            drawn = [f for f in figures if isinstance(f["data"], dict) and isinstance(f["data"].get(row[0]), dict)
                     and "barriers" in f["data"][row[0]]]
            assert drawn, row
            for column in ("loss barrier", "error barrier"):
                assert f"(barrier {row[header.index(column)]})" in drawn[0]["svgText"], (column, row)
    sweeps = [f for f in figures if isinstance(f["data"], dict) and "baselines" in f["data"]]
    for f in sweeps:
        roles = f["data"]["baselines"]["roles"]
        assert f["data"]["baselines"]["values"] and roles, f["data"]["family"]
        for model, role in roles.items():
            assert f"{model} ({role})" in f["svgText"]
        assert f["data"]["parameter"] in f["svgText"]  # the parameter's name on the axis
        selected = f["data"]["selected_on_validation"]
        if selected:
            assert f"{selected}: selected on validation" in f["svgText"]
            summary = [r[0] for r in tables["table-summary"]]
            assert any(r.startswith(f"{selected} (selected on validation") for r in summary), summary
    budgets = sorted({b for r in results.values() if isinstance(r, dict) and "pixel_accuracy" in r
                      for b in r.get("iterations") or []})
    if budgets:
        heatmaps = [f["data"] for f in figures if isinstance(f["data"], dict) and "panels" in f["data"]]
        assert heatmaps and all(h["budgets"] == budgets for h in heatmaps), (budgets, heatmaps)


@pytest.mark.parametrize("make", [merge_bundle, extrap_bundle], ids=["merge", "extrap"])
def test_rendered_fixture_reports_open_offline_without_errors(make: Any, tmp_path: Path) -> None:
    bundle = make()
    report = render_report(bundle, tmp_path / "out")
    dialect = bundle["study"]["dialect"]
    probe = check_report(report, bundle["results"], ARTIFACTS / f"report-fixture-{dialect}.png", tmp_path)
    check_claims(probe, bundle["results"])
    assert bundle["study"]["question"] in probe["text"]
    assert bundle["study"]["spec_sha256"] in probe["text"]
    if dialect == "extrap":  # the hardest cell of dt's grid, at its largest budget, in the summary
        hardest = bundle["results"][
            "evaluate dt on mazes(size = 25, percolation = 0.1) @ size = 25, percolation = 0.1"
        ]
        assert fmt(hardest["accuracy"][-1]) in probe["text"]
    if dialect == "merge":
        barrier = bundle["results"]["raw"]["barriers"]["loss_max_minus_linear"]
        assert fmt(barrier) in probe["text"]


def test_the_browser_check_sees_script_errors_and_requests(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img src="http://example.com/x.png">'
        "<script>undefined_function()</script><script>console.error('boom')</script></body></html>"
    )
    probe = open_report(page, tmp_path / "bad.png", tmp_path)
    assert len(probe["errors"]) >= 2
    assert "http://example.com/x.png" in probe["requests"]


def test_quickstart_report_opens_offline_and_shows_its_numbers(quickstart_run: Any, tmp_path: Path) -> None:
    _, base = quickstart_run
    report = base / "out" / "report.html"
    data = json.loads((base / "out" / "results.json").read_text())
    probe = check_report(report, data["results"], ARTIFACTS / "report-quickstart-merge.png", tmp_path)
    assert report.stat().st_size < 5_000_000
    assert data["study"]["spec_sha256"] in probe["text"]
    assert len(probe["figures"]) >= 4  # training, sweep, interpolation, execution graph
    check_claims(probe, data["results"])
    sweep = next(f for f in probe["figures"] if isinstance(f["data"], dict) and f["data"].get("family") == "ta")
    assert sweep["data"]["selected_on_validation"] and sweep["data"]["parameter"] == "scale"
    assert set(sweep["data"]["baselines"]["roles"]) == {"base", "a", "b", "avg"}
    assert "table-barriers" in probe["tables"]


def test_extrap_quickstart_report_opens_offline_and_shows_its_numbers(
    quickstart_extrap_run: Any, tmp_path: Path
) -> None:
    _, base = quickstart_extrap_run
    report = base / "out" / "report.html"
    data = json.loads((base / "out" / "results.json").read_text())
    probe = check_report(report, data["results"], ARTIFACTS / "report-quickstart-extrap.png", tmp_path)
    assert report.stat().st_size < 5_000_000
    assert data["study"]["spec_sha256"] in probe["text"]
    check_claims(probe, data["results"])
    assert any(f["data"]["budgets"] == [1, 5, 10, 20] for f in probe["figures"]
               if isinstance(f["data"], dict) and "panels" in f["data"])
    assert "dt: training" in probe["text"]  # loss and validation accuracy per epoch
    # The summary shows the easiest and hardest cells of the grid at the largest budget.
    for size in (5, 9):
        assert fmt(data["results"][f"evaluate dt @ size = {size}"]["accuracy"][-1]) in probe["text"]
