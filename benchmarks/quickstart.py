"""Quickstart timings, all in one run on one machine, each against a named baseline:

- `mlspec run specs/quickstart.merge` from a cold cache, against the same study written as a one-off
  PyTorch script (what the language costs over hand-written code; the script has no cache, so it
  redoes everything every time);
- the warm re-run (everything cached: no torch import, no figure redrawn, no re-export) and
  `mlspec check` of a generated 1,000-line spec, both against `python -c "import torch"` alone.
  Targets: a warm re-run faster than importing torch; checking under a fifth of it.

Short commands are timed as the best of several runs (a shared machine adds noise only upward);
quote the machine's load (`uptime`) with the numbers.

Run:  python benchmarks/quickstart.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BASELINE = r'''
import torch
from torch.nn import functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

torch.manual_seed(0)
d = load_digits()
x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
tr, te = train_test_split(range(len(y)), test_size=0.25, random_state=0, stratify=d.target)
tr, _ = train_test_split(tr, test_size=0.1, random_state=0, stratify=d.target[tr])  # validation held out
tr, te = torch.tensor(sorted(tr)), torch.tensor(sorted(te))
data = {"digits": (x[tr], y[tr], x[te], y[te])}
for name, keep in (("low", y < 5), ("high", y >= 5)):
    a, b = keep[tr], keep[te]
    data[name] = (x[tr][a], y[tr][a], x[te][b], y[te][b])

def mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                               torch.nn.ReLU(), torch.nn.Linear(128, 10))

def train(state, on, epochs):
    net = mlp(); net.load_state_dict(state)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    xs, ys = data[on][0], data[on][1]
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(net(xs[idx]), ys[idx])
            opt.zero_grad(); loss.backward(); opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}

@torch.no_grad()
def score(state, on):
    net = mlp(); net.load_state_dict(state)
    logits = net(data[on][2])
    return F.cross_entropy(logits, data[on][3]).item(), (logits.argmax(1) == data[on][3]).float().mean().item()

init = {k: v.clone() for k, v in mlp().state_dict().items()}
base = train(init, "digits", 3)
a, b = train(base, "low", 20), train(base, "high", 20)
models = {"base": base, "a": a, "b": b, "avg": {k: (a[k] + b[k]) / 2 for k in a}}
for s in [round(0.2 * i, 1) for i in range(1, 8)]:
    models[f"ta[{s}]"] = {k: base[k] + s * ((a[k] - base[k]) + (b[k] - base[k])) for k in a}
table = {(m, d): score(st, d) for m, st in models.items() for d in ("low", "high", "digits")}
curve = [score({k: torch.lerp(a[k], b[k], t / 20) for k in a}, "digits") for t in range(21)]
torch.save(models["avg"], "avg.pt")
print(len(table), "scores,", len(curve), "curve points")
'''


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def best(cmd: list[str], cwd: Path, times: int = 5) -> float:
    return min(timed(cmd, cwd) for _ in range(times))


def long_spec(lines: int = 1000) -> str:
    """A valid .merge spec of ``lines`` lines: models, merges and evaluations over the digits."""
    out = ["# A generated study for timing `mlspec check`.", 'study "big" (seed = 0)',
           "data digits = digits(test_fraction = 0.25)", "data low = digits.classes(0 .. 4)",
           "data high = digits.classes(5 .. 9)", "model init = mlp(in = 64, hidden = [32], out = 10)"]
    i = 0
    while len(out) < lines:
        out += [f"model a{i} = train(init, on = low, epochs = 1)", f"model b{i} = train(init, on = high, epochs = 1)",
                f"merge m{i} = average(a{i}, b{i})", f"evaluate [m{i}] on [digits] metrics [accuracy]"]
        i += 1
    return "\n".join(out[:lines]) + "\n"


def main() -> None:
    spec = ROOT / "specs" / "quickstart.merge"
    mlspec = [sys.executable, "-m", "mlspec"]
    # Time the package as pip installs it, bytecode compiled. Under PYTHONDONTWRITEBYTECODE (set on
    # the CI machine) an editable checkout would otherwise recompile every module in every process,
    # while torch, installed from a wheel, loads compiled bytecode.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "interpreter"), str(ROOT / "grammar")],
                   check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "baseline.py").write_text(BASELINE)
        (work / "big.merge").write_text(long_spec())
        run = [*mlspec, "run", str(spec), "--out", str(work / "out"), "--cache-dir", str(work / "cache"), "--quiet"]
        cold = timed(run, work)
        script = timed([sys.executable, "baseline.py"], work)
        torch_import = best([sys.executable, "-c", "import torch"], work)
        warm = best(run, work)
        check = best([*mlspec, "check", "big.merge"], work)
    rows = [
        ("mlspec run quickstart.merge, cold cache", cold, f"{cold / script:.2f}x the script"),
        ("baseline: one-off PyTorch script (no cache)", script, "same work, every time"),
        ('baseline: python -c "import torch"', torch_import, ""),
        ("mlspec run quickstart.merge, warm cache", warm, f"{warm / torch_import:.2f}x import torch (target < 1)"),
        ("mlspec check, 1,000-line spec", check, f"{check / torch_import:.2f}x import torch (target < 0.2)"),
    ]
    print(f"{'what':<46}{'wall s':>8}")
    for what, seconds, note in rows:
        print(f"{what:<46}{seconds:8.2f}   {note}")


def busy_machine_threads(reduced: bool = True, busy_processes: int = 1) -> None:
    """Issue 10 item 9: `mlspec run specs/quickstart.extrap` (cold cache, CPU) under three thread
    policies, on an idle machine and while other processes keep cores busy. The named baseline is
    torch's default behaviour (every core, spinning waits); one thread is the other extreme.

    Run:  python benchmarks/quickstart.py --busy [--full] [--busy-processes N]
    """
    import os

    cores = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()[0]
    text = (ROOT / "specs" / "quickstart.extrap").read_text()
    if reduced:  # the same study at a fifth of the training work
        text = text.replace("count = 1500", "count = 300").replace("epochs 20", "epochs 4")
    policies = {
        f"baseline: {cores} threads, spinning waits": {"MLSPEC_THREADS": str(cores), "OMP_WAIT_POLICY": "ACTIVE"},
        f"mlspec: {cores} threads, passive waits": {"MLSPEC_THREADS": str(cores), "OMP_WAIT_POLICY": "PASSIVE"},
        "1 thread": {"MLSPEC_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "q.extrap").write_text(text)
        for busy in (0, busy_processes):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
            try:
                for n, (name, env) in enumerate(policies.items()):
                    cmd = [sys.executable, "-m", "mlspec", "run", "q.extrap", "--device", "cpu", "--no-progress",
                           "--out", str(work / f"out{busy}-{n}"), "--cache-dir", str(work / f"cache{busy}-{n}")]
                    start = time.perf_counter()
                    subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   env={**os.environ, **env})
                    rows.append((f"{name}, {busy} busy process(es)", time.perf_counter() - start))
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
    print(f"quickstart.extrap{' (reduced: 300 mazes, 4 epochs)' if reduced else ''} on {cores} cores, "
          f"load average before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"{'policy':<60}{'wall s':>8}")
    for name, seconds in rows:
        print(f"{name:<60}{seconds:8.1f}")


if __name__ == "__main__":
    if "--busy" in sys.argv:
        count = sys.argv[sys.argv.index("--busy-processes") + 1] if "--busy-processes" in sys.argv else "1"
        busy_machine_threads(reduced="--full" not in sys.argv, busy_processes=int(count))
    else:
        main()
