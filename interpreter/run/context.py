"""What a running step sees of the world besides its parameters and inputs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["StepContext", "Progress", "confine", "file_problem", "written_files"]

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
        target = confine(self.out_dir, relative, allow_outside=self.allow_outside)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target


def confine(out_dir: Path, relative: str, *, allow_outside: bool) -> Path:
    """``out_dir / relative``, refused when it would land outside ``out_dir`` — by an absolute path,
    by '..', or through a symlink (resolved before the check) — unless the user allowed it."""
    from ..errors import StepError

    path = Path(relative)
    target = path if path.is_absolute() else Path(out_dir) / path
    if allow_outside:
        return target
    root, resolved = Path(out_dir).resolve(), target.resolve()
    if path.is_absolute() or ".." in path.parts or resolved == root or not resolved.is_relative_to(root):
        raise StepError(f"refusing to write {relative!r} outside the output directory {str(root)!r}: it "
                        f"resolves to {str(resolved)!r} (pass --allow-outside-out to allow it)")
    return target


def written_files(out_dir: Path, target: Path) -> dict[str, str]:
    """``{path relative to the output directory: sha256}`` of ``target`` (a file, or every file of a
    directory), for an export's record; :func:`file_problem` checks them on later runs."""
    from .cache import file_sha256

    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    out = {}
    for path in files:
        try:
            relative = path.resolve().relative_to(Path(out_dir).resolve()).as_posix()
        except ValueError:  # written outside the output directory (--allow-outside-out)
            relative = str(path.resolve())
        out[relative] = file_sha256(path)
    return out


def file_problem(record: dict[str, Any], out_dir: Path) -> str | None:
    """Why a record that describes written files (an export: ``files``, each path relative to the
    output directory with its sha256; or one ``path`` and ``sha256``) no longer describes the files
    on disk — or None when it still does. Read anew on every run."""
    from .cache import file_sha256

    files = record.get("files")
    if isinstance(files, dict) and files:
        for relative, sha in files.items():
            path = Path(out_dir) / relative  # an absolute path stays absolute
            try:
                if file_sha256(path) != sha:
                    return f"{relative} has changed"
            except OSError:
                return f"{relative} is missing"
        return None
    if "path" not in record or "sha256" not in record:
        return "it records no file digest"
    path = Path(out_dir) / record["path"]  # an absolute path stays absolute
    try:
        return None if file_sha256(path) == record["sha256"] else f"{record['path']} has changed"
    except OSError:
        return f"{record['path']} is missing"
