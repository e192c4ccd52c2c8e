"""Plain progress lines: one per step started and finished, periodic ones inside long steps."""

from __future__ import annotations

import io

from mlspec.run.progress import plain_progress


def test_steps_get_a_line_each_and_long_loops_a_line_per_interval() -> None:
    now = [0.0]
    stream = io.StringIO()
    progress = plain_progress(stream, every_s=10.0, clock=lambda: now[0])
    with progress(2, "study: steps") as step:
        step(0, started="a")
        with progress(100, "a: train") as epoch:
            for _ in range(100):
                now[0] += 1.0
                epoch(loss=0.5)
        step(finished="a", seconds=100.0)
        step(0, started="b")
        step(finished="b", error="boom")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[    0.0s] started  a  (0 of 2 done)"
    periodic = [ln for ln in lines if "a: train" in ln]
    assert len(periodic) == 10 and periodic[0] == "[   10.0s]   a: train: 10/100 loss=0.5"
    assert lines[11] == "[  100.0s] finished a in 100.0s  (1 of 2 done)"
    assert lines[12:] == ["[  100.0s] started  b  (1 of 2 done)", "[  100.0s] failed   b  (2 of 2 done): boom"]
