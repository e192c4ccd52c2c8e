"""Maze generation throughput: mlspec's batched generators against maze-dataset 1.4.2, same run.

Both sides produce *solved* mazes (lattice, endpoints with a dead-end start, shortest path). The
baseline is maze-dataset's single-process ``MazeDataset.from_config`` without rasterisation (that
would only slow it down further); mlspec is timed twice: the compact form its datasets store, and
the full DeepThinking pixel tensors. maze-dataset is a benchmark-only install, never a dependency:

    python -m venv /tmp/mdbench --system-site-packages
    /tmp/mdbench/bin/pip install maze-dataset==1.4.2 "muutils==0.8.12" "zanj<0.6"
    /tmp/mdbench/bin/python benchmarks/maze_generation.py

(maze-dataset 1.4.2 fails to import with muutils 0.9, which pip picks by default.)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from mlspec.extrap import mazes

# generator name -> (maze-dataset constructor name, its kwargs, our percolation)
CASES: dict[str, tuple[str, dict[str, float], float]] = {
    "dfs": ("gen_dfs", {}, 0.0),
    "dfs_percolation": ("gen_dfs_percolation", {"p": 0.1}, 0.1),
    "kruskal": ("gen_kruskal", {}, 0.0),
    "wilson": ("gen_wilson", {}, 0.0),
}


def rate(make: Callable[[int], object], count: int, budget_s: float) -> float:
    """Mazes per second: repeat ``make(count)`` until ``budget_s`` has passed (at least once), after
    one untimed call for both sides alike (one-off costs: lazy imports and tables, and for large
    results the kernel's first gathering of huge pages, which can take longer than a whole call)."""
    make(count)
    done, start = 0, time.perf_counter()
    while True:
        make(count)
        done += count
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return done / elapsed


def baseline(generator: str, size: int) -> Callable[[int], object]:
    from maze_dataset import LatticeMazeGenerators, MazeDataset, MazeDatasetConfig

    ctor, kwargs, _ = CASES[generator]

    def make(count: int) -> object:
        cfg = MazeDatasetConfig(
            name="bench",
            grid_n=mazes.cells_per_side(size),
            n_mazes=count,
            maze_ctor=getattr(LatticeMazeGenerators, ctor),
            maze_ctor_kwargs=kwargs,
            endpoint_kwargs={"deadend_start": True, "endpoints_not_equal": True, "except_on_no_valid_endpoint": False},
        )
        return MazeDataset.from_config(cfg, load_local=False, save_local=False, do_download=False,
                                       gen_parallel=False, verbose=False)

    return make


def ours(generator: str, size: int, pixels: bool) -> Callable[[int], object]:
    p = CASES[generator][2]
    fn = mazes.generate if pixels else mazes.generate_compact
    return lambda count: fn(generator=generator, size=size, count=count, percolation=p, deadend_start=True, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9, 25, 59])
    parser.add_argument("--generators", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement")
    args = parser.parse_args()
    try:
        import maze_dataset  # noqa: F401

        error = None
    except ImportError as exc:  # report ours alone, and why the baseline is missing
        error = f"{type(exc).__name__}: {exc}"
    print(f"{'generator':<16}{'size':>5}{'maze-dataset/s':>16}{'mlspec compact/s':>18}{'mlspec pixels/s':>17}{'x compact':>10}{'x pixels':>10}")
    for generator in args.generators:
        for size in args.sizes:
            batch = 2000 if size < 50 else 500
            compact = rate(ours(generator, size, pixels=False), batch, args.seconds)
            pixels = rate(ours(generator, size, pixels=True), batch, args.seconds)
            base = rate(baseline(generator, size), max(1, int(200 / size)), args.seconds) if error is None else None
            shown = f"{base:16.1f}" if base else f"{'n/a':>16}"
            speedup = f"{compact / base:9.0f}x{pixels / base:9.0f}x" if base else f"{'n/a':>10}{'n/a':>10}"
            print(f"{generator:<16}{size:>5}{shown}{compact:18.0f}{pixels:17.0f}{speedup}")
    if error:
        print(f"\nmaze-dataset 1.4.2 unavailable: {error}")


if __name__ == "__main__":
    main()
