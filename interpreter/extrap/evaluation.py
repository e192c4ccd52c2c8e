"""Evaluating an iterative net at many iteration budgets, every budget read from ONE unrolled pass.

Correctness per sample:

- ``exact`` — the masked argmax equals the target at every pixel (DeepThinking's accuracy).
- ``valid_path`` — exact, *or* the prediction is a minimal valid path (as in Knutson et al.): every
  2x2 tile uniform, only open pixels used, start and end included, one 4-connected component, and as
  many pixels as the target. A connected set that holds both endpoints and is no larger than a
  shortest path *is* a shortest path, so mazes with several shortest paths (percolation) count any.

Per-pixel accuracy is measured over the masked (non-wall) pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .batches import Batch, autocast, batches, is_maze, prepare_model
from .mazes import END, START
from .models import IterativeNet
from .training import predictions, solved

__all__ = ["CORRECTNESS", "evaluate", "minimal_paths", "predictions"]

CORRECTNESS = ("exact", "valid_path")
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = ndimage.generate_binary_structure(2, 1)  # 4-connectivity inside each maze, none across


def minimal_paths(pred: torch.Tensor, target: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """(B,) bool: each prediction (B, 2n+6, 2n+6) is a minimal valid start→end path in its grid."""
    tiles = pred[:, 1:-1, 1:-1].unflatten(1, (-1, 2)).unflatten(3, (-1, 2))  # (B, S, 2, S, 2)
    uniform = (tiles.amax((2, 4)) == tiles.amin((2, 4))).flatten(1).all(1)
    cells = tiles[:, :, 0, :, 0].bool()  # (B, S, S) the compact picture of the prediction
    grid = grid.to(cells.device)
    inside = ~(cells & (grid == 0)).flatten(1).any(1)
    ends = cells[grid == START].view(-1, 1).all(1) & cells[grid == END].view(-1, 1).all(1)
    same_size = cells.flatten(1).sum(1) * 4 == target.flatten(1).sum(1)
    labels, _ = ndimage.label(cells.cpu().numpy(), structure=_PLANE)
    components = [len(np.unique(plane[plane > 0])) for plane in labels]
    connected = torch.tensor(components, device=cells.device) == 1
    return uniform & inside & ends & same_size & connected


def evaluate(
    model: IterativeNet, tensors: dict[str, torch.Tensor], *, budgets: Sequence[int],
    correctness: str = "exact", batch_size: int = 256, device: str = "cpu", examples: int = 0,
) -> dict[str, Any]:
    """Solved fraction and per-pixel accuracy at every budget; a JSON-able dict.

    With ``examples`` > 0 (mazes only) it also keeps that many solved and that many failed mazes
    at the largest budget as compact pictures — ``{"input", "target", "prediction", "correct",
    "size"}``, cells 0 wall / 1 open / 2 start / 3 end — for the report to draw."""
    if correctness not in CORRECTNESS:
        raise ValueError(f"correctness must be one of {', '.join(CORRECTNESS)} (not {correctness!r})")
    if correctness == "valid_path" and not is_maze(tensors):
        raise ValueError("correctness valid_path applies to mazes only; use exact")
    budgets = sorted(set(int(b) for b in budgets))
    model = prepare_model(model, device).eval()
    hits = np.zeros(len(budgets))
    exact_hits = np.zeros(len(budgets))
    right_pixels = np.zeros(len(budgets))
    n = pixels = 0
    with torch.no_grad(), autocast(device):
        kept: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for b in batches(tensors, batch_size, device):
            for i, logits in enumerate(model(b.x, at=budgets)):
                pred = predictions(logits, b.mask)  # once per budget: every measure below reads it
                exact = solved(pred, b.y)
                correct = exact if correctness == "exact" else _valid_path(exact, pred, b)
                hits[i] += int(correct.sum())
                exact_hits[i] += int(exact.sum())
                right_pixels[i] += int(((pred == b.y) & b.mask).sum())
                if i == len(budgets) - 1 and examples and b.grid is not None:
                    _keep_examples(kept, examples, b, pred, correct)
            n += len(b.x)
            pixels += int(b.mask.sum())
    result = {
        "iterations": budgets,
        "accuracy": (hits / max(n, 1)).tolist(),
        "pixel_accuracy": (right_pixels / max(pixels, 1)).tolist(),
        "count": n,
        "correctness": correctness,
    }
    if correctness != "exact":  # the strict score beside it: a gap means other minimal paths were found
        result["exact_accuracy"] = (exact_hits / max(n, 1)).tolist()
    if examples and is_maze(tensors):
        result["mazes"] = kept[False] + kept[True]  # failures first
    return result


def _keep_examples(kept: dict[bool, list[dict[str, Any]]], limit: int, b: Batch, pred: torch.Tensor,
                   correct: torch.Tensor) -> None:
    """Add compact pictures (one value per 2x2 tile) of a batch's mazes until ``limit`` of each verdict."""
    assert b.grid is not None
    for j in range(len(correct)):
        verdict = bool(correct[j])
        if len(kept[verdict]) >= limit:
            continue
        grid = b.grid[j]
        kept[verdict].append({
            "input": grid.tolist(),
            "target": b.y[j, 1:-1:2, 1:-1:2].tolist(),  # the tile grid: (n+2) x (n+2), like the input
            "prediction": pred[j, 1:-1:2, 1:-1:2].tolist(),
            "correct": verdict,
            "size": int(grid.shape[-1]) - 2,
        })


def _valid_path(exact: torch.Tensor, pred: torch.Tensor, b: Batch) -> torch.Tensor:
    if b.grid is None:
        return exact
    return exact | minimal_paths(pred, b.y, b.grid)
