"""Maze generation: validity against an independent graph library, the pixel format, determinism."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from mlspec.extrap import mazes

TREES = ["dfs", "wilson", "kruskal"]


def lattice_graph(grid: np.ndarray) -> nx.Graph:
    """The cell graph of one compact maze grid, built independently of the generator code."""
    g = nx.Graph()
    side = grid.shape[0]
    for r in range(1, side, 2):
        for c in range(1, side, 2):
            if grid[r, c]:
                g.add_node((r, c))
                if c + 2 < side and grid[r, c + 1]:
                    g.add_edge((r, c), (r, c + 2))
                if r + 2 < side and grid[r + 1, c]:
                    g.add_edge((r, c), (r + 2, c))
    return g


def endpoints(grid: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    (s,), (e,) = np.argwhere(grid == mazes.START), np.argwhere(grid == mazes.END)
    return tuple(s), tuple(e)


@pytest.mark.parametrize("generator", TREES)
@pytest.mark.parametrize("size", [3, 9, 15])
def test_tree_generators_make_perfect_mazes(generator: str, size: int) -> None:
    m = (size + 1) // 2
    batch = mazes.generate_compact(generator=generator, size=size, count=40, seed=3)
    for grid in batch.grid:
        g = lattice_graph(grid)
        assert g.number_of_nodes() == m * m  # every cell is open
        assert nx.is_connected(g)
        assert g.number_of_edges() == m * m - 1  # connected with V-1 edges: a spanning tree
        # every open pixel is a cell or a passage between two open cells
        assert (grid > 0).sum() == g.number_of_nodes() + g.number_of_edges()


@pytest.mark.parametrize("generator", mazes.GENERATORS)
@pytest.mark.parametrize("deadend_start", [True, False])
def test_target_is_a_shortest_path_between_distinct_endpoints(generator: str, deadend_start: bool) -> None:
    batch = mazes.generate_compact(
        generator=generator, size=11, count=30, percolation=0.3, deadend_start=deadend_start, seed=7
    )
    for grid, path in zip(batch.grid, batch.path):
        g = lattice_graph(grid)
        s, e = endpoints(grid)
        assert s != e
        if deadend_start:
            assert g.degree[s] == 1
        on_path = {tuple(p) for p in np.argwhere(path)}
        cells = [p for p in on_path if p[0] % 2 and p[1] % 2]
        assert s in on_path and e in on_path
        assert len(cells) == nx.shortest_path_length(g, s, e) + 1
        sub = g.subgraph(cells)
        assert nx.is_connected(sub) and sub.number_of_edges() == len(cells) - 1
        assert len(on_path) == 2 * len(cells) - 1  # the passages between consecutive cells
        assert all(grid[p] > 0 for p in on_path)


def test_wilson_samples_spanning_trees_uniformly() -> None:
    """A 3x3 lattice has 192 spanning trees; Wilson's algorithm must hit each equally often."""
    batch = mazes.generate_compact(generator="wilson", size=5, count=19200, seed=11)
    trees = Counter(g.tobytes() for g in (batch.grid > 0).astype(np.uint8))
    assert len(trees) == 192
    assert chisquare(list(trees.values())).pvalue > 1e-3


def test_percolation_opens_walls_at_the_requested_rate() -> None:
    m, p = 10, 0.3
    batch = mazes.generate_compact(generator="dfs_percolation", size=2 * m - 1, count=200, percolation=p, seed=2)
    passages = np.mean([lattice_graph(g).number_of_edges() for g in batch.grid])
    inner_walls = 2 * m * (m - 1) - (m * m - 1)  # walls left standing by a spanning tree
    assert passages == pytest.approx(m * m - 1 + p * inner_walls, rel=0.05)


@pytest.mark.parametrize("m", [2, 5, 12])
def test_kruskal_keeps_exactly_the_edges_sequential_union_find_keeps(m: int) -> None:
    """Oracle: one maze at a time, edges in the same order, a plain union-find with path halving."""
    rng = np.random.default_rng(m)
    cell, d = mazes._edge_list(m)
    order = rng.permuted(np.tile(np.arange(cell.size), (40, 1)), axis=1)
    step = {0: 1, 1: m}  # east, south
    expected = np.zeros((cell.size, 40), dtype=bool)

    def find(parent: list[int], x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in range(40):
        parent = list(range(m * m))
        for t, e in enumerate(order[n]):
            a, b = find(parent, int(cell[e])), find(parent, int(cell[e]) + step[int(d[e])])
            if a != b:
                parent[a] = b
                expected[t, n] = True
    joins = mazes._kruskal_joins(order, m)
    assert np.array_equal(joins, expected)
    assert (joins.sum(0) == m * m - 1).all()


def test_deterministic_per_seed() -> None:
    a = mazes.generate(generator="wilson", size=9, count=20, seed=5)
    b = mazes.generate(generator="wilson", size=9, count=20, seed=5)
    c = mazes.generate(generator="wilson", size=9, count=20, seed=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, c.inputs)


@pytest.mark.parametrize("size", [9, 13])
def test_deepthinking_pixel_format(size: int) -> None:
    x, y = mazes.generate(size=size, count=8, seed=0)
    side = 2 * size + 6
    assert x.shape == (8, 3, side, side) and x.dtype == torch.float32
    assert y.shape == (8, side, side) and y.dtype == torch.int64
    assert set(y.unique().tolist()) == {0, 1} and set(x.unique().tolist()) == {0.0, 1.0}
    # a three-pixel black border: the one-pixel frame plus the upscaled outer wall
    assert x[:, :, :3].sum() == 0 and x[:, :, :, -3:].sum() == 0 and y[:, :3].sum() == 0
    # every maze pixel is a uniform 2x2 tile
    inner = x[:, :, 1:-1, 1:-1]
    assert torch.equal(inner[..., ::2, ::2], inner[..., 1::2, 1::2])
    assert torch.equal(inner[..., ::2, ::2], inner[..., ::2, 1::2])
    colours = x.permute(0, 2, 3, 1).reshape(-1, 3)
    green = (colours == torch.tensor([0.0, 1.0, 0.0])).all(1).view(8, -1).sum(1)
    red = (colours == torch.tensor([1.0, 0.0, 0.0])).all(1).view(8, -1).sum(1)
    assert green.tolist() == [4] * 8 and red.tolist() == [4] * 8  # one start and one end tile each
    assert ((x.sum(1) == 0) & (y == 1)).sum() == 0  # the path never crosses a wall


def test_impossible_settings_raise_instead_of_returning_fewer() -> None:
    with pytest.raises(ValueError, match="valid"):
        mazes.generate_compact(generator="percolation", size=9, count=10, percolation=1.0, deadend_start=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 8}, "odd"),
        ({"generator": "prim"}, "unknown maze generator 'prim'"),
        ({"percolation": 1.5}, r"\[0, 1\]"),
        ({"count": 0}, "positive"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mazes.generate_compact(**kwargs)
