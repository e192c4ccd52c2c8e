"""Files a step writes outside the cache (exports), and whether they are still what it wrote.

A step that writes files (``export``) records ``{"files": {path relative to the output directory:
sha256}}``. A later run skips it when its record is in the cache and every file still has that
digest; a missing or edited file is written again. Reading a file back is cheaper than writing it
(and, for a model held in the cache, much cheaper than loading it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["digest", "digests", "intact"]


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digests(out_dir: Path, target: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of ``target`` (a file, or every file under a directory)."""
    files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
    return {_relative(p, out_dir): digest(p) for p in files}


def intact(record: Any, out_dir: Path) -> bool:
    """Every file the record lists exists under ``out_dir`` with the recorded digest."""
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict) or not files:
        return False
    for relative, sha in files.items():
        path = Path(relative) if Path(relative).is_absolute() else out_dir / relative
        if not path.is_file() or digest(path) != sha:
            return False
    return True


def _relative(path: Path, out_dir: Path) -> str:
    try:
        return path.resolve().relative_to(out_dir.resolve()).as_posix()
    except ValueError:  # written outside the output directory (--allow-outside-out)
        return str(path.resolve())
