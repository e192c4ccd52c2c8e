"""Progress as plain lines, for logs and CI (stdout or stderr not a terminal).

The runner reports each step it starts and finishes (``advance(0, started=name)``, ``advance(1,
finished=name, seconds=s)``) on its overall counter; these become one line each, with the time since
the run began. Counters inside a long step (epochs, merged tensors, points on a path) print a line
at most every ``every_s`` seconds, so a 17-minute training run is never 17 minutes of silence.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .context import Progress

__all__ = ["plain_progress", "describe_fields"]


def describe_fields(fields: dict[str, Any]) -> str:
    """``loss=0.1234 epoch=3``: what a counter reports besides its count."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())


def plain_progress(stream: TextIO, *, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> Progress:
    start = clock()

    def say(text: str) -> None:
        stream.write(f"[{clock() - start:7.1f}s] {text}\n")
        stream.flush()

    @contextmanager
    def counter(total: int, description: str) -> Iterator[Callable[..., None]]:
        done = 0
        last = clock()

        def advance(n: int = 1, **fields: Any) -> None:
            nonlocal done, last
            done += n
            if "started" in fields:
                say(f"started  {fields['started']}  ({done} of {total} done)")
            elif "finished" in fields:
                took = fields.get("seconds")
                verdict = "failed  " if fields.get("error") else "skipped " if fields.get("skipped") else "finished"
                why = fields.get("error") or fields.get("skipped")
                say(f"{verdict} {fields['finished']}" + (f" in {took:.1f}s" if took is not None and not why else "")
                    + f"  ({done} of {total} done)" + (f": {why}" if why else ""))
            elif clock() - last >= every_s:
                say(f"  {description}: {done}/{total} " + describe_fields(fields))
            else:
                return
            last = clock()

        yield advance

    return counter
