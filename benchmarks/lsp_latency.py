"""Diagnostics latency of `mlspec lsp` after an edit on a 500-line spec, against the named
baseline of running `mlspec check` on the file after each save (what an editor without the
server does), in the same run.

The issue's target: diagnostics within 200 ms of an edit. The in-process row is the CPU time of
one re-check (parse + check) for the same edits, which a loaded machine inflates much less than the
wall-clock rows. Each edit misspells or restores one
operator name (an incremental change, as editors send), alternating between a spec with one error
and a clean one; the time is from sending the change to receiving its published diagnostics.

Run:  python benchmarks/lsp_latency.py [--edits 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lsp_client import LspClient  # noqa: E402


def spec_of(lines: int) -> str:
    """A .merge study of ``lines`` lines: data, training, merges and evaluations that use each other."""
    out = ["# a long study: many fine-tunes, each merged back with its base", 'study "long" (seed = 0)',
           "data digits = digits(test_fraction = 0.25)", "model init = mlp(in = 64, hidden = [32], out = 10)"]
    i = 0
    while len(out) < lines:
        out += [f"data d{i} = digits.classes({i % 10})",
                f"model m{i} = train(init, on = d{i}, epochs = 2, lr = 1e-3)",
                f"merge a{i} = average(init, m{i})",
                f"evaluate [m{i}, a{i}] on [digits] metrics [accuracy, loss]"]
        i += 1
    return "\n".join(out[:lines]) + "\n"


def percentiles(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
    return f"{statistics.median(ms):8.0f} {p90:8.0f} {ms[-1]:8.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edits", type=int, default=40)
    parser.add_argument("--lines", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlspec-lsp-"))
    path = work / "long.merge"
    text = spec_of(args.lines)
    path.write_text(text)
    target = text.split("\n").index("merge a60 = average(init, m60)")
    col = len("merge a60 = ")

    client = LspClient([sys.executable, "-m", "mlspec", "lsp"], work)
    uri = client.open(path, text)
    assert client.diagnostics(uri, timeout=120) == []
    server: list[float] = []
    for n in range(args.edits):
        word, replacement = ("average", "averge") if n % 2 == 0 else ("averge", "average")
        start = time.perf_counter()
        client.edit(uri, target, col, col + len(word), replacement)
        diags = client.diagnostics(uri)
        server.append(time.perf_counter() - start)
        assert len(diags) == (1 if n % 2 == 0 else 0), diags
    client.close()

    # The same edits in-process, CPU time only: what one re-check costs, whatever else the machine runs.
    from mlspec.lsp.analysis import analyse

    lines = text.split("\n")
    document = analyse(text, str(path))
    cpu: list[float] = []
    for n in range(args.edits):
        word = "averge" if n % 2 == 0 else "average"
        lines[target] = f"merge a60 = {word}(init, m60)"
        start = time.process_time()
        document = analyse("\n".join(lines), str(path), document)
        cpu.append(time.process_time() - start)
        assert len(document.diagnostics) == (1 if n % 2 == 0 else 0)

    baseline: list[float] = []
    for _ in range(max(3, args.edits // 8)):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mlspec", "check", str(path)], capture_output=True, check=True)
        baseline.append(time.perf_counter() - start)

    load = os.getloadavg()
    print(f"{args.lines}-line spec, {args.edits} edits; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'':34} {'median':>8} {'p90':>8} {'max':>8}   (ms)")
    print(f"{'mlspec lsp: edit -> diagnostics':34} {percentiles(server)}")
    print(f"{'  of which re-checking (CPU time)':34} {percentiles(cpu)}")
    print(f"{'baseline: mlspec check (process)':34} {percentiles(baseline)}")


if __name__ == "__main__":
    main()
