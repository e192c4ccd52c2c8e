"""Batched maze generation in the DeepThinking pixel format.

A maze of *size* n (odd, the DeepThinking convention) has ``m = (n + 1) // 2`` cells per side. Its
compact *grid* is the ``(2m+1) x (2m+1) = (n+2) x (n+2)`` pixel picture of the lattice: cell (i, j)
sits at pixel (1+2i, 1+2j), the passage between two neighbouring cells at the pixel between them, and
the outer ring is wall. Codes: 0 wall, 1 open, 2 start, 3 end. The *path* is a 0/1 picture of the same
shape: the cells and passages of one shortest start→end path, endpoints included.

:func:`to_pixels` turns those into the DeepThinking tensors (each pixel a 2x2 tile plus a one-pixel
black border, side ``2n+6``): inputs ``N x 3 x H x W`` float (walls 0, open 1, start green (0,1,0),
end red (1,0,0)) and targets ``N x H x W`` int64 in {0, 1}. Datasets store the compact form (16x
smaller); models upscale on their device.

Every generator advances a whole batch of mazes in lock-step with array operations, never one
maze at a time in Python:

- ``dfs`` — recursive backtracker; each maze pushes and pops every cell once, so a batch finishes in
  exactly ``2V - 2`` vectorised steps.
- ``wilson`` — loop-erased random walks (uniform spanning tree), walkers of all mazes stepping at once.
- ``kruskal`` — Kruskal's algorithm (edges in random order, union-find), one edge per maze per step.
- ``percolation`` — every edge open with probability p (isolated cells are drawn as wall).
- ``dfs_percolation`` — a dfs maze whose remaining inner walls open with probability p. Any tree
  generator accepts ``percolation > 0`` the same way, so a percolation axis can sweep a dfs task.

Shortest paths come from one breadth-first search over the whole batch (a virtual source linked to
every maze's start).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order

__all__ = ["GENERATORS", "Mazes", "CompactMazes", "generate", "generate_compact", "to_pixels", "upscale", "cells_per_side"]

GENERATORS = ("dfs", "wilson", "kruskal", "percolation", "dfs_percolation")
WALL, OPEN, START, END = 0, 1, 2, 3
_STEP = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]])  # east, south, west, north as (di, dj)
_OPPOSITE = np.array([2, 3, 0, 1])
_MAX_ATTEMPTS_PER_MAZE = 50


class CompactMazes(NamedTuple):
    grid: np.ndarray  # (N, n+2, n+2) uint8: 0 wall, 1 open, 2 start, 3 end
    path: np.ndarray  # (N, n+2, n+2) uint8: 1 on the shortest path


class Mazes(NamedTuple):
    inputs: torch.Tensor  # (N, 3, 2n+6, 2n+6) float32
    targets: torch.Tensor  # (N, 2n+6, 2n+6) int64


def cells_per_side(size: int) -> int:
    if not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise ValueError(f"maze size must be an odd integer >= 3, e.g. 9 or 59 (not {size!r})")
    return (size + 1) // 2


def _neighbours(m: int) -> np.ndarray:
    """(V, 4) index of the neighbour of each cell in each direction, -1 outside the lattice."""
    i, j = np.divmod(np.arange(m * m), m)
    ni, nj = i[:, None] + _STEP[:, 0], j[:, None] + _STEP[:, 1]
    inside = (ni >= 0) & (ni < m) & (nj >= 0) & (nj < m)
    return np.where(inside, ni * m + nj, -1)


def _random_choice(rng: np.random.Generator, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One uniformly random allowed column per row of a boolean (N, K) array, and whether any was."""
    keys = np.where(allowed, rng.random(allowed.shape), -1.0)
    return keys.argmax(axis=1), allowed.any(axis=1)


def _open_edge(opened: np.ndarray, rows: np.ndarray, cell: np.ndarray, d: np.ndarray, nbr: np.ndarray) -> None:
    """Open the passage from ``cell`` in direction ``d`` (both of its sides) in mazes ``rows``."""
    flat, V = opened.reshape(-1), opened.shape[1]  # a view: flat indices beat 3-d fancy indexing
    flat[(rows * V + cell) * 4 + d] = True
    flat[(rows * V + nbr.ravel()[cell * 4 + d]) * 4 + _OPPOSITE[d]] = True


def _tree(up: np.ndarray, root: np.ndarray, nbr: np.ndarray) -> np.ndarray:
    """(N, V, 4) passages of N trees from (N, V) directions from each cell towards its parent
    (ignored at the (N,) roots)."""
    count, V = up.shape
    rows, cells = np.nonzero(np.arange(V) != root[:, None])
    opened = np.zeros((count, V, 4), dtype=bool)
    _open_edge(opened, rows, cells, up[rows, cells], nbr)
    return opened


def _pick_table() -> np.ndarray:
    """(12 * 16,): for a draw r in [0, 12) and a 4-bit mask of the free directions, index r * 16 + mask,
    the (r mod count)-th free direction — uniform, as 12 is a multiple of 1..4 — or 4 when none is."""
    table = np.full(12 * 16, 4)
    for mask in range(1, 16):
        free = [k for k in range(4) if mask >> k & 1]
        table[np.arange(12) * 16 + mask] = np.array(free)[np.arange(12) % len(free)]
    return table


_PICK = _pick_table()
_PUSH = np.array([1, 1, 1, 1, -1])  # stack pointer change per direction (4: nowhere to go, pop)


def _dfs(rng: np.random.Generator, count: int, m: int) -> np.ndarray:
    """(N, V, 4) open passages of recursive-backtracker mazes, all N advanced together.

    Each cell is pushed and popped once, so every maze takes exactly 2V - 2 steps, and every step
    is the same few array operations for all mazes: the visited flags of the current cell's four
    neighbours, packed into 4 bits, and a random draw pick the direction from :data:`_PICK`
    (uniform among the unvisited ones, or 4: pop). Direction 4 and the lattice's outside lead to
    a sentinel cell, so a pop's writes land there instead of needing masks.
    """
    nbr, V = _neighbours(m), m * m
    W = V + 1  # cells per maze plus the sentinel (always visited; slot V of the stack is scratch)
    inside = np.where(nbr >= 0, nbr, V)
    move = np.concatenate([inside, np.full((V, 1), V)], axis=1).ravel()  # cell * 5 + direction
    base = np.arange(count) * W
    visited = np.zeros(count * W, dtype=bool)
    came = np.zeros(count * W, dtype=np.int64)  # the direction each cell was carved into by
    stack = np.zeros(count * W, dtype=np.int64)
    top = np.zeros(count, dtype=np.int64)
    pos = rng.integers(0, V, count)
    visited[base + V] = visited[base + pos] = True
    stack[base] = pos
    for draw in rng.integers(0, 12, (2 * V - 2, count), dtype=np.int16) * 16:
        free = np.packbits(~visited[base[:, None] + inside[pos]], axis=1, bitorder="little")[:, 0]
        d = _PICK[draw + free]
        nxt = move[pos * 5 + d]
        visited[base + nxt] = True
        came[base + nxt] = d
        top += _PUSH[d]
        slot = base + top
        stack[np.where(d < 4, slot, base + V)] = nxt
        pos = stack[slot]
    return _tree(_OPPOSITE[came.reshape(count, W)[:, :V]], stack[base], nbr)


def _wilson(rng: np.random.Generator, count: int, m: int) -> np.ndarray:
    """(N, V, 4) open passages of uniform spanning trees by Wilson's algorithm.

    Every maze takes one move per vectorised step, with no phases and no branches: a maze that
    *seeks* tries the next cell of a scan over the lattice as the start of its next walk; a maze that
    *walks* moves to a random neighbour. Per maze, ``order`` lists the tree's cells followed by the
    current walk's loop-erased path and ``slot`` says where each cell sits in it, so one lookup tells
    whether the new cell is in the tree (the walk joins it: its path becomes tree, the maze seeks),
    on the path (a loop: the path is cut back to it) or new (appended) — loop erasure without a
    retracing phase. Each cell remembers the direction it was last left by, which is its tree edge
    once it joins. Uniform for any root and any start order; the centre root shortens the walks.
    """
    nbr, V = _neighbours(m), m * m
    valid = nbr >= 0
    packed = np.argsort(~valid, axis=1, kind="stable")  # valid directions first
    pick = np.arange(12) % valid.sum(1)[:, None]  # 12 draws map uniformly onto 2, 3 or 4 neighbours
    move_dir = np.take_along_axis(packed, pick, 1)  # (V, 12)
    move_to = np.take_along_axis(nbr, move_dir, 1).ravel()
    move_dir = move_dir.ravel()
    W = V + 1  # cell slots per maze; slot V is a parking cell, in the tree from the start
    base = np.arange(count) * W
    order, slot, exit_dir = (np.zeros(count * W, dtype=np.int64) for _ in range(3))
    root = (m // 2) * m + m // 2
    order[base], order[base + 1] = root, V
    slot[base + root], slot[base + V] = 0, 1
    committed, top = np.full(count, 2), np.full(count, 1)  # tree = order[:committed], path = order[committed:top+1]
    pos, scan, seeking = np.full(count, root), np.zeros(count, dtype=np.int64), np.ones(count, dtype=bool)
    while scan.min() <= V:  # a maze is done once it has sought the parking cell
        for draw in rng.integers(0, 12, (64, count)):
            move = pos * 12 + draw
            nxt = np.where(seeking, np.minimum(scan, V), move_to[move])
            exit_dir[base + np.where(seeking, V, pos)] = move_dir[move]  # seekers write the parking cell
            cell = base + nxt
            s = slot[cell]
            known = (s <= top) & (order[base + s] == nxt)
            hit = known & (s < committed)
            write = np.where(known, s, top + 1)  # rewriting a known cell's entries changes nothing
            order[base + write] = nxt
            slot[cell] = write
            committed = np.where(hit, top + 1, committed)
            top = np.where(hit, top, write)
            scan += seeking
            pos = np.where(hit, pos, nxt)
            seeking = hit
    return _tree(exit_dir.reshape(count, W)[:, :V], np.full(count, root), nbr)


def _edge_list(m: int) -> tuple[np.ndarray, np.ndarray]:
    """The east and south edges of the lattice as (E,) cell and (E,) direction arrays."""
    cells = np.arange(m * m)
    i, j = np.divmod(cells, m)
    east, south = cells[j < m - 1], cells[i < m - 1]
    return np.concatenate([east, south]), np.concatenate([np.zeros_like(east), np.ones_like(south)])


def _kruskal(rng: np.random.Generator, count: int, m: int) -> np.ndarray:
    """(N, V, 4) open passages of Kruskal mazes: every maze takes its lattice edges in its own random
    order and keeps each edge that joins two components, all mazes one edge per vectorised step.

    Union-find linking the root with the smaller label under the other, each step's two cells
    pointed straight at their roots afterwards; which edges are kept does not depend on how roots
    are linked. Labels are a fixed shuffle of the cells: with row-major labels the root of a
    component is its bottom-right cell and top-left cells sink under one root after another, while
    shuffled labels link like coin flips, so trees stay shallower and finds need fewer lookups (the
    slowest find in each step sets its cost). A random order is what Kruskal's algorithm on iid
    random weights sees.
    """
    nbr, V = _neighbours(m), m * m
    cell, d = _edge_list(m)
    E = cell.size
    order = rng.permuted(np.tile(np.arange(E, dtype=np.intp), (count, 1)), axis=1)  # (N, E)
    joined = _kruskal_joins(order, m)
    opened = np.zeros((count, V, 4), dtype=bool)
    t, rows = np.nonzero(joined)
    edge = order.ravel().take(rows * E + t)
    _open_edge(opened, rows, cell.take(edge), d.take(edge), nbr)
    return opened


def _kruskal_joins(order: np.ndarray, m: int) -> np.ndarray:
    """(E, N) whether the t-th edge of each maze's (N, E) ``order`` (indices into
    :func:`_edge_list`) joins two components of the edges before it."""
    count, E = order.shape
    nbr, V = _neighbours(m), m * m
    cell, d = _edge_list(m)
    label = _shuffled_labels(V)
    # Indices are intp, numpy's own index type: int32 ones are converted on every gather and
    # scatter, which costs more than the gather itself at these sizes (the loop is E steps long).
    # Each step's 2N edge ends are one contiguous row (a0, b0, a1, b1, ...): a flat ``take`` from
    # a 1-d index is several times cheaper than fancy indexing with a 2-d one.
    steps = label[np.stack([cell, nbr[cell, d]], axis=1)].take(order.T, axis=0)  # (E, N, 2)
    steps += (np.arange(count, dtype=np.intp) * V)[:, None]  # node n*V + label
    steps = steps.reshape(E, 2 * count)
    parent = np.arange(count * V, dtype=np.intp)
    joined = np.zeros((E, count), dtype=bool)
    for t in range(E):
        ends = steps[t]
        root = parent.take(ends)
        while True:  # two hops up per convergence test (a root's parent is itself)
            root = parent.take(root)
            up = parent.take(root)
            if (up == root).all():
                break
            root = up
        parent[ends] = root
        low, high = np.minimum(root[0::2], root[1::2]), np.maximum(root[0::2], root[1::2])
        np.not_equal(low, high, out=joined[t])
        parent[low] = high  # a no-op (a root onto itself) where both ends share a root
    return joined


def _shuffled_labels(V: int) -> np.ndarray:
    """A fixed pseudo-random relabelling of V cells (union-find node names only, never output)."""
    return np.random.default_rng(V).permutation(V).astype(np.intp)


def _percolate(rng: np.random.Generator, opened: np.ndarray, p: float, m: int) -> np.ndarray:
    """Open every inner wall independently with probability p (the outer wall stays)."""
    nbr = _neighbours(m)
    cell, d = _edge_list(m)
    extra = rng.random((opened.shape[0], cell.size)) < p
    r, e = np.nonzero(extra)
    _open_edge(opened, r, cell[e], d[e], nbr)
    return opened


def _carve(rng: np.random.Generator, generator: str, count: int, m: int, p: float) -> np.ndarray:
    if generator == "percolation":
        return _percolate(rng, np.zeros((count, m * m, 4), dtype=bool), p, m)
    tree = {"dfs": _dfs, "dfs_percolation": _dfs, "wilson": _wilson, "kruskal": _kruskal}[generator]
    opened = tree(rng, count, m)
    return _percolate(rng, opened, p, m) if p > 0 else opened


def _solve(
    rng: np.random.Generator, opened: np.ndarray, m: int, deadend_start: bool
) -> tuple[np.ndarray, CompactMazes]:
    """Pick endpoints and draw mazes with their shortest paths; returns (valid mask, mazes)."""
    N, V, _ = opened.shape
    degree = np.bitwise_count(opened.view(np.uint32)[..., 0])  # the 4 passage flags of a cell, one word
    start, ok = _random_choice(rng, degree == 1 if deadend_start else degree >= 1)
    # One BFS for the batch over node n*V + cell, plus a virtual source (node N*V) linked to every
    # valid maze's start. The adjacency comes out of np.flatnonzero already in CSR order.
    src = N * V
    passage = np.flatnonzero(opened)  # (node * 4 + direction), ascending
    neighbour = (passage >> 2) + np.array([1, m, -1, -m])[passage & 3]
    starts = np.flatnonzero(ok) * V + start[ok]
    indptr = np.concatenate([[0], np.cumsum(degree, axis=None), [passage.size + starts.size]])
    indices = np.concatenate([neighbour, starts])
    graph = csr_matrix((np.ones(indices.size), indices, indptr), shape=(src + 1, src + 1))
    _, pred = breadth_first_order(graph, src, directed=True, return_predecessors=True)
    reachable = (pred[:src] >= 0).reshape(N, V)
    reachable[np.arange(N), start] = False
    end, has_end = _random_choice(rng, reachable)
    ok &= has_end

    side = 2 * m + 1
    grid = np.zeros((N, side, side), dtype=np.uint8)
    grid[:, 1::2, 1::2] = (degree > 0).reshape(N, m, m)
    grid[:, 1::2, 2:-1:2] = opened[:, :, 0].reshape(N, m, m)[:, :, :-1]
    grid[:, 2:-1:2, 1::2] = opened[:, :, 1].reshape(N, m, m)[:, :-1, :]
    # Trace every path back from its end at once. A start is its own predecessor, so finished
    # paths keep re-marking their start; the passage between two cells is the mean of their pixels.
    row, col = np.divmod(np.arange(V), m)
    pixel = (np.arange(N) * (side * side))[:, None] + ((1 + 2 * row) * side + 1 + 2 * col)  # flat pixel of each node
    pixel = pixel.ravel()
    parent = pred[:src]
    parent[parent == src] = np.flatnonzero(parent == src)  # a start is its own predecessor
    path = np.zeros(N * side * side, dtype=np.uint8)
    node = np.flatnonzero(ok) * V + end[ok]
    here = pixel[node]
    path[here] = 1
    while True:
        node_up = parent[node]
        up = pixel[node_up]
        path[(here + up) >> 1] = 1
        path[up] = 1
        if np.array_equal(node_up, node):
            break
        node, here = node_up, up
    idx = np.nonzero(ok)[0]
    grid[idx, 1 + 2 * (start[idx] // m), 1 + 2 * (start[idx] % m)] = START
    grid[idx, 1 + 2 * (end[idx] // m), 1 + 2 * (end[idx] % m)] = END
    return ok, CompactMazes(grid, path.reshape(N, side, side))


def _batch_cap(m: int) -> int:
    """Mazes per lock-step batch: large enough to amortise each vectorised step, bounded in memory."""
    return int(np.clip(2**21 // (m * m), 64, 4096))


def generate_compact(
    *,
    generator: str = "dfs",
    size: int = 9,
    count: int = 1000,
    percolation: float = 0.0,
    deadend_start: bool = True,
    seed: int = 0,
) -> CompactMazes:
    """``count`` mazes in the compact form (see the module docstring). Deterministic per argument set.

    Raises ``ValueError`` on bad settings, and when a setting yields too few valid mazes (e.g.
    dead-end starts in very open mazes) rather than returning fewer.
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown maze generator {generator!r} (known: {', '.join(GENERATORS)})")
    m = cells_per_side(size)
    if not 0.0 <= percolation <= 1.0:
        raise ValueError(f"percolation must lie in [0, 1] (not {percolation!r})")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"maze count must be a positive integer (not {count!r})")
    rng = np.random.default_rng([seed, 0x6D617A65])
    # a spanning tree always has a leaf to start from and another cell to end at
    always_valid = generator in ("dfs", "wilson", "kruskal") and percolation == 0.0
    grids, paths, found, attempts = [], [], 0, 0
    while found < count:
        if attempts >= _MAX_ATTEMPTS_PER_MAZE * count:
            raise ValueError(
                f"only {found} of {count} requested {generator} mazes of size {size} with percolation "
                f"{percolation} and deadend_start={deadend_start} were valid after {attempts} attempts "
                "(a start needs an open neighbour — exactly one for dead-end starts — and a distinct "
                "reachable end); lower the percolation or set deadend_start = false"
            )
        yield_rate = found / attempts if found else 1.0
        margin = 1.0 if always_valid else 1.1
        batch = min(_batch_cap(m), max(16, int((count - found) * margin / max(yield_rate, 0.02)) + 1))
        ok, mazes = _solve(rng, _carve(rng, generator, batch, m, percolation), m, deadend_start)
        attempts += batch
        grids.append(mazes.grid[ok])
        paths.append(mazes.path[ok])
        found += int(ok.sum())
    return CompactMazes(np.concatenate(grids)[:count], np.concatenate(paths)[:count])


_COLOURS = torch.tensor([[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)  # (r, g, b) per code
_LABELS = torch.tensor([0, 1], dtype=torch.long)  # path pixel -> target class
_CHUNK = 64  # pictures per step on the CPU: the intermediates stay small and reused


def _tile(a: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """(N, ..., S, S) -> (N, ..., 2S+2, 2S+2): every pixel a 2x2 tile, plus a one-pixel frame that
    repeats the outer ring. With a ``table``, ``a`` holds codes that become their table entries
    first: a (K,) table keeps the shape, a (K, C) one adds channels, (N, S, S) -> (N, C, ...).

    Two gathers, columns then whole rows. On the CPU numpy does them chunk by chunk straight into
    the result: ``take`` copies whole rows, never waits for torch's worker threads on a busy
    machine, and the only fresh memory is the result, which numpy puts on transparent huge pages."""
    s = a.shape[-1]
    index = ((torch.arange(2 * s + 2) - 1) // 2).clamp(0, s - 1)  # output row -> input row
    if a.device.type != "cpu":
        if table is not None:
            a = table.to(a.device)[a.long()]
            a = a.movedim(-1, 1) if table.dim() == 2 else a
        on_device = index.to(a.device)
        return a.index_select(-1, on_device).index_select(-2, on_device)
    src, rows = a.numpy(), index.numpy()
    lut = None if table is None else table.numpy()
    inner = src.shape[1:-2] if lut is None else lut.shape[1:]
    out = np.empty((len(src), *inner, 2 * s + 2, 2 * s + 2), dtype=src.dtype if lut is None else lut.dtype)
    # With a table, codes are looked up on the compact picture, in the narrowest integer type that
    # holds the table; those small values are tiled and widened once, straight into the result:
    # lookups per tiled pixel and gathers of the wide values are what cost here.
    small = None if lut is None else lut.astype(np.uint8) if np.array_equal(lut, lut.astype(np.uint8)) else lut
    for lo in range(0, len(src), _CHUNK):
        part, into = src[lo : lo + _CHUNK], out[lo : lo + _CHUNK]
        if small is None:
            part.take(rows, axis=-1).take(rows, axis=-2, out=into, mode="clip")
            continue
        codes = part.astype(np.intp)
        for channel in range(small.shape[1]) if small.ndim == 2 else [None]:
            values = small.take(codes) if channel is None else small[:, channel].take(codes)
            tiled = values.take(rows, axis=-1).take(rows, axis=-2)
            np.copyto(into if channel is None else into[:, channel], tiled, casting="unsafe")
    return torch.from_numpy(out)


def upscale(a: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Compact picture (..., S, S) -> (..., 2S+2, 2S+2): every pixel a 2x2 tile, then a one-pixel
    border that repeats the outer ring — zero (wall) in every compact picture, so a black frame."""
    s = a.shape[-1]
    flat = (a if dtype is None else a.to(dtype)).reshape(-1, s, s)
    return _tile(flat).reshape(*a.shape[:-2], 2 * s + 2, 2 * s + 2)


def to_pixels(grid: torch.Tensor, path: torch.Tensor | None = None) -> Mazes:
    """DeepThinking tensors from compact grids (on the grids' device): 2x2 tiles plus a black border.

    Colours and labels are table lookups on the compact pixels, done while tiling."""
    x = _tile(grid, _COLOURS)  # (N, 3, 2n+6, 2n+6) float32
    y = torch.empty(0, dtype=torch.long) if path is None else _tile(path, _LABELS)  # (N, 2n+6, 2n+6) int64
    return Mazes(x, y)


def generate(
    *,
    generator: str = "dfs",
    size: int = 9,
    count: int = 1000,
    percolation: float = 0.0,
    deadend_start: bool = True,
    seed: int = 0,
) -> Mazes:
    """``count`` mazes as DeepThinking ``(inputs, targets)`` tensors; see :func:`generate_compact`."""
    compact = generate_compact(
        generator=generator, size=size, count=count, percolation=percolation,
        deadend_start=deadend_start, seed=seed,
    )
    return to_pixels(torch.from_numpy(compact.grid), torch.from_numpy(compact.path))
