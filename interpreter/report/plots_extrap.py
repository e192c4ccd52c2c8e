"""Figures for ``.extrap`` studies: accuracy over difficulty axes, dynamics, and mazes as pictures.

Record shapes these handlers read (missing optional keys only drop a panel):

- ``evaluate_extrap``, one record per (model, point on the axes): ``{"model": arch type,
  "task": {dataset meta, e.g. "size": 9, "percolation": 0.0}, "iterations": [30, 100, ...],
  "accuracy": [solved fraction per budget], "pixel_accuracy": [...], "count": n}``. The step's
  ``sweep`` (``{"size": 9, "percolation": 0.0}`` from ``along size x percolation``) names the axes;
  without one, the task-meta keys that differ between a model's records do. The model is the step's
  ``model`` input.
- ``train_recurrent`` (Model info): ``{"history": [{"epoch": 1, "loss": f, "val_accuracy": f}, ...],
  "best_epoch": e}`` — the model kept is the one of the best validation epoch.
- ``dynamics``: ``{"iterations": n, "window": w, "residual": {"mean": [per iteration], "median":
  [...], "final": [per instance]}, "limit": {"kind": ["fixed_point" | "cycle" | "none", ...],
  "period": [...], "counts": {...}} (optional), "pca": [{"points": [[pc1, pc2] per iterate in the
  window], "explained": [r1, r2]} per instance] (optional), "deadend": {"iterations": [...],
  "agreement": [...]} (optional)}``; residual r_j = ‖u_j − u_{j−1}‖₂.
- ``predict`` / ``mazes`` (solved examples): ``{"model": "dt", "mazes": [{"input": H×W ints
  (0 wall, 1 open, 2 start, 3 goal) or H×W×3 floats in [0, 1], "target": H×W 0/1 path,
  "prediction": H×W 0/1, "correct": bool, "size": 9 (optional)}, ...], "task": {axis values}
  (optional), "iterations": [budgets] (optional; pictures are at the largest)}``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import StepView, StudyView, fmt, number, numbers
from .draw import heatmap, series
from .figures import COLOURS, Figure, figure, new_figure, slugify, style

__all__ = ["Grid", "budgets", "dynamics", "extrapolation", "grids", "maze_pictures", "training_history"]

MULTIPLES = 4  # heatmap panels (one per budget) per row
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


def budgets(g: Grid) -> list[Any]:
    return sorted({c["iterations"] for c in g.cells}, key=_order)


def _heatmaps(g: Grid) -> list[Figure]:
    """Every budget is drawn. One axis: the axis against the budget. Two or more: for every pair of
    axes, small multiples, one panel per budget (the other axes averaged, and said so)."""
    if len(g.axes) == 1:
        ys, xs, grid = _mean_grid(g.cells, "iterations", g.axes[0])
        fig = new_figure(4.4, 3.6)
        ax = fig.axes[0]
        heatmap(ax, grid, xlabels=xs, ylabels=ys, xlabel=g.axes[0], ylabel="test-time iterations",
                vmin=0.0, vmax=1.0, colorbar="accuracy")
        ax.set_title(g.model)
        return [
            Figure(
                slug=slugify(f"extrapolation-{g.model}"),
                title=f"{g.model}: accuracy over {g.axes[0]} and every iteration budget",
                section="Extrapolation",
                mpl=fig,
                data={"model": g.model, "x": g.axes[0], "y": "iterations", "budgets": ys,
                      "panels": [{"budget": "all", "rows": ys, "columns": xs, "accuracy": grid.tolist()}]},
                steps=tuple(g.steps),
                alt=f"Heatmap of {g.model}'s exact-solve accuracy (0 to 1, value written in each cell) over "
                f"{g.axes[0]} (columns) and the iteration budget (rows {', '.join(fmt(b) for b in ys)}); "
                f"from {fmt(float(np.nanmin(grid)), 3)} to {fmt(float(np.nanmax(grid)), 3)}.",
            )
        ]
    out = []
    for i, col in enumerate(g.axes):
        for row in g.axes[i + 1 :]:
            others = [a for a in g.axes if a not in (col, row)]
            note = f" (mean over {', '.join(others)})" if others else ""
            shown = budgets(g)
            ncols = min(len(shown), MULTIPLES)
            nrows = -(-len(shown) // ncols)
            fig = new_figure(3.3 * ncols + 0.8, 3.3 * nrows, ncols=ncols, nrows=nrows)
            for ax in fig.axes[len(shown) :]:
                ax.set_visible(False)
            panels, sentences = [], []
            for ax, budget in zip(fig.axes, shown):
                ys, xs, grid = _mean_grid([c for c in g.cells if c["iterations"] == budget], row, col)
                heatmap(ax, grid, xlabels=xs, ylabels=ys, xlabel=col, ylabel=row, vmin=0.0, vmax=1.0,
                        colorbar="accuracy" if ax is fig.axes[ncols - 1] else "")
                ax.set_title(f"{fmt(budget)} iterations")
                panels.append({"budget": budget, "rows": ys, "columns": xs, "accuracy": grid.tolist()})
                sentences.append(f"at {fmt(budget)} iterations from {fmt(float(np.nanmin(grid)), 3)} "
                                 f"to {fmt(float(np.nanmax(grid)), 3)}")
            fig.suptitle(f"{g.model}: {col} × {row}{note}", fontsize=9)
            out.append(
                Figure(
                    slug=slugify(f"extrapolation-{g.model}-{col}-{row}"),
                    title=f"{g.model}: accuracy over {col} × {row} at every budget{note}",
                    section="Extrapolation",
                    mpl=fig,
                    data={"model": g.model, "x": col, "y": row, "averaged_over": others, "budgets": shown,
                          "panels": panels},
                    steps=tuple(g.steps),
                    alt=f"Small multiples, one heatmap per iteration budget, of {g.model}'s exact-solve accuracy "
                    f"(value written in each cell) over {col} (columns) and {row} (rows){note}: "
                    + "; ".join(sentences) + ".",
                )
            )
    return out


def _iteration_curves(g: Grid) -> Figure:
    """One panel per axis, one line per value: a slice when it is the only axis, otherwise the mean
    over the other axes, and the legend says which."""
    panels = g.axes[:3] or [""]
    fig = new_figure(3.8 * len(panels), 3.2, ncols=len(panels))
    sentences = []
    for ax, axis in zip(fig.axes, panels):
        cells = g.cells if axis else [{**c, "_": g.model} for c in g.cells]
        others = [a for a in g.axes if a != axis]
        how = f" (mean over {', '.join(others)})" if axis and others else ""
        values, budgets, grid = _mean_grid(cells, axis or "_", "iterations")
        for i, (value, row) in enumerate(zip(values, grid)):
            label = f"{axis} = {fmt(value)}{how}" if axis else g.model
            series(ax, budgets, row, i, label)
            sentences.append(
                f"{label}: {fmt(float(row[0]), 3)} at {budgets[0]} iterations, "
                f"{fmt(float(row[-1]), 3)} at {budgets[-1]}"
            )
        ax.set(
            xlabel="test-time iterations",
            ylabel="accuracy",
            title=(f"by {axis}" + (" (averages)" if how else "")) if axis else g.model,
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
        + (", one line per axis value (averaged over the other axes, as each legend says): " if len(g.axes) > 1
           else ", one line per axis value: " if g.axes else ": ")
        + "; ".join(sentences)
        + ".",
    )


@figure("evaluate_extrap")
def extrapolation(study: StudyView, steps: list[StepView]) -> list[Figure]:
    found = grids(study)
    out = [fig for g in found if g.axes and g.cells for fig in _heatmaps(g)]
    out += [_iteration_curves(g) for g in found if len({c["iterations"] for c in g.cells}) > 1]
    # Example mazes of each model at its hardest grid point (the last in the axes' order).
    hardest: dict[str, StepView] = {}
    for s in steps:
        if isinstance(s.record, dict) and s.record.get("mazes"):
            hardest[str(s.inputs.get("model", s.name))] = s
    return out + maze_pictures(study, list(hardest.values()))


@figure(keys=("history", "best_epoch"))  # train_recurrent's record, by its shape
def training_history(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        history = [h for h in s.record.get("history") or [] if isinstance(h, dict)]
        epochs = [number(h.get("epoch")) for h in history]
        loss = [number(h.get("loss")) for h in history]
        val = [number(h.get("val_accuracy")) for h in history]
        if not history or None in epochs:
            continue
        best = number(s.record.get("best_epoch"))
        fig = new_figure(7.6, 3.0, ncols=2)
        loss_ax, val_ax = fig.axes
        if None not in loss:
            series(loss_ax, epochs, loss, 0, "training loss")
            loss_ax.set(yscale="log")
        loss_ax.set(xlabel="epoch", ylabel="training loss", title="training loss")
        if None not in val:
            series(val_ax, epochs, val, 1, "validation accuracy")
        if best:
            val_ax.axvline(best, color="black", linestyle=":", linewidth=1.0, label=f"kept: epoch {fmt(int(best))}")
        val_ax.set(xlabel="epoch", ylabel="exact-solve accuracy", title="validation accuracy", ylim=(-0.03, 1.03))
        val_ax.legend(fontsize=7)
        model = str(s.inputs.get("model") or s.name)
        out.append(
            Figure(
                slug=slugify(f"training-{s.name}"),
                title=f"{model}: training",
                section="Training",
                mpl=fig,
                data={"history": history, "best_epoch": best},
                steps=(s.name,),
                alt=f"Training loss (log scale) and validation exact-solve accuracy of {model} over "
                f"{len(history)} epochs"
                + (f"; loss from {fmt(loss[0])} to {fmt(loss[-1])}" if None not in loss else "")
                + (f"; validation accuracy ends at {fmt(val[-1], 3)}, best {fmt(max(val), 3)}" if None not in val
                   else "")
                + (f"; the model kept is the one of epoch {fmt(int(best))} (dotted line)" if best else "")
                + ".",
            )
        )
    return out


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


def _where(s: StepView) -> str:
    """Every axis value of the grid point and the budget the pictures were taken at."""
    task = s.record.get("task") if isinstance(s.record.get("task"), dict) else {}
    point = s.sweep or {k: v for k, v in task.items() if k not in NOT_AXES}
    budgets = numbers(s.record.get("iterations"))
    parts = [f"{k} = {fmt(v)}" for k, v in point.items()]
    if budgets:
        parts.append(f"{fmt(int(max(budgets)))} iterations")  # examples are kept at the largest budget
    return ", ".join(parts) or s.name


@figure(keys=("mazes",))
def maze_pictures(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        mazes = [m for m in s.record.get("mazes") or [] if isinstance(m, dict) and "input" in m]
        shown = sorted(mazes, key=lambda m: bool(m.get("correct")))[:MAZES]  # failures first
        if not shown:
            continue
        where = _where(s)
        fig = new_figure(5.0, 1.7 * len(shown) + 0.3, ncols=3, nrows=len(shown))
        fig.suptitle(where, fontsize=8)
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
                title=f"{model}: example mazes at {where}",
                section="Mazes",
                mpl=fig,
                data={"model": model, "where": where, "mazes": shown},
                steps=(s.name,),
                alt=f"{len(shown)} of the {len(mazes)} mazes shown to {model} at {where}, failures first "
                f"({failed} of {len(mazes)} failed). "
                "Each row: the input maze (black walls, green start, orange goal), the target path, and the "
                "prediction with wrongly predicted cells crossed.",
            )
        )
    return out
