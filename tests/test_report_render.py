"""render_report: a self-contained, deterministic page, figure files, and no lost results."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from report_bundles import extrap_bundle, merge_bundle

from mlspec.report import render_report
from mlspec.report.bundle import StudyView, fmt
from mlspec.report.plan_figure import collapsed_graph
from mlspec.report.plots_extrap import grids
from mlspec.report.plots_merge import _barrier_point
from mlspec.report.sweeps import measurements

DATA_SCRIPT = re.compile(
    r'<script type="application/json" class="figure-data" data-figure="([^"]+)">(.*?)</script>', re.DOTALL
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], Path, str]]:
    out = {}
    for make in (merge_bundle, extrap_bundle):
        bundle = make()
        path = render_report(bundle, tmp_path_factory.mktemp(bundle["study"]["dialect"]))
        out[bundle["study"]["dialect"]] = (bundle, path, path.read_text(encoding="utf-8"))
    return out


@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_report_is_self_contained_and_small(rendered: dict[str, Any], dialect: str) -> None:
    _, path, html = rendered[dialect]
    assert path.name == "report.html"
    assert path.stat().st_size < 5_000_000
    assert "<link" not in html and not re.search(r"""(src|href)=["']https?:""", html)
    assert re.findall(r"<script[^>]*>", html) == re.findall(r'<script type="application/json"[^>]*>', html)
    assert "default-src 'none'" in html  # the browser itself refuses any request
    ids = Counter(re.findall(r'\sid="([^"]+)"', html))
    assert [i for i, n in ids.items() if n > 1] == []


@pytest.mark.parametrize("dialect", ["merge", "extrap"])
def test_every_figure_has_alt_text_data_and_paper_files(rendered: dict[str, Any], dialect: str) -> None:
    _, path, html = rendered[dialect]
    svgs = re.findall(r"<svg [^>]*>", html)
    data = DATA_SCRIPT.findall(html)
    assert len(svgs) == len(data) >= 4
    for tag in svgs:
        label = re.search(r'aria-label="([^"]+)"', tag)
        assert 'role="img"' in tag and label and len(label.group(1)) > 40
    for fig_id, text in data:
        assert json.loads(text), fig_id
    files = sorted(p.name for p in (path.parent / "figures").iterdir() if p.name != ".figure-cache.json")
    stems = {f.rsplit(".", 1)[0] for f in files}
    assert len(stems) == len(svgs)
    assert files == sorted(f"{s}.{ext}" for s in stems for ext in ("svg", "png", "pdf"))


def test_merge_report_shows_the_studys_numbers(rendered: dict[str, Any]) -> None:
    bundle, _, html = rendered["merge"]
    res = bundle["results"]
    assert fmt(res["evaluate(a, low)"]["accuracy"]) in html
    assert fmt(res["raw"]["barriers"]["loss_max_minus_linear"]) in html
    # The sweep is summarised by its best point on validation (0.5), not on the test split it reports (0.7).
    assert "ta[0.5] (selected on validation: best mean validation accuracy of 8)" in html
    summary = html[html.index('id="table-summary"') :]
    assert "<th scope=\"row\">ta[0.7]" not in summary[: summary.index("</table>")]
    assert bundle["study"]["spec_sha256"] in html and bundle["provenance"]["command"] in html
    assert "hit" in html and "miss" in html
    for section in ("Training", "Sweeps", "Loss landscape", "Task vectors", "Execution graph"):
        assert section in html
    embedded = {json.dumps(json.loads(t), sort_keys=True) for _, t in DATA_SCRIPT.findall(html)}
    raw = json.dumps(json.loads(json.dumps({"raw": res["raw"], "aligned": res["aligned"]})), sort_keys=True)
    assert raw in embedded  # the interpolation figure carries exactly the records it was drawn from


def test_extrap_report_has_every_extrap_figure(rendered: dict[str, Any]) -> None:
    _, path, html = rendered["extrap"]
    for title in (
        "dt: accuracy over size × percolation at every budget",
        "it: accuracy over size × percolation at every budget",
        "accuracy vs test-time iterations",
        "size = 25 (mean over percolation)",  # a curve per axis value says it is an average
        "dt: example mazes at size = 9, percolation = 0, 300 iterations",
        "dynamics",
        "example mazes",
        "Limiting behaviour",
        "Extrapolation",
    ):
        assert title in html
    assert "✗ failed" in (path.parent / "figures" / "mazes-predict-dt.svg").read_text()
    heatmaps = [json.loads(t) for _, t in DATA_SCRIPT.findall(html) if '"panels"' in t]
    assert [h["budgets"] for h in heatmaps] == [[30, 100, 300]] * 2  # small multiples: every budget drawn
    assert "overthinking" in html and "peak budget" in html
    assert "agreement with dead-end filling" in html


def test_unknown_operator_results_are_still_shown(rendered: dict[str, Any]) -> None:
    _, _, html = rendered["merge"]
    assert "probe_norms" in html and "layer_norms.0.weight" in html and fmt(14.79) in html


def test_rendering_is_deterministic_and_clears_stale_figures(tmp_path: Path) -> None:
    bundle = merge_bundle()
    first = render_report(bundle, tmp_path).read_bytes()
    svg = (tmp_path / "figures" / "sweep-ta.svg").read_bytes()
    (tmp_path / "figures" / "old-figure.png").write_bytes(b"stale")
    assert render_report(copy.deepcopy(bundle), tmp_path).read_bytes() == first
    assert (tmp_path / "figures" / "sweep-ta.svg").read_bytes() == svg
    assert not (tmp_path / "figures" / "old-figure.png").exists()


def test_broken_and_hostile_records_do_not_break_the_page(tmp_path: Path) -> None:
    bundle = merge_bundle()
    bundle["results"]["raw"] = {"a": "a", "b": "c", "alphas": [0.0, 0.5, 1.0], "loss": "oops", "barriers": {}}
    bundle["results"]["plane"]["loss"] = [[1.0, 2.0]]  # wrong shape for its axes
    bundle["results"]["tv"]["cosine"] = [[float("nan"), 0.1, 0.2]] * 3
    bundle["results"]["probe"]["note"] = "</script><script>alert(1)</script>"
    bundle["steps"].append({"name": "odd", "op": "mystery"})
    bundle["results"]["odd"] = {"series": [1, 2, 3], "value": float("inf")}
    html = render_report(bundle, tmp_path, report_name="x.html").read_text()
    assert "<script>alert(1)" not in html
    assert "mystery" in html and "plane" in html
    for _, text in DATA_SCRIPT.findall(html):
        json.loads(text)  # NaN became null: still valid JSON


def test_an_empty_bundle_renders_a_page(tmp_path: Path) -> None:
    html = render_report({}, tmp_path).read_text()
    assert "states no question" in html and "Provenance" in html


def test_records_are_recognised_by_shape_when_the_operator_is_new(tmp_path: Path) -> None:
    bundle = extrap_bundle()
    for step in bundle["steps"]:
        if step["op"] == "dynamics":
            step["op"] = "dynamics_v2"
    html = render_report(bundle, tmp_path).read_text()
    assert "dt: dynamics" in html and '<section id="other">' not in html  # drawn, not left to the fallback


def test_extrap_grid_collects_one_model_across_axis_points() -> None:
    dt, it = grids(StudyView(extrap_bundle()))
    assert dt.model == "dt" and dt.axes == ["size", "percolation"]
    assert len(dt.cells) == 4 * 3 * 3 and len(dt.steps) == 12
    cell = next(c for c in dt.cells if c["size"] == 9 and c["percolation"] == 0.0 and c["iterations"] == 300)
    assert cell["accuracy"] == 1.0
    assert it.model == "it" and len(it.cells) == len(dt.cells)


def test_barrier_point_is_the_largest_rise_above_the_chord() -> None:
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    loss = [1.0, 2.5, 3.5, 3.0, 2.0]  # chord: 1.0, 1.25, 1.5, 1.75, 2.0
    assert _barrier_point(alphas, loss) == (0.5, 3.5, 2.0)


def test_sweep_measurements_and_graph_collapse() -> None:
    study = StudyView(merge_bundle())
    members = study.families()["ta"]
    panels = measurements(study, members)
    assert set(panels) == {"accuracy", "loss"} and set(panels["accuracy"]) == {"low", "high"}
    assert panels["accuracy"]["low"]["ta[0.7]"] == max(panels["accuracy"]["low"].values())
    graph = collapsed_graph(study)
    assert graph.nodes["ta"]["label"] == "ta[…] ×8"
    assert ("a", "ta") in graph.edges and ("ta", "evaluate:evaluate") in graph.edges
    assert not any(n.startswith("ta[") for n in graph.nodes)


def test_every_figure_handler_names_a_registered_operator() -> None:
    """No handler for operators that do not exist (they would be dead code)."""
    from mlspec import registry
    from mlspec.report import figures, render  # noqa: F401  (render imports every figure module)

    assert sorted(set(figures._BY_OP) - set(registry.names())) == []
