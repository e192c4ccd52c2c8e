"""Figures for ``.extrap`` studies: accuracy over difficulty axes, dynamics, and mazes as pictures.

Record shapes these handlers read (missing optional keys only drop a panel):

- ``evaluate_extrap``, one record per (model, point on the axes): ``{"model": arch type,
  "task": {dataset meta, e.g. "size": 9, "percolation": 0.0}, "iterations": [30, 100, ...],
  "accuracy": [solved fraction per budget], "pixel_accuracy": [...], "count": n}``. The step's
  ``sweep`` (``{"size": 9, "percolation": 0.0}`` from ``along size x percolation``) names the axes;
  without one, the task-meta keys that differ between a model's records do. The model is the step's
  ``model`` input.
- ``dynamics``: ``{"iterations": n, "window": w, "residual": {"mean": [per iteration], "median":
  [...], "final": [per instance]}, "limit": {"kind": ["fixed_point" | "cycle" | "none", ...],
  "period": [...], "counts": {...}} (optional), "pca": [{"points": [[pc1, pc2] per iterate in the
  window], "explained": [r1, r2]} per instance] (optional), "deadend": {"iterations": [...],
  "agreement": [...]} (optional)}``; residual r_j = ‖u_j − u_{j−1}‖₂.
- ``predict`` / ``mazes`` (solved examples): ``{"model": "dt", "mazes": [{"input": H×W ints
  (0 wall, 1 open, 2 start, 3 goal) or H×W×3 floats in [0, 1], "target": H×W 0/1 path,
  "prediction": H×W 0/1, "correct": bool, "size": 9 (optional)}, ...]}``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlspec.report.draw import heatmap, series
from mlspec.report.figures import COLOURS, Figure, figure, new_figure, slugify, style
from mlspec.report.study import StepView, StudyView, fmt, number, numbers

__all__ = ["Grid", "dynamics", "extrapolation", "grids", "maze_pictures"]

PANELS = 4  # models per heatmap figure
MAZES = 6  # examples drawn per model
TRAJECTORIES = 16  # instances drawn per dynamics figure
MAZE_COLOURS = ["#000000", "#ffffff", COLOURS[2], COLOURS[1], COLOURS[0]]  # wall, open, start, goal, path
PATH_COLOURS = ["#ffffff", COLOURS[0]]
NOT_AXES = {"seed", "count", "task", "generator"}


@dataclass
class Grid:
    """One model's accuracy over the difficulty axes and iteration budgets, as flat cells."""

    model: str
    axes: list[str]
    cells: list[dict[str, Any]]  # {axis: value, ..., "iterations": b, "accuracy": a}
    steps: list[str]


def _axis_values(step: StepView, varying: list[str]) -> dict[str, Any]:
    if step.sweep:
        return dict(step.sweep)
    task = step.record.get("task") if isinstance(step.record.get("task"), dict) else {}
    return {k: task.get(k) for k in varying}


def grids(study: StudyView) -> list[Grid]:
    """Every model's ``evaluate_extrap`` records gathered into one grid per model."""
    by_model: dict[str, list[StepView]] = defaultdict(list)
    for s in study.by_op("evaluate_extrap"):
        if isinstance(s.record, dict) and numbers(s.record.get("accuracy")):
            by_model[str(s.inputs.get("model") or s.record.get("model", s.name))].append(s)
    out = []
    for model, steps in by_model.items():
        tasks = [s.record.get("task") if isinstance(s.record.get("task"), dict) else {} for s in steps]
        keys = list(dict.fromkeys(k for t in tasks for k in t if k not in NOT_AXES))
        varying = [k for k in keys if len({repr(t.get(k)) for t in tasks}) > 1]
        cells = []
        for s in steps:
            point = _axis_values(s, varying)
            budgets = s.record.get("iterations") or []
            for b, acc in zip(budgets, numbers(s.record["accuracy"]) or []):
                cells.append({**point, "iterations": b, "accuracy": acc})
        axes = list(steps[0].sweep) if steps[0].sweep else varying
        out.append(Grid(model, axes, cells, [s.name for s in steps]))
    return out


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


def _heatmaps(chunk: list[Grid]) -> Figure:
    fig = new_figure(3.9 * len(chunk), 3.6, ncols=len(chunk))
    sentences, data = [], {}
    for ax, g in zip(fig.axes, chunk):
        budget = max(c["iterations"] for c in g.cells)
        if len(g.axes) >= 2:
            chosen = [c for c in g.cells if c["iterations"] == budget]
            ys, xs, grid = _mean_grid(chosen, g.axes[1], g.axes[0])
            ylabel, note = g.axes[1], f" at {budget} iterations"
        else:
            ys, xs, grid = _mean_grid(g.cells, "iterations", g.axes[0])
            ylabel, note = "test-time iterations", ""
        heatmap(
            ax,
            grid,
            xlabels=xs,
            ylabels=ys,
            xlabel=g.axes[0],
            ylabel=ylabel,
            vmin=0.0,
            vmax=1.0,
            colorbar="accuracy" if ax is fig.axes[-1] else "",
        )
        ax.set_title(f"{g.model}{note}")
        data[g.model] = {"rows": ys, "columns": xs, "accuracy": grid.tolist()}
        sentences.append(
            f"{g.model}: accuracy from {fmt(float(np.nanmin(grid)), 3)} to {fmt(float(np.nanmax(grid)), 3)}{note}"
        )
    return Figure(
        slug=slugify("extrapolation-" + "-".join(g.model for g in chunk)),
        title="Accuracy over difficulty axes",
        section="Extrapolation",
        mpl=fig,
        data=data,
        steps=tuple(n for g in chunk for n in g.steps),
        alt="Heatmaps of exact-solve accuracy (0 to 1, value written in each cell) over the difficulty axes. "
        + "; ".join(sentences)
        + ".",
    )


def _iteration_curves(g: Grid) -> Figure:
    """One panel per axis (one line per value, the other axes averaged), or one line without axes."""
    panels = g.axes[:3] or [""]
    fig = new_figure(3.8 * len(panels), 3.2, ncols=len(panels))
    sentences = []
    for ax, axis in zip(fig.axes, panels):
        cells = g.cells if axis else [{**c, "_": g.model} for c in g.cells]
        values, budgets, grid = _mean_grid(cells, axis or "_", "iterations")
        for i, (value, row) in enumerate(zip(values, grid)):
            label = f"{axis} = {fmt(value)}" if axis else g.model
            series(ax, budgets, row, i, label)
            sentences.append(
                f"{label}: {fmt(float(row[0]), 3)} at {budgets[0]} iterations, "
                f"{fmt(float(row[-1]), 3)} at {budgets[-1]}"
            )
        ax.set(
            xlabel="test-time iterations",
            ylabel="accuracy",
            title=f"by {axis}" if axis else g.model,
            ylim=(-0.03, 1.03),
        )
        if len(budgets) > 2 and min(budgets) > 0 and max(budgets) / min(budgets) >= 10:
            ax.set_xscale("log")
            ax.set_xticks(budgets, [fmt(b) for b in budgets])
            ax.minorticks_off()
        ax.legend(fontsize=7)
    return Figure(
        slug=slugify(f"iterations-{g.model}"),
        title=f"{g.model}: accuracy vs test-time iterations",
        section="Extrapolation",
        mpl=fig,
        data={"axes": g.axes, "cells": g.cells},
        steps=tuple(g.steps),
        alt=f"Accuracy of {g.model} against the iteration budget"
        + (", one line per axis value (averaged over the other axes): " if g.axes else ": ")
        + "; ".join(sentences)
        + ".",
    )


@figure("evaluate_extrap")
def extrapolation(study: StudyView, steps: list[StepView]) -> list[Figure]:
    found = grids(study)
    with_axes = [g for g in found if g.axes and g.cells]
    out = [_heatmaps(with_axes[i : i + PANELS]) for i in range(0, len(with_axes), PANELS)]
    out += [_iteration_curves(g) for g in found if len({c["iterations"] for c in g.cells}) > 1]
    # Example mazes of each model at its hardest grid point (the last in the axes' order).
    hardest: dict[str, StepView] = {}
    for s in steps:
        if isinstance(s.record, dict) and s.record.get("mazes"):
            hardest[str(s.inputs.get("model", s.name))] = s
    return out + maze_pictures(study, list(hardest.values()))


@figure("dynamics", keys=("residual", "window"))
def dynamics(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        rec = s.record
        model = str(s.inputs.get("model") or rec.get("model", s.name))
        residual = rec.get("residual") if isinstance(rec.get("residual"), dict) else {}
        limit = rec.get("limit") if isinstance(rec.get("limit"), dict) else {}
        kinds = [str(k) for k in limit.get("kind") or []]
        order = list(dict.fromkeys(kinds)) or [""]
        pca = [
            np.asarray(p.get("points"), dtype=float)
            for p in (rec.get("pca") or [])[:TRAJECTORIES]
            if isinstance(p, dict)
        ]
        pca = [t for t in pca if t.ndim == 2 and t.shape[1] >= 2 and len(t) > 1]
        deadend = rec.get("deadend") if isinstance(rec.get("deadend"), dict) else {}
        agreement = numbers(deadend.get("agreement"))
        ncols = 1 + bool(pca) + bool(agreement)
        fig = new_figure(3.9 * ncols, 3.3, ncols=ncols)
        res_ax, *rest = fig.axes
        for i, key in enumerate(("median", "mean")):
            ys = numbers(residual.get(key))
            if ys:
                series(res_ax, range(1, len(ys) + 1), np.maximum(ys, 1e-12), i, key)
        window = number(rec.get("window"))
        iterations = number(rec.get("iterations"))
        if window and iterations:
            res_ax.axvspan(
                iterations - window, iterations, color="#cccccc", alpha=0.4, label="analysed window"
            )
        res_ax.set(yscale="log", xlabel="iteration j", ylabel=r"$\|u_j - u_{j-1}\|_2$", title="residuals")
        res_ax.legend(fontsize=7)
        if pca:
            pca_ax = rest.pop(0)
            for i, t in enumerate(pca):
                kind = kinds[i] if i < len(kinds) else ""
                st = style(order.index(kind))
                pca_ax.plot(
                    t[:, 0],
                    t[:, 1],
                    color=st["color"],
                    linestyle=st["linestyle"],
                    linewidth=0.7,
                    alpha=0.8,
                    label=kind if kind and kind not in kinds[:i] else None,
                )
                pca_ax.plot(t[0, 0], t[0, 1], marker="o", color=st["color"], markersize=4)
                pca_ax.plot(t[-1, 0], t[-1, 1], marker="X", color="black", markersize=5)
            pca_ax.set(xlabel="PC 1", ylabel="PC 2", title="window in PCA (o start, X end)")
            if any(kinds):
                pca_ax.legend(fontsize=7)
        if agreement:
            de_ax = rest.pop(0)
            series(de_ax, deadend.get("iterations") or list(range(len(agreement))), agreement, 0, model)
            de_ax.set(
                xlabel="iteration",
                ylabel="agreement",
                title="agreement with dead-end filling",
                ylim=(-0.03, 1.03),
            )
        counts = limit.get("counts") if isinstance(limit.get("counts"), dict) else {}
        finals = numbers(residual.get("final")) or []
        out.append(
            Figure(
                slug=slugify(f"dynamics-{s.name}"),
                title=f"{model}: dynamics",
                section="Dynamics",
                mpl=fig,
                data=rec,
                steps=(s.name,),
                alt=f"Median and mean residual norm of {model}'s iterates per iteration on a log scale"
                + (f"; final residuals from {fmt(min(finals))} to {fmt(max(finals))}" if finals else "")
                + (f"; limits reached: {', '.join(f'{k} {v}' for k, v in counts.items())}" if counts else "")
                + (
                    f". Trajectories of {len(pca)} instances in their first two principal components"
                    if pca
                    else ""
                )
                + (f". Agreement with dead-end filling ends at {fmt(agreement[-1], 3)}" if agreement else "")
                + ".",
            )
        )
    return out


def _picture(ax: Any, grid: Any, *, kind: str) -> np.ndarray | None:
    arr = np.asarray(grid, dtype=float)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        ax.imshow(np.clip(arr, 0.0, 1.0), interpolation="nearest")
    elif arr.ndim == 2:
        from matplotlib.colors import ListedColormap

        cmap = ListedColormap(MAZE_COLOURS if kind == "input" else PATH_COLOURS)
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
