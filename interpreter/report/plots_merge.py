"""Figures for ``.merge`` studies: training, interpolation, connectivity, planes, task vectors.

Record shapes these handlers read (operators producing them should conform; missing optional keys
only drop a panel):

- ``train`` (Model info): ``{"train_loss": [per-epoch mean loss, ...]}``.
- ``interpolate``: ``{"a", "b", "dataset", "alphas": [...], "loss": [...], "accuracy": [...],
  "barriers": {"loss_max_minus_linear": f, "loss_max_minus_mean": f, "error_...": f}}``
  (alpha 0 is ``a``).
- ``connect`` / ``bezier`` / ``chain`` (a curve found between two models):
  ``{"a", "b", "dataset", "ts": [...], "loss": [...], "accuracy": [...],
  "line": {"loss": [...], "accuracy": [...]}}`` — ``line`` is the straight segment at the same ``ts``.
- ``plane`` / ``surface``: ``{"dataset", "xs": [...], "ys": [...], "loss": [[len(xs)] * len(ys)],
  "accuracy": [[...]] (optional), "points": [{"name": "a", "x": 0.0, "y": 0.0}, ...]}``.
- ``task_vectors``: ``{"models": [names], "cosine": [[n x n]], "sign_conflict": [[n x n]],
  "norms": [...] (optional)}`` — any other square ``n x n`` matrix key is drawn too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import StepView, StudyView, fmt, number, numbers
from .draw import as_grid, contour_map, heatmap, series
from .figures import Figure, figure, new_figure, slugify, style

__all__ = ["connectivity_curves", "interpolation_curves", "planes", "task_vector_maps", "training_curves"]

GROUP = 6  # curves per overlay figure; more become unreadable


def _chunks(steps: list[StepView]) -> list[list[StepView]]:
    return [steps[i : i + GROUP] for i in range(0, len(steps), GROUP)]


def _slug(prefix: str, chunk: list[StepView]) -> str:
    return slugify(f"{prefix}-{chunk[0].name}" + (f"-and-{len(chunk) - 1}" if len(chunk) > 1 else ""))


@figure("train", keys=("train_loss",))
def training_curves(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for chunk in _chunks([s for s in steps if numbers(s.record.get("train_loss"))]):
        fig = new_figure(6.4, 3.2)
        ax = fig.axes[0]
        finals = []
        for i, s in enumerate(chunk):
            loss = numbers(s.record["train_loss"]) or []
            series(ax, range(1, len(loss) + 1), loss, i, s.name)
            finals.append(f"{s.name} ends at {fmt(loss[-1])} after {len(loss)} epochs")
        ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
        ax.legend()
        out.append(
            Figure(
                slug=_slug("training", chunk),
                title="Training loss",
                section="Training",
                mpl=fig,
                alt="Mean training cross-entropy per epoch (log scale): " + "; ".join(finals) + ".",
                data={s.name: s.record["train_loss"] for s in chunk},
                steps=tuple(s.name for s in chunk),
            )
        )
    return out


def _barrier_point(alphas: list[float], values: list[float]) -> tuple[float, float, float]:
    """``(alpha*, value at alpha*, height above the straight line)`` of the highest bump."""
    v0, v1 = values[0], values[-1]
    lifts = [v - ((1 - a) * v0 + a * v1) for a, v in zip(alphas, values)]
    k = int(np.nanargmax(lifts))
    return alphas[k], values[k], lifts[k]


def _curve_panels(
    study: StudyView, chunk: list[StepView], xkey: str, title: str, section: str, prefix: str
) -> Figure:
    """Loss and error along each path, the straight line between the ends drawn dotted and the
    barrier (largest lift above it) marked with a vertical bar and given in the legend."""
    fig = new_figure(8.0, 3.4, ncols=2)
    loss_ax, err_ax = fig.axes
    sentences = []
    for i, s in enumerate(chunk):
        rec = s.record
        xs = numbers(rec.get(xkey)) or []
        label = f"{s.name}: {rec.get('a', '?')} → {rec.get('b', '?')}"
        for ax, key, transform in ((loss_ax, "loss", None), (err_ax, "accuracy", "error")):
            ys = numbers(rec.get(key))
            if not ys or len(ys) != len(xs):
                continue
            if transform == "error":
                ys = [1.0 - y for y in ys]
            a_star, v_star, lift = _barrier_point(xs, ys)
            base = v_star - lift
            # The operator's own number, so the legend and the barrier table show one value.
            barrier = number((rec.get("barriers") or {}).get(f"{transform or key}_max_minus_linear"))
            barrier = lift if barrier is None else barrier
            st = style(i)
            series(ax, xs, ys, i, f"{label} (barrier {fmt(barrier)})")
            ax.plot([xs[0], xs[-1]], [ys[0], ys[-1]], color=st["color"], linestyle=":", linewidth=0.9)
            ax.vlines(a_star, base, v_star, color=st["color"], linewidth=2.5, alpha=0.7)
            line = numbers((rec.get("line") or {}).get(key))
            if line and len(line) == len(xs):
                line = [1.0 - y for y in line] if transform == "error" else line
                ax.plot(
                    xs,
                    line,
                    color=st["color"],
                    linestyle="--",
                    marker="s",
                    markersize=3,
                    markevery=max(1, len(xs) // 8),
                    label=f"{s.name}: straight line",
                )
            sentences.append(
                f"{label}: {transform or key} barrier {fmt(barrier)} at {xkey[:-1]} {fmt(a_star, 3)}, "
                f"endpoints {fmt(ys[0])} and {fmt(ys[-1])}"
            )
    loss_ax.set(xlabel=xkey[:-1], ylabel="loss", title="loss")
    err_ax.set(xlabel=xkey[:-1], ylabel="error (1 − accuracy)", title="error")
    loss_ax.legend(fontsize=7)
    err_ax.legend(fontsize=7)
    datasets = sorted({str(s.record.get("dataset", "?")) for s in chunk})
    return Figure(
        slug=_slug(prefix, chunk),
        title=title,
        section=section,
        mpl=fig,
        alt=f"{title} on {', '.join(datasets)}, {xkey[:-1]} from the first model (0) to the second (1). "
        + "; ".join(sentences)
        + ". Dotted lines join the endpoints; vertical bars mark each barrier.",
        caption="Barrier (Entezari et al. 2022) = largest rise above the dotted straight line joining the "
        "endpoint values, marked by the vertical bar; the barrier table shows the same numbers.",
        data={s.name: s.record for s in chunk},
        steps=tuple(s.name for s in chunk),
    )


@figure("interpolate", keys=("alphas", "barriers"))
def interpolation_curves(study: StudyView, steps: list[StepView]) -> list[Figure]:
    return [
        _curve_panels(study, c, "alphas", "Linear interpolation", "Loss landscape", "interpolation")
        for c in _chunks(steps)
    ]


@figure("connect", keys=("ts", "line"))
def connectivity_curves(study: StudyView, steps: list[StepView]) -> list[Figure]:
    return [
        _curve_panels(study, c, "ts", "Connecting path vs straight line", "Loss landscape", "connect")
        for c in _chunks(steps)
    ]


@figure("plane", "surface", keys=("xs", "ys"))
def planes(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        rec = s.record
        xs, ys = numbers(rec.get("xs")), numbers(rec.get("ys"))
        metrics = [
            (k, g)
            for k in ("loss", "error", "accuracy", "values", "z")
            if (g := as_grid(rec.get(k))) is not None and xs and ys and g.shape == (len(ys), len(xs))
        ]
        if not metrics:
            continue
        points = [
            (str(p.get("name", "?")), number(p.get("x")), number(p.get("y")))
            for p in rec.get("points") or []
            if isinstance(p, dict)
        ]
        marked = [(n, x, y) for n, x, y in points if x is not None and y is not None]
        fig = new_figure(4.4 * len(metrics[:2]), 3.8, ncols=len(metrics[:2]))
        for ax, (key, grid) in zip(fig.axes, metrics):
            contour_map(ax, xs, ys, grid, label=key, points=marked)
            ax.set(xlabel="x", ylabel="y", title=key)
        key, grid = metrics[0]
        at = [f"{n} at ({fmt(x, 3)}, {fmt(y, 3)})" for n, x, y in marked]
        out.append(
            Figure(
                slug=slugify(f"plane-{s.name}"),
                title=f"{s.name}: {key} over a plane",
                section="Loss landscape",
                mpl=fig,
                data=rec,
                steps=(s.name,),
                alt=f"Contour map of {key} on {rec.get('dataset', '?')} over a {len(xs)} by {len(ys)} grid; "
                f"{key} ranges from {fmt(float(np.nanmin(grid)))} to {fmt(float(np.nanmax(grid)))}. "
                + ("Models marked: " + ", ".join(at) + "." if at else ""),
            )
        )
    return out


def _square_matrices(rec: dict[str, Any], n: int) -> list[tuple[str, np.ndarray]]:
    return [(k, g) for k, v in rec.items() if (g := as_grid(v)) is not None and g.shape == (n, n)]


@figure("task_vectors", keys=("models", "cosine"))
def task_vector_maps(study: StudyView, steps: list[StepView]) -> list[Figure]:
    out = []
    for s in steps:
        names = [str(m) for m in s.record.get("models") or []]
        mats = _square_matrices(s.record, len(names))
        if not mats:
            continue
        fig = new_figure(3.6 * len(mats), 3.4, ncols=len(mats))
        sentences = []
        for ax, (key, grid) in zip(fig.axes, mats):
            signed = key == "cosine"
            heatmap(
                ax,
                grid,
                xlabels=names,
                ylabels=names,
                cmap="RdBu_r" if signed else "viridis",
                vmin=-1.0 if signed else None,
                vmax=1.0 if signed else None,
                colorbar=key,
                origin="upper",
            )
            ax.set_title(key.replace("_", " "))
            off = grid[~np.eye(len(names), dtype=bool)]
            if off.size:
                sentences.append(
                    f"{key.replace('_', ' ')} between distinct models from "
                    f"{fmt(float(np.nanmin(off)), 3)} to {fmt(float(np.nanmax(off)), 3)}"
                )
        out.append(
            Figure(
                slug=slugify(f"task-vectors-{s.name}"),
                title=f"{s.name}: task-vector geometry",
                mpl=fig,
                section="Task vectors",
                data=s.record,
                steps=(s.name,),
                alt=f"Heatmaps over the task vectors of {', '.join(names)} (cell values written in): "
                + "; ".join(sentences)
                + ".",
            )
        )
    return out
