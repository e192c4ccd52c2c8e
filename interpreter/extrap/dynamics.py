"""What an iterative net does while it iterates: free-running trajectories h1, h2, ... (plain
applications of the update, never the solver's stopping rule) analysed per maze.

- Residual norms ‖h(k+1) − h(k)‖ at every iteration.
- Over the last ``window`` iterations: a *fixed point* when ‖h(k) − h(k−1)‖ ≤ tol·‖h(k)‖ throughout,
  else a *cycle* of the smallest period p ≤ ``max_period`` with ‖h(k) − h(k−p)‖ ≤ tol·‖h(k)‖
  throughout (exact distances, from a ring buffer of the last p states). The counts split cycles
  into 2-cycles and longer ones (the seed paper's Table 1 question: DT-Nets end in 2-cycles).
- A PCA projection of the window's trajectory and, when ``ripser`` is installed, Betti numbers
  [B0, B1] of it. States are huge (width × pixels), so both work on a count-sketch of each state
  (a random ±1 bucketing that preserves distances in expectation), of ``sketch`` dimensions.
- Agreement with the dead-end-filling oracle: the share of mazes whose prediction equals the pixels
  that dead-end filling leaves open, at log-spaced iterations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .batches import autocast, batches, is_maze, prepare_model
from .evaluation import predictions
from .mazes import OPEN, upscale
from .models import IterativeNet

__all__ = ["DETECT", "analyse", "deadend_fill", "classify", "betti_numbers"]

DETECT = ("fixed_point", "cycle", "pca", "betti", "deadend")


def deadend_fill(grid: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool: the open pixels left after repeatedly filling dead ends (open pixels other
    than the endpoints with at most one open 4-neighbour). On a perfect maze: exactly the path."""
    keep = grid > 0
    ends = keep & (grid != OPEN)
    while True:
        k = torch.nn.functional.pad(keep, (1, 1, 1, 1))
        degree = k[:, :-2, 1:-1].int() + k[:, 2:, 1:-1] + k[:, 1:-1, :-2] + k[:, 1:-1, 2:]
        new = keep & ((degree >= 2) | ends)
        if torch.equal(new, keep):
            return keep
        keep = new


def classify(dist: np.ndarray, norms: np.ndarray, tol: float) -> tuple[str, int]:
    """From distances ``dist[p-1, t] = ‖h(t) − h(t−p)‖`` over the window and state norms ``norms[t]``,
    the smallest period whose distances stay within ``tol`` of the norm: ("fixed_point", 1),
    ("cycle", p) or ("none", 0)."""
    for p in range(1, dist.shape[0] + 1):
        if np.all(dist[p - 1] <= tol * np.maximum(norms, 1e-12)):
            return ("fixed_point", 1) if p == 1 else ("cycle", p)
    return "none", 0


def betti_numbers(points: np.ndarray, threshold: float) -> list[int]:
    """[B0, B1] of a point cloud: persistence bars longer than ``threshold`` × its diameter."""
    try:
        from ripser import ripser
    except ImportError as exc:
        raise ValueError("Betti numbers need the optional 'ripser' package: pip install 'mlspec[topology]'") from exc
    diameter = float(np.ptp(points, axis=0).max()) if len(points) > 1 else 0.0
    bars = ripser(points.astype(np.float64), maxdim=1)["dgms"]
    return [int(np.sum((d[:, 1] - d[:, 0]) > threshold * diameter)) for d in bars]


def analyse(
    model: IterativeNet, tensors: dict[str, torch.Tensor], *, iterations: int, window: int = 400,
    detect: tuple[str, ...] = ("fixed_point", "cycle"), max_period: int = 8, tol: float = 1e-3,
    sketch: int = 256, pca_samples: int = 4, betti_threshold: float = 0.1, batch_size: int = 64,
    seed: int = 0, device: str = "cpu",
) -> dict[str, Any]:
    """Run ``iterations`` free-running steps on every sample and report the dynamics (JSON-able)."""
    unknown = sorted(set(detect) - set(DETECT))
    if unknown:
        raise ValueError(f"unknown dynamics detector {unknown[0]!r} (known: {', '.join(DETECT)})")
    if "deadend" in detect and not is_maze(tensors):
        raise ValueError("the dead-end-filling oracle applies to mazes only")
    window = min(window, iterations)
    checkpoints = sorted({int(k) for k in np.unique(np.geomspace(1, iterations, 24).round())} | {iterations})
    model = prepare_model(model, device).eval()
    residuals, per_sample, sketches, agree = [], [], [], []
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), autocast(device):
        for b in batches(tensors, batch_size, device):
            oracle = upscale(deadend_fill(b.grid)) if "deadend" in detect else None
            h = model.initial_state(b.x)
            dim = h[0].numel()
            bucket = torch.randint(0, sketch, (dim,), generator=g).to(device)
            sign = (torch.randint(0, 2, (dim,), generator=g) * 2 - 1).to(device)
            ring = [h.float()]  # the last max_period + 1 states
            res = np.zeros((len(b.x), iterations))
            dist = np.zeros((len(b.x), max_period, window))
            norm = np.zeros((len(b.x), window))
            sk = np.zeros((len(b.x), window, sketch), dtype=np.float32)
            hits = []
            for k in range(1, iterations + 1):
                h = model.step(b.x, h, k - 1)
                cur = h.float()
                res[:, k - 1] = (cur - ring[-1]).flatten(1).norm(dim=1).cpu().numpy()
                ring = (ring + [cur])[-(max_period + 1):]
                t = k - (iterations - window) - 1
                if t >= 0:
                    flat = cur.flatten(1)
                    norm[:, t] = flat.norm(dim=1).cpu().numpy()
                    for p in range(1, min(max_period, len(ring) - 1) + 1):
                        dist[:, p - 1, t] = (cur - ring[-1 - p]).flatten(1).norm(dim=1).cpu().numpy()
                    sk[:, t] = torch.zeros(len(flat), sketch, device=flat.device).index_add_(
                        1, bucket, flat * sign).cpu().numpy()
                if oracle is not None and k in checkpoints:
                    pred = predictions(model.readout(h), b.mask).bool()
                    hits.append((pred == oracle).flatten(1).all(1).cpu().numpy())
            residuals.append(res)
            sketches.append(sk)
            valid = np.arange(window) >= max(0, max_period - (iterations - window))  # distances defined
            per_sample += [classify(d[:, valid], n[valid], tol) for d, n in zip(dist, norm)]
            if hits:
                agree.append(np.stack(hits, 1))
    return _summary(np.concatenate(residuals), per_sample, np.concatenate(sketches), agree, checkpoints,
                    detect=detect, iterations=iterations, window=window, pca_samples=pca_samples,
                    betti_threshold=betti_threshold)


def _summary(res: np.ndarray, per_sample: list[tuple[str, int]], sk: np.ndarray, agree: list[np.ndarray],
             checkpoints: list[int], *, detect: tuple[str, ...], iterations: int, window: int,
             pca_samples: int, betti_threshold: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iterations": iterations,
        "window": window,
        "count": len(res),
        "residual": {"mean": res.mean(0).tolist(), "median": np.median(res, 0).tolist(),
                     "final": res[:, -1].tolist()},
    }
    kinds = [k for k, _ in per_sample]
    if "fixed_point" in detect or "cycle" in detect:
        periods = [p for _, p in per_sample]
        out["limit"] = {"kind": kinds, "period": periods, "counts": {
            "fixed_point": kinds.count("fixed_point"), "cycle_2": periods.count(2),
            "cycle_longer": sum(p > 2 for p in periods), "none": kinds.count("none")}}
    if "pca" in detect or "betti" in detect:
        out["pca"] = []
        for s in sk[:pca_samples]:
            centred = s - s.mean(0)
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
            ratio = (sv**2 / max(float((sv**2).sum()), 1e-30))[:2]
            out["pca"].append({"points": (centred @ vt[:2].T).tolist(), "explained": ratio.tolist()})
    if "betti" in detect:
        out["betti"] = [betti_numbers(s, betti_threshold) for s in sk[:pca_samples]]
    if agree:
        a = np.concatenate(agree)
        out["deadend"] = {"iterations": checkpoints, "agreement": a.mean(0).tolist()}
    return out
