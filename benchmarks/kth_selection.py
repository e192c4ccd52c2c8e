"""Exact k-th magnitude selection: mlspec's radix select against numpy's introselect (what mlspec
used before) and ``torch.kthvalue``, same run, same tensors. All three must return the same value.

Magnitudes of normal noise, k at the TIES cut (density 0.5 and 0.2 kept). numpy has no bf16, so
introselect gets the bf16 tensor widened to float32 (the widening is timed too).

Each table is printed once per torch thread count (``--threads``, default 1 and torch's default):
numpy is single-threaded, and on a crowded machine torch's multi-threaded ops can lose more to
waiting for their second thread than they gain from it.

Run:  python benchmarks/kth_selection.py [--sizes 10000000 50000000] [--repeats 3] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from mlspec.ops.merge.sparsify import kth_smallest


def introselect(x: torch.Tensor, k: int) -> float:
    flat = x.flatten()
    array = (flat if flat.dtype in (torch.float32, torch.float64) else flat.float()).numpy()
    return float(np.partition(array, k - 1)[k - 1])


def kthvalue(x: torch.Tensor, k: int) -> float:
    return float(x.flatten().kthvalue(k).values.item())


def best_of(fn: Callable[[torch.Tensor, int], float], x: torch.Tensor, k: int, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn(x, k)
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 50_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per cell")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}))
    args = parser.parse_args()
    for threads in args.threads:
        torch.set_num_threads(threads)
        table(args.sizes, args.repeats)


def table(sizes: list[int], repeats: int) -> None:
    print(f"\ntorch threads: {torch.get_num_threads()}, load average: {os.getloadavg()[0]:.1f}")
    print(f"{'elements':>11} {'dtype':>9} {'kept':>5} {'radix s':>9} {'introselect s':>14} {'kthvalue s':>11} "
          f"{'x introselect':>14} {'x kthvalue':>11}")
    for n in sizes:
        noise = torch.randn(n, generator=torch.Generator().manual_seed(0)).abs()
        for dtype in (torch.float32, torch.bfloat16):
            x = noise.to(dtype)
            for kept in (0.5, 0.2):
                k = n - int(kept * n) + 1  # the k-th smallest is the cut that keeps ⌊kept·n⌋ largest
                radix, value = best_of(kth_smallest, x, k, repeats)
                intro, v_intro = best_of(introselect, x, k, repeats)
                kth, v_kth = best_of(kthvalue, x, k, repeats)
                if not value == v_intro == v_kth:
                    raise SystemExit(f"selections disagree: {value} {v_intro} {v_kth}")
                print(f"{n:>11,} {str(dtype).removeprefix('torch.'):>9} {kept:>5} {radix:9.3f} {intro:14.3f} "
                      f"{kth:11.3f} {intro / radix:13.1f}x {kth / radix:10.1f}x")


if __name__ == "__main__":
    main()
