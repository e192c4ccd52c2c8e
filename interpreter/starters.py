"""``mlspec init``: a small, commented study of each dialect to start from — it checks, and it
runs on a CPU in seconds."""

from __future__ import annotations

from pathlib import Path

from .errors import MlspecError

__all__ = ["STARTERS", "write_starter"]

STARTERS = {
    "merge": '''\
# {name}: the question this study asks goes here — it becomes the report's first line.
# For example: two small networks trained on different halves of the digits — does their
# average know both halves?

study "{name}" (seed = 0)             # every step's seed derives from this one

# Data: scikit-learn's bundled 8x8 digits (no download), and two halves of it.
data digits = digits(test_fraction = 0.25)
data low    = digits.classes(0 .. 4)
data high   = digits.classes(5 .. 9)

# Models: one initialisation, trained on each half. `mlspec ops train` lists every setting.
model init = mlp(in = 64, hidden = [32], out = 10)
model a    = train(init, on = low, epochs = 3)
model b    = train(init, on = high, epochs = 3)

# A merge, and the straight line between the two models.
merge avg = average(a, b)
curve ab  = interpolate(a, b, steps = 5) on digits

evaluate [a, b, avg] on [low, high, digits] metrics [accuracy, loss]
report "report.html"
''',
    "extrap": '''\
# {name}: the question this study asks goes here — it becomes the report's first line.
# For example: a recurrent net trained on small mazes — does it solve larger ones when it
# is given more iterations?

study "{name}" (seed = 0)             # every step's seed derives from this one

# A generated task; `mazes(count = ...)` below re-uses it with other settings.
task mazes = maze(generator = dfs, size = 5)

# A small DeepThinking net. `mlspec ops dt_net` lists every setting.
model dt = dt_net(width = 8, iterations = 3)

train [dt] on mazes(count = 200) epochs 2 batch 50 warmup 0

# Evaluate along a difficulty axis, at several iteration budgets.
axis size = [5, 7]
evaluate [dt] on mazes(count = 20) along size iterations [1, 3, 6]
report "report.html"
''',
}


def write_starter(dialect: str, name: str) -> Path:
    """Write ``name.<dialect>`` (or ``name`` when it already ends so); never overwrites a file."""
    path = Path(name if name.endswith(f".{dialect}") else f"{name}.{dialect}")
    if path.exists():
        raise MlspecError(f"{path} already exists; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTERS[dialect].format(name=path.stem), encoding="utf-8")
    return path
