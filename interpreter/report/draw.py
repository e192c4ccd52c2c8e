"""Drawing helpers shared by the merge and extrapolation figures: series, heatmaps, contour maps.

Each helper labels what it draws in text (cell values, contour levels, legend entries), so a figure
never depends on colour alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .bundle import fmt
from .figures import style

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["as_grid", "contour_map", "heatmap", "series"]


def series(ax: Axes, xs: Sequence[float], ys: Sequence[float], i: int, label: str, **extra: Any) -> None:
    """One line with the ``i``-th marker/line style; markers thinned out on long series."""
    kw = style(i) | {"markevery": max(1, len(xs) // 12), "markersize": 4, "linewidth": 1.4} | extra
    ax.plot(xs, ys, label=label, **kw)


def as_grid(value: Any) -> np.ndarray | None:
    """A rectangular 2-D list of numbers (``None`` -> NaN) as float array, else ``None``."""
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value):
        return None
    if len({len(r) for r in value}) != 1:
        return None
    try:
        grid = np.array([[np.nan if v is None else v for v in row] for row in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return grid if grid.ndim == 2 else None


def heatmap(
    ax: Axes,
    grid: np.ndarray,
    *,
    xlabels: Sequence[Any],
    ylabels: Sequence[Any],
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: str = "",
    origin: str = "lower",
) -> None:
    """A matrix with every cell's value written in it (when the grid is small enough to read)."""
    image = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin=origin)
    ax.set_xticks(range(grid.shape[1]), [fmt(v, 3) for v in xlabels], rotation=45 if grid.shape[1] > 6 else 0)
    ax.set_yticks(range(grid.shape[0]), [fmt(v, 3) for v in ylabels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
    if grid.size <= 144:
        for (r, c), value in np.ndenumerate(grid):
            if np.isnan(value):
                continue
            red, green, blue, _ = image.cmap(image.norm(value))
            dark = 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5  # relative luminance of the cell
            ax.text(
                c,
                r,
                fmt(float(value), 2),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if dark else "black",
            )
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label=colorbar, shrink=0.85)


def contour_map(
    ax: Axes,
    xs: Sequence[float],
    ys: Sequence[float],
    grid: np.ndarray,
    *,
    label: str,
    points: Sequence[tuple[str, float, float]] = (),
) -> None:
    """Filled contours with labelled level lines; ``points`` (the models) marked and named."""
    finite = grid[np.isfinite(grid)]
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
        return
    lo, hi = float(finite.min()), float(np.percentile(finite, 95))
    levels = np.linspace(lo, hi if hi > lo else lo + 1.0, 12)
    filled = ax.contourf(xs, ys, np.ma.masked_invalid(grid), levels=levels, cmap="viridis", extend="max")
    lines = ax.contour(xs, ys, np.ma.masked_invalid(grid), levels=levels[::2], colors="white", linewidths=0.6)
    ax.clabel(lines, fontsize=6, fmt=lambda v: fmt(float(v), 3))
    ax.figure.colorbar(filled, ax=ax, label=label, shrink=0.85)
    ax.grid(False)
    for i, (name, x, y) in enumerate(points):
        st = style(i)
        ax.plot(
            [x],
            [y],
            marker=st["marker"],
            color="white",
            markeredgecolor="black",
            markersize=8,
            linestyle="none",
        )
        ax.annotate(
            name,
            (x, y),
            xytext=(5, 5),
            textcoords="offset points",
            fontsize=8,
            color="black",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
