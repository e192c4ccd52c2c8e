"""A content-addressed artifact store: ``<root>/<key[:2]>/<key>/{tensors.safetensors, meta.json}``.

Writes go to a private temporary directory that is renamed into place only when complete, so an
interrupted run never leaves a half-written artifact that a later run would trust. Nothing is
pickled: tensors via safetensors, the rest as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from mlspec.values import Value, from_parts, to_parts

__all__ = ["Cache", "default_cache_dir"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MLSPEC_CACHE_DIR", ".mlspec/cache"))


class Cache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def save(self, key: str, value: Value, extra: dict[str, Any] | None = None, *, replace: bool = False) -> None:
        """Store ``value`` under ``key``. An artifact already there is kept (another worker made the same
        one), unless ``replace``: a step that writes files records what it wrote this time."""
        from safetensors.torch import save_file

        tensors, meta = to_parts(value)
        meta = {**meta, **({"step": extra} if extra else {})}
        final = self.path(key)
        tmp = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            if tensors:
                save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, sort_keys=True))
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                if not replace:  # another worker finished the same step first; keep theirs
                    return
                old = self.root / "tmp" / f"{key}.{uuid.uuid4().hex}.old"
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def load(self, key: str) -> Value:
        from safetensors.torch import load_file

        base = self.path(key)
        meta = json.loads((base / "meta.json").read_text())
        tensor_file = base / "tensors.safetensors"
        tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
        return from_parts(tensors, meta)

    def load_meta(self, key: str) -> dict[str, Any]:
        return json.loads((self.path(key) / "meta.json").read_text())  # type: ignore[no-any-return]

    # The last plan of each study, for `--dry-run` to say *why* a step will re-run.
    def _index_path(self, study: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in study)
        return self.root / "index" / f"{safe}.json"

    def read_index(self, study: str) -> dict[str, Any]:
        try:
            return json.loads(self._index_path(study).read_text())  # type: ignore[no-any-return]
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_index(self, study: str, entries: dict[str, Any]) -> None:
        path = self._index_path(study)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(entries, sort_keys=True))
        os.replace(tmp, path)
