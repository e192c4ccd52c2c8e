"""A content-addressed artifact store: ``<root>/<key[:2]>/<key>/{tensors.safetensors, meta.json, sha256.json}``.

Writes go to a private temporary directory that is renamed into place only when complete, so an
interrupted run never leaves a half-written artifact that a later run would trust. Nothing is
pickled: tensors via safetensors, the rest as JSON.

An entry never lies: ``sha256.json`` records the digest of each of its files, and an entry is
verified (one streamed read) before it is first used. One that fails — flipped bytes, a missing or
truncated file, metadata that does not parse — is reported in one line, discarded, and its step
computed again. Two runs on one cache compute a step once: whoever computes it holds the entry's
lock, and the other finds it cached when the lock is released.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..plan.steps import path_component
from ..values import Value, from_parts, to_parts

__all__ = ["Cache", "default_cache_dir", "write_atomic", "file_sha256"]

SUMS = "sha256.json"
META = "meta.json"
TENSORS = "tensors.safetensors"


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLSPEC_CACHE_DIR", ".mlspec/cache"))


def file_sha256(path: Path) -> str:
    """The digest of a file, read in 1 MiB chunks (memory stays flat for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``path`` through a temporary file renamed into place. On failure (a full or read-only
    disk) no temporary file is left and the error names ``path``, not the temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # of writers killed mid-write
            leftover.unlink(missing_ok=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_tensors(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    except OSError:
        raise
    except Exception as exc:  # safetensors reports a full disk as its own error type
        raise OSError(None, str(exc), str(path)) from None


def _stderr_line(message: str) -> None:
    print(f"mlspec: {message}", file=sys.stderr)


class Cache:
    def __init__(self, root: str | Path, *, notify: Callable[[str], None] = _stderr_line):
        self.root = Path(root)
        self.notify = notify  # where a discarded entry is reported (one line each)
        self._verified: set[str] = set()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        """Whether a complete, intact entry exists (a damaged one is discarded here)."""
        if key in self._verified:
            return True
        if not (self.path(key) / SUMS).is_file():
            return False
        problem = self.problem(key)
        if problem is not None:
            self.discard(key, problem)
            return False
        self._verified.add(key)
        return True

    def problem(self, key: str) -> str | None:
        """What is wrong with an entry, or None when every file matches its recorded digest."""
        base = self.path(key)
        try:
            sums = json.loads((base / SUMS).read_bytes())
            if not isinstance(sums, dict) or META not in sums:
                return f"{SUMS} lists no {META}"
            for name, expected in sums.items():
                if name not in (META, TENSORS):
                    return f"{SUMS} lists an unknown file {name!r}"
                if file_sha256(base / name) != expected:
                    return f"{name} does not match its sha256"
            json.loads((base / META).read_bytes())
        except FileNotFoundError as exc:
            return f"{Path(exc.filename or '?').name} is missing"
        except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
            return f"unreadable ({type(exc).__name__}: {exc})"
        return None

    def discard(self, key: str, problem: str) -> None:
        self._verified.discard(key)
        self.notify(f"cache entry {key[:12]}… is damaged ({problem}); discarded, its step runs again")
        grave = self.root / "tmp" / f"discarded-{key}.{uuid.uuid4().hex[:8]}"
        try:
            grave.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(key), grave)
        except OSError:
            return  # a read-only cache: the entry stays, and is never trusted
        shutil.rmtree(grave, ignore_errors=True)

    def keys(self) -> Iterator[str]:
        """Every entry's key (complete or not) — for ``mlspec cache``."""
        for shard in sorted(self.root.glob("??")):
            if shard.is_dir():
                yield from sorted(p.name for p in shard.iterdir() if p.is_dir())

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s lock (an advisory file lock; released if the process dies)."""
        import fcntl

        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save(self, key: str, value: Value, extra: dict[str, Any] | None = None, *, replace: bool = False) -> None:
        """Store ``value``; an intact existing entry is kept (another run computed the same) unless
        ``replace``."""
        tensors, meta = to_parts(value)
        meta = {**meta, **({"step": extra} if extra else {})}
        final = self.path(key)
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}"
        # Earlier writers of this entry that were killed mid-write (the caller holds the entry's lock).
        for leftover in (self.root / "tmp").glob(f"{glob.escape(key)}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            if tensors:
                _save_tensors(tensors, tmp / TENSORS)
            (tmp / META).write_text(json.dumps(meta, sort_keys=True))
            sums = {name: file_sha256(tmp / name) for name in (META, TENSORS) if (tmp / name).exists()}
            (tmp / SUMS).write_text(json.dumps(sums, sort_keys=True))
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                if not replace and self.has(key):
                    return
                shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:
                if not self.has(key):  # not a concurrent writer of the same entry: a real failure
                    raise
            self._verified.add(key)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write the cache entry: {exc.strerror or exc}",
                          exc.filename or str(final)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, key: str) -> Value:
        from safetensors.torch import load_file

        if not self.has(key):
            raise KeyError(f"no intact cache entry {key}")
        base = self.path(key)
        meta = json.loads((base / META).read_text())
        tensor_file = base / TENSORS
        tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
        return from_parts(tensors, meta)

    def load_meta(self, key: str) -> dict[str, Any]:
        if not self.has(key):
            raise KeyError(f"no intact cache entry {key}")
        return json.loads((self.path(key) / META).read_text())  # type: ignore[no-any-return]

    # --- `mlspec cache verify | size | gc` ---------------------------------------------------------
    def verify_all(self) -> list[tuple[str, str]]:
        """Check every entry; damaged ones are discarded. Returns ``(key, problem)`` for each."""
        bad = []
        for key in list(self.keys()):
            problem = self.problem(key) if (self.path(key) / SUMS).is_file() else f"{SUMS} is missing"
            if problem is not None:
                self.discard(key, problem)
                bad.append((key, problem))
        return bad

    def size(self) -> tuple[int, int]:
        """``(entries, bytes)`` of everything under the cache root."""
        total = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.exists() else 0
        return sum(1 for _ in self.keys()), total

    def garbage(self) -> list[Path]:
        """What ``gc`` removes: leftovers of interrupted runs (tmp/, scratch work/ of finished steps)
        and entries that no study's last run used (see the index)."""
        used = set()
        for index in (self.root / "index").glob("*.json"):
            try:
                used |= {entry["key"] for entry in json.loads(index.read_text()).values() if "key" in entry}
            except (OSError, ValueError, TypeError, AttributeError):
                continue
        out = sorted((self.root / "tmp").glob("*")) if (self.root / "tmp").is_dir() else []
        if (self.root / "work").is_dir():
            out += [p for p in sorted((self.root / "work").iterdir()) if self.has(p.name)]
        return out + [self.path(key) for key in self.keys() if key not in used]

    # The last plan of each study, for `--dry-run` to say *why* a step will re-run.
    def _index_path(self, study: str) -> Path:
        return self.root / "index" / f"{path_component(study)}.json"

    def read_index(self, study: str) -> dict[str, Any]:
        try:
            return json.loads(self._index_path(study).read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def write_index(self, study: str, entries: dict[str, Any]) -> None:
        """Best effort: the index only explains re-runs, so a read-only cache still serves a run."""
        try:
            write_atomic(self._index_path(study), json.dumps(entries, sort_keys=True))
        except OSError:
            pass
