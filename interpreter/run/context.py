"""What a running step sees of the world besides its parameters and inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["StepContext", "Progress"]

#: ``progress(total, description)`` yields an ``advance(n=1, **fields)`` callable.
Progress = Callable[[int, str], Any]


@dataclass
class StepContext:
    name: str  # the step's name in the spec, e.g. "ta[0.5]" or "c.model"
    key: str  # the step's content-hash key
    seed: int  # derived from the study seed and the step name
    device: str  # "cpu", "cuda", "cuda:1" — already resolved from "auto"
    out_dir: Path  # the study's output directory (exports go under it)
    work_dir: Path  # this step's private scratch directory (resume checkpoints); mkdir it before use
    allow_outside: bool = False  # the user passed --allow-outside-out
    input_names: dict[str, Any] = field(default_factory=dict)  # port -> upstream step name(s)
    _progress: Progress | None = field(default=None, repr=False)

    def generator(self, device: str | None = None) -> torch.Generator:
        """A torch generator seeded with this step's seed."""
        import torch

        g = torch.Generator(device=device or "cpu")
        g.manual_seed(self.seed)
        return g

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[..., None]]:
        """A progress bar for a long loop: ``with ctx.progress(epochs, "train") as step: step()``."""
        if self._progress is None:
            yield lambda *a, **k: None
            return
        with self._progress(total, f"{self.name}: {description}") as advance:
            yield advance

    def output_path(self, relative: str) -> Path:
        """Resolve a path the spec asked to write, refusing escapes from the output directory."""
        from mlspec.errors import StepError

        path = Path(relative)
        if not self.allow_outside and (path.is_absolute() or ".." in path.parts):
            raise StepError(
                f"refusing to write {relative!r} outside the output directory "
                "(pass --allow-outside-out to allow absolute paths and '..')"
            )
        target = path if path.is_absolute() else self.out_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        return target
