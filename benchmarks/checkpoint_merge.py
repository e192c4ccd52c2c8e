"""Streaming checkpoint merges: mlspec against mergekit 0.1.5, same machine, same run.

Builds three Llama-architecture checkpoints of ~219M parameters in bf16 (hidden 1024, 12 layers,
intermediate 2816, vocab 32000; a random base and two perturbed "fine-tunes"), then merges them
with linear, task_arithmetic, TIES, DARE-TIES (density 0.5), breadcrumbs-TIES and SLERP using both
tools (mlspec merging each mergekit config as `mlspec import mergekit` converts it), each merge in its own
process, and prints wall time and peak RSS (``os.wait4``'s rusage of that process), the floor (a
process that only reads the three inputs and writes one output; measured first and again beside
each method, whose ``x floor`` uses the floor beside it: this machine's disk and page cache drift
over minutes), the load average, and the largest absolute
difference between the two tools' outputs, per tensor kind, with the semantics configured to
match (float32 math, bf16 output; TIES per-tensor trim with weights before the sign election).

mergekit is never an mlspec dependency: install it into its own environment, e.g.

    python -m venv --system-site-packages benchmarks/_work/mergekit-venv
    benchmarks/_work/mergekit-venv/bin/pip install mergekit==0.1.5

Run:  python benchmarks/checkpoint_merge.py [--methods linear ties] [--mergekit PATH/TO/mergekit-yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "checkpoint_merge"
MERGEKIT = Path(__file__).resolve().parent / "_work" / "mergekit-venv" / "bin" / "mergekit-yaml"
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "breadcrumbs_ties", "slerp")

#: method -> its mergekit YAML body. mlspec merges the same config, converted by `mlspec import
#: mergekit` (mlspec.checkpoints.mergekit.read_config): one configuration, two tools.
CONFIGS = {
    "linear": "merge_method: linear\nmodels:\n  - model: {a}\n    parameters: {{weight: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 0.5}}\n",
    "task_arithmetic": "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 0.5}}\n  - model: {b}\n    parameters: {{weight: 0.5}}\n",
    "ties": "merge_method: ties\nbase_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 1.0, density: 0.5}}\n",
    "dare_ties": "merge_method: dare_ties\nbase_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 1.0, density: 0.5}}\n"
    "  - model: {b}\n    parameters: {{weight: 1.0, density: 0.5}}\n",
    "breadcrumbs_ties": "merge_method: breadcrumbs_ties\nbase_model: {base}\nmodels:\n"
    "  - model: {a}\n    parameters: {{weight: 1.0, density: 0.9, gamma: 0.01}}\n"
    "  - model: {b}\n    parameters: {{weight: 1.0, density: 0.9, gamma: 0.01}}\n",
    "slerp": "merge_method: slerp\nbase_model: {a}\nmodels:\n  - model: {a}\n  - model: {b}\n"
    "parameters: {{t: 0.5}}\n",
}
#: Methods whose draws are random: mergekit's generator and mlspec's (seeded per tensor name) differ,
#: so their outputs are compared by statistics, not entry by entry.
RANDOM = {"dare_ties"}
DTYPES = "dtype: float32\nout_dtype: bfloat16\n"


def config_text(method: str, paths: dict[str, Path]) -> str:
    return CONFIGS[method].format(base=paths["base"], a=paths["a"], b=paths["b"]) + DTYPES


def build_inputs() -> dict[str, Path]:
    from mlspec.checkpoints.synthetic import llama_config, write_llama

    config = llama_config(hidden=1024, layers=12, intermediate=2816, vocab=32000, heads=16, dtype="bfloat16")
    paths = {"base": WORK / "base", "a": WORK / "ft_a", "b": WORK / "ft_b"}
    for key, seed in (("base", 0), ("a", 1), ("b", 2)):
        if not (paths[key] / "config.json").is_file():
            write_llama(paths[key], config, seed=seed, base_seed=None if key == "base" else 0, delta=0.05)
    return paths


def measure(cmd: list[str], out: Path, env: dict[str, str] | None = None, repeat: int = 1) -> tuple[float, float]:
    """The best wall time of ``repeat`` runs (this machine's timings swing by ±15% between runs),
    and the peak RSS of that run; the output directory ``out`` is emptied before each."""
    runs = []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)
        runs.append(measure_once(cmd, env))
    return min(runs, key=lambda r: r[0])


def measure_once(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process. Pending writes of earlier runs are flushed
    first, so no run pays for the writeback of the one before it (writes here are disk-bound)."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def run_mlspec(method: str, out: Path) -> None:
    """``method`` or ``method+stats`` (also record per-tensor merge statistics): the mergekit config
    as `mlspec import mergekit` converts it, through the merge method's declaration bound to its
    parameters — what a spec's streamed merge runs."""
    from mlspec.checkpoints.engine import StreamOptions, stream_merge
    from mlspec.checkpoints.mergekit import read_config
    from mlspec.ops.merge import method as methods
    from mlspec.ops.merge.apply import BoundMethod
    from mlspec.ops.merge.stats import MergeStats

    paths = build_inputs()
    method, _, stats = method.partition("+")
    (merge,) = read_config(config_text(method, paths))
    params = dict(merge.params)
    dtype, out_dtype = params.pop("dtype"), params.pop("out_dtype")
    declared = methods.get(merge.op)
    assert declared is not None
    models = [Path(m) for m in merge.models]
    base = Path(merge.base) if merge.base else None
    values = declared.normalise(params)
    stream_merge(
        BoundMethod(declared, values, 2),
        base,
        models,
        out,
        options=StreamOptions(dtype=dtype, out_dtype=out_dtype,
                              stats=MergeStats(merge.op, values) if stats else None),
    )


def run_floor(out: Path) -> None:
    """Read every tensor of the three inputs, write one of them out: what any merge must do. Read
    with safetensors' own ``safe_open`` (which maps the file and copies nothing), written with the
    streaming writer: the floor does not depend on how mlspec reads."""
    import torch
    from safetensors import safe_open

    from mlspec.checkpoints.writer import PlannedTensor, ShardedWriter

    paths = build_inputs()
    files = {k: sorted(paths[k].glob("*.safetensors")) for k in ("base", "a", "b")}
    handles = {k: [safe_open(str(f), framework="pt") for f in fs] for k, fs in files.items()}
    where = {k: {n: h for h in hs for n in h.keys()} for k, hs in handles.items()}
    names = list(where["base"])
    first = {n: where["base"][n].get_slice(n) for n in names}
    from mlspec.checkpoints.source import SAFETENSORS_DTYPES

    planned = [PlannedTensor(n, tuple(first[n].get_shape()), SAFETENSORS_DTYPES[first[n].get_dtype()]) for n in names]
    out.mkdir(parents=True, exist_ok=True)
    with ShardedWriter(out, planned, shard_bytes=5 * 10**9) as writer:
        for name in names:
            tensors = [where[k][name].get_tensor(name) for k in ("base", "a", "b")]
            for t in tensors[1:]:  # safe_open maps and copies nothing: bring in every page, as a merge must
                t.reshape(-1).view(torch.uint8)[:: 1 << 12].sum() if t.numel() else None
            writer.write(name, tensors[0])


def _kind(name: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", name)


def compare(ours: Path, theirs: Path) -> dict[str, list[float]]:
    """Per tensor kind (layers folded): [largest |ours − theirs|, entries that differ, entries]."""
    from mlspec.checkpoints.source import Checkpoint

    kinds: dict[str, list[float]] = {}
    with Checkpoint.open(ours) as a, Checkpoint.open(theirs) as b:
        missing = set(a.names) ^ set(b.names)
        if missing:
            raise SystemExit(f"outputs differ in tensors: {sorted(missing)[:5]}")
        for name in a.names:
            diff = (a.tensor(name).float() - b.tensor(name).float()).abs()
            row = kinds.setdefault(_kind(name), [0.0, 0, 0])
            row[0] = max(row[0], float(diff.max()))
            row[1] += int((diff > 0).sum())
            row[2] += diff.numel()
    return kinds


def change_from_base(merged: Path, base: Path) -> tuple[float, float]:
    """For a random method: the share of entries equal to the base's, and ‖merged − base‖ (L2)."""
    from mlspec.checkpoints.source import Checkpoint

    same = total = 0
    square = 0.0
    with Checkpoint.open(merged) as m, Checkpoint.open(base) as b:
        for name in m.names:
            diff = m.tensor(name).float() - b.tensor(name).float()
            same += int((diff == 0).sum())
            total += diff.numel()
            square += float(diff.square().sum())
    return same / total, square**0.5


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("runs must be at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--mergekit", type=Path, default=MERGEKIT, help="the mergekit-yaml executable")
    parser.add_argument("--repeat", type=_at_least_one, default=2, help="runs of each process; the best is reported")
    parser.add_argument("--child", nargs=2, metavar=("WHAT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from mlspec.checkpoints.mergekit import read_config

    if args.child:
        what, out = args.child
        run_floor(Path(out)) if what == "floor" else run_mlspec(what, Path(out))
        return
    if not args.mergekit.exists():
        raise SystemExit(f"mergekit-yaml not found at {args.mergekit}; see this file's docstring")
    paths = build_inputs()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    me = [sys.executable, str(Path(__file__).resolve()), "--child"]
    rows: list[tuple[str, str, float, float]] = []
    load_before = os.getloadavg()
    floor_out = WORK / "out-floor"
    measure([*me, "floor", str(floor_out)], floor_out, env)  # warms the page cache for everyone
    floor_wall, floor_rss = measure([*me, "floor", str(floor_out)], floor_out, env, args.repeat)
    # This machine's disk and page cache drift over minutes, so each mlspec run is also set against a
    # floor measured right beside it (``x floor``); the first floor is printed for reference.
    floors: dict[str, float] = {}
    diffs: dict[str, dict[str, list[float]]] = {}
    moved: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    extra_rows: list[tuple[str, str, float, float]] = []
    for method in args.methods:
        config = WORK / f"{method}.yml"
        config.write_text(config_text(method, paths))
        op = read_config(config.read_text())[0].op
        theirs, ours = WORK / f"out-mergekit-{method}", WORK / f"out-mlspec-{method}"
        for out in (theirs, ours):
            shutil.rmtree(out, ignore_errors=True)
        mk = measure(
            [
                str(args.mergekit),
                str(config),
                str(theirs),
                "--no-copy-tokenizer",
                "--quiet",
                "--no-write-model-card",
            ],
            theirs,
            env,
            args.repeat,
        )
        ml = measure([*me, method, str(ours)], ours, env, args.repeat)
        floors[method] = measure([*me, "floor", str(floor_out)], floor_out, env, args.repeat)[0]
        rows.append((method, "mergekit 0.1.5", *mk))
        rows.append((method, f"mlspec ({op})", *ml))
        if method in RANDOM:
            moved[method] = (change_from_base(ours, paths["base"]), change_from_base(theirs, paths["base"]))
        else:
            diffs[method] = compare(ours, theirs)
        if method == "ties":  # what `stats = true` (per-tensor merge statistics, off by default) costs
            shutil.rmtree(ours)
            extra_rows.append(
                (method, "mlspec (ties, + statistics)", *measure([*me, "ties+stats", str(ours)], ours, env, args.repeat))
            )
    print(
        f"\ninputs: 3 x {sum(f.stat().st_size for f in paths['base'].glob('*.safetensors')) / 2**20:.0f} MiB"
        f" (Llama, hidden 1024, 12 layers); CPU threads: {os.cpu_count()}"
    )
    print(f"floor (read 3 inputs, write 1 output): {floor_wall:6.1f} s   peak RSS {floor_rss:7.0f} MiB")
    print(f"load average (1 min) before: {load_before[0]:.2f}, after: {os.getloadavg()[0]:.2f}\n")
    print(f"{'method':<16} {'tool':<26} {'wall s':>8} {'peak RSS MiB':>13} {'floor s':>8} {'x floor':>8} {'speed-up':>9}")
    for i, (method, tool, wall, rss) in enumerate(rows):
        speed = f"{rows[i - 1][2] / wall:8.1f}x" if i % 2 else ""
        near = floors[method]
        print(f"{method:<16} {tool:<26} {wall:8.1f} {rss:13.0f} {near:8.1f} {wall / near:8.1f} {speed:>9}")
    for method, tool, wall, rss in extra_rows:
        near = floors[method]
        print(f"{method:<16} {tool:<26} {wall:8.1f} {rss:13.0f} {near:8.1f} {wall / near:8.1f}")
    print("\n|mlspec - mergekit| on the bf16 outputs: largest, and the share of entries that differ at all")
    for method, kinds in diffs.items():
        worst = max(kinds.items(), key=lambda kv: kv[1][0])
        share = sum(v[1] for v in kinds.values()) / sum(v[2] for v in kinds.values())
        print(f"  {method:<16} max {worst[1][0]:.3g} (in {worst[0]}); {100 * share:.4f}% of entries differ")
        for kind, (top, n, total) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:3]:
            print(f"  {'':<16}   {kind:<48} max {top:.3g}  {n:>9} / {total} differ")
    for method, ((our_share, our_norm), (their_share, their_norm)) in moved.items():
        print(f"  {method:<16} random drops: entries left at the base {100 * our_share:.2f}% (mergekit "
              f"{100 * their_share:.2f}%); |merged - base| {our_norm:.4g} (mergekit {their_norm:.4g})")
    (WORK / "results.json").write_text(
        json.dumps({"floor": [floor_wall, floor_rss], "floors": floors, "rows": rows + extra_rows, "diffs": diffs,
                    "random": moved}, indent=2)
    )


if __name__ == "__main__":
    main()
