"""The user's own cache directory, for what mlspec derives once and keeps between processes (lark's
parser, the parse tables, the catalogue index): ``$XDG_CACHE_HOME/mlspec``, else ``~/.cache/mlspec``.
Not the shared temporary directory, whose files anyone can plant. Writes are atomic and best effort:
a cache that cannot be written only costs the next process the rebuild."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["directory", "write"]


def directory() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlspec"


def write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (readers see the old file or the new one); nothing
    happens where the directory cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass
