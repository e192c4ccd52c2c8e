"""Figures for ``.extrap`` studies: accuracy over difficulty axes, dynamics, and mazes as pictures.

Record shapes these handlers read (operators producing them should conform; missing optional keys
only drop a panel):

- ``extrapolate`` (a model evaluated along axes and iteration budgets), one record per model:
  ``{"model": "dt", "task": "mazes", "axes": ["size", "percolation"], "iterations": [30, 100],
  "cells": [{"size": 9, "percolation": 0.0, "iterations": 30, "accuracy": 0.98, "count": 1000}, ...]}``
  — one flat cell per (axis values, budget); ``accuracy`` is the fraction solved exactly.
- ``dynamics``: ``{"model": "dt", "start": 3001 (first iterate index, optional),
  "residuals": [[r_j per iterate] per instance], "pca": [[[pc1, pc2, ...] per iterate] per instance]
  (optional), "labels": ["fixed_point" | "cycle" | ... per instance] (optional),
  "counts": {"fixed_point": 15, ...} (optional)}``; r_j = ‖u_{j+1} − u_j‖₂.
- ``predict`` / ``mazes`` (solved examples): ``{"model": "dt", "mazes": [{"input": H×W ints
  (0 wall, 1 open, 2 start, 3 goal) or H×W×3 floats in [0, 1], "target": H×W 0/1 path,
  "prediction": H×W 0/1, "correct": bool, "size": 9 (optional)}, ...]}``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from mlspec.report.draw import heatmap, series
from mlspec.report.figures import COLOURS, Figure, figure, new_figure, slugify, style
from mlspec.report.study import StepView, StudyView, fmt, number, numbers

__all__ = ["dynamics", "extrapolation", "maze_pictures"]

PANELS = 4  # models per heatmap figure
MAZES = 6  # examples drawn per model
TRAJECTORIES = 16  # instances drawn per dynamics figure
MAZE_COLOURS = ListedColormap(["#000000", "#ffffff", COLOURS[2], COLOURS[1], COLOURS[0]])
PATH_COLOURS = ListedColormap(["#ffffff", COLOURS[0]])


def _cells(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c for c in rec.get("cells") or [] if isinstance(c, dict) and number(c.get("accuracy")) is not None
    ]


def _axes(rec: dict[str, Any], cells: list[dict[str, Any]]) -> list[str]:
    named = [str(a) for a in rec.get("axes") or []]
    return named or [k for k in cells[0] if k not in ("iterations", "accuracy", "count", "loss")]


def _mean_grid(cells: list[dict[str, Any]], row: str, col: str) -> tuple[list[Any], list[Any], np.ndarray]:
    """Mean accuracy per (row value, column value), averaging every other coordinate."""
    rows = sorted({c.get(row) for c in cells}, key=_order)
    cols = sorted({c.get(col) for c in cells}, key=_order)
    acc: dict[tuple[Any, Any], list[float]] = defaultdict(list)
    for c in cells:
        acc[(c.get(row), c.get(col))].append(float(c["accuracy"]))
    grid = np.array([[np.mean(acc[(r, k)]) if acc[(r, k)] else np.nan for k in cols] for r in rows])
    return rows, cols, grid


def _order(value: Any) -> tuple[int, Any]:
    n = number(value)
    return (0, n) if n is not None else (1, str(value))


def _heatmaps(steps: list[StepView]) -> Figure:
    fig = new_figure(3.9 * len(steps), 3.6, ncols=len(steps))
    sentences, data = [], {}
    for ax, s in zip(fig.axes, steps):
        cells = _cells(s.record)
        axes = _axes(s.record, cells)
        budget = max((c.get("iterations", 0) for c in cells), default=0)
        if len(axes) >= 2:
            chosen = [c for c in cells if c.get("iterations", 0) == budget]
            ys, xs, grid = _mean_grid(chosen, axes[1], axes[0])
            ylabel, note = axes[1], f" at {budget} iterations"
        else:
            ys, xs, grid = _mean_grid(cells, "iterations", axes[0])
            ylabel, note = "test-time iterations", ""
        heatmap(
            ax,
            grid,
            xlabels=xs,
            ylabels=ys,
            xlabel=axes[0],
            ylabel=ylabel,
            vmin=0.0,
            vmax=1.0,
            colorbar="accuracy" if ax is fig.axes[-1] else "",
        )
        model = s.record.get("model", s.name)
        ax.set_title(f"{model}{note}")
        data[s.name] = {"rows": ys, "columns": xs, "accuracy": grid.tolist()}
        sentences.append(
            f"{model}: accuracy from {fmt(float(np.nanmin(grid)), 3)} to "
            f"{fmt(float(np.nanmax(grid)), 3)}{note}"
        )
    return Figure(
        slug=slugify("extrapolation-" + "-".join(s.name for s in steps)),
        title="Accuracy over difficulty axes",
        section="Extrapolation",
        mpl=fig,
        data=data,
        steps=tuple(s.name for s in steps),
        alt="Heatmaps of exact-solve accuracy (0 to 1, value written in each cell) over the difficulty axes. "
        + "; ".join(sentences)
        + ".",
    )


def _iteration_curves(s: StepView) -> Figure:
    cells = _cells(s.record)
    axes = _axes(s.record, cells)[:3]
    fig = new_figure(3.8 * len(axes), 3.2, ncols=len(axes))
    sentences = []
    for ax, axis in zip(fig.axes, axes):
        values, budgets, grid = _mean_grid(cells, axis, "iterations")
        for i, (value, row) in enumerate(zip(values, grid)):
            series(ax, budgets, row, i, f"{axis} = {fmt(value)}")
            sentences.append(
                f"{axis} {fmt(value)}: {fmt(float(row[0]), 3)} at {budgets[0]} iterations, "
                f"{fmt(float(row[-1]), 3)} at {budgets[-1]}"
            )
        ax.set(xlabel="test-time iterations", ylabel="accuracy", title=f"by {axis}", ylim=(-0.03, 1.03))
        if len(budgets) > 2 and min(budgets) > 0 and max(budgets) / min(budgets) >= 10:
            ax.set_xscale("log")
            ax.set_xticks(budgets, [fmt(b) for b in budgets])
            ax.minorticks_off()
        ax.legend(fontsize=7)
    model = s.record.get("model", s.name)
    return Figure(
        slug=slugify(f"iterations-{s.name}"),
        title=f"{model}: accuracy vs test-time iterations",
        section="Extrapolation",
        mpl=fig,
        data={"cells": cells},
        steps=(s.name,),
        alt=f"Accuracy of {model} against the iteration budget, one line per axis value (averaged over the "
        "other axes): " + "; ".join(sentences) + ".",
    )


@figure("extrapolate", "evaluate_along", keys=("cells",))
def extrapolation(study: StudyView, steps: list[StepView]) -> list[Figure]:
    steps = [s for s in steps if _cells(s.record)]
    out = [_heatmaps(steps[i : i + PANELS]) for i in range(0, len(steps), PANELS)]
    return out + [
        _iteration_curves(s) for s in steps if len({c.get("iterations") for c in _cells(s.record)}) > 1
    ]


def _instances(value: Any) -> list[list[float]]:
    """Residuals as one list per instance (a single flat list is one instance)."""
    flat = numbers(value)
    if flat is not None:
        return [flat]
    return [r for r in (numbers(v) for v in value or []) if r]


@figure("dynamics", keys=("residuals",))
def dynamics(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        rec = s.record
        model = rec.get("model", s.name)
        residuals = _instances(rec.get("residuals"))[:TRAJECTORIES]
        labels = [str(x) for x in rec.get("labels") or []]
        kinds = list(dict.fromkeys(labels)) or [""]
        pca = [np.asarray(t, dtype=float) for t in (rec.get("pca") or [])[:TRAJECTORIES]]
        pca = [t for t in pca if t.ndim == 2 and t.shape[1] >= 2 and len(t) > 1]
        fig = new_figure(8.0 if pca else 5.0, 3.4, ncols=2 if pca else 1)
        start = int(number(rec.get("start")) or 0)
        res_ax = fig.axes[0]
        for i, r in enumerate(residuals):
            kind = labels[i] if i < len(labels) else ""
            st = style(kinds.index(kind))
            res_ax.plot(
                range(start, start + len(r)),
                np.maximum(r, 1e-12),
                color=st["color"],
                linestyle=st["linestyle"],
                linewidth=0.8,
                alpha=0.8,
                label=kind if kind and kind not in labels[:i] else None,
            )
        res_ax.set(yscale="log", xlabel="iteration j", ylabel=r"$\|u_{j+1} - u_j\|_2$", title="residuals")
        if any(labels):
            res_ax.legend(fontsize=7)
        for i, t in enumerate(pca):
            st = style(kinds.index(labels[i]) if i < len(labels) else 0)
            pca_ax = fig.axes[1]
            pca_ax.plot(
                t[:, 0], t[:, 1], color=st["color"], linestyle=st["linestyle"], linewidth=0.7, alpha=0.8
            )
            pca_ax.plot(t[0, 0], t[0, 1], marker="o", color=st["color"], markersize=4)
            pca_ax.plot(t[-1, 0], t[-1, 1], marker="X", color="black", markersize=5)
        if pca:
            fig.axes[1].set(xlabel="PC 1", ylabel="PC 2", title="PCA trajectories (o start, X end)")
        counts = rec.get("counts") if isinstance(rec.get("counts"), dict) else {}
        finals = [r[-1] for r in residuals]
        out.append(
            Figure(
                slug=slugify(f"dynamics-{s.name}"),
                title=f"{model}: dynamics",
                section="Dynamics",
                mpl=fig,
                data=rec,
                steps=(s.name,),
                alt=f"Residual norms of {model}'s iterates on a log scale for {len(residuals)} instances"
                + (f"; final residuals from {fmt(min(finals))} to {fmt(max(finals))}" if finals else "")
                + (
                    f"; limiting behaviour counts: {', '.join(f'{k} {v}' for k, v in counts.items())}"
                    if counts
                    else ""
                )
                + (
                    f". Right: the first two principal components of {len(pca)} trajectories." if pca else "."
                ),
            )
        )
    return out


def _picture(ax: Any, grid: Any, *, kind: str) -> np.ndarray | None:
    arr = np.asarray(grid, dtype=float)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        ax.imshow(np.clip(arr, 0.0, 1.0), interpolation="nearest")
    elif arr.ndim == 2:
        cmap = MAZE_COLOURS if kind == "input" else PATH_COLOURS
        ax.imshow(arr, cmap=cmap, vmin=0, vmax=cmap.N - 1, interpolation="nearest")
    else:
        return None
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    return arr


@figure("predict", "mazes", keys=("mazes",))
def maze_pictures(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        mazes = [m for m in s.record.get("mazes") or [] if isinstance(m, dict) and "input" in m]
        shown = sorted(mazes, key=lambda m: bool(m.get("correct")))[:MAZES]  # failures first
        if not shown:
            continue
        fig = new_figure(5.0, 1.7 * len(shown), ncols=3, nrows=len(shown))
        for row, maze in enumerate(shown):
            cells = fig.axes[3 * row : 3 * row + 3]
            verdict = "✓ solved" if maze.get("correct") else "✗ failed"
            size = f", {maze['size']}×{maze['size']}" if "size" in maze else ""
            _picture(cells[0], maze["input"], kind="input")
            target = _picture(cells[1], maze.get("target", []), kind="path")
            pred = _picture(cells[2], maze.get("prediction", []), kind="path")
            cells[0].set_ylabel(f"{verdict}{size}", fontsize=8)
            if target is not None and pred is not None and target.shape == pred.shape:
                wrong = np.argwhere(target != pred)
                cells[2].plot(wrong[:, 1], wrong[:, 0], "x", color=COLOURS[1], markersize=3, linestyle="none")
            if row == 0:
                for ax, name in zip(cells, ("input", "target", "prediction (x = wrong)")):
                    ax.set_title(name, fontsize=8)
        failed = sum(1 for m in mazes if not m.get("correct"))
        model = s.record.get("model", s.name)
        out.append(
            Figure(
                slug=slugify(f"mazes-{s.name}"),
                title=f"{model}: example mazes",
                section="Mazes",
                mpl=fig,
                data={"model": model, "mazes": shown},
                steps=(s.name,),
                alt=f"{len(shown)} of the {len(mazes)} mazes shown to {model}, failures first "
                f"({failed} of {len(mazes)} failed). "
                "Each row: the input maze (black walls, green start, orange goal), the target path, and the "
                "prediction with wrongly predicted cells crossed.",
            )
        )
    return out
