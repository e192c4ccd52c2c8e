"""``export m to "out/merged" as hf``: a directory ``transformers.AutoModel.from_pretrained`` loads.

Works for checkpoint references (tensors are streamed from disk, re-sharded) and for models held in
memory (their state dict). The config and tokenizer come from ``base_dir`` — by default the
directory of the checkpoint itself, or of the first input of the merge that made it. The directory
is assembled next to its destination and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import glob
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import StepError
from ..values import CheckpointRef, Model
from . import hfdir
from .layout import CheckpointError, locate, parse_size
from .source import Checkpoint
from .writer import SINGLE_NAME, PlannedTensor, ShardedWriter

__all__ = ["export_hf", "config_source"]


def config_source(model: Model | CheckpointRef) -> Path | None:
    """The HF directory whose config and tokenizer describe ``model``: its own, or its merge's
    first input (the base)."""
    candidates = [model.path] if isinstance(model, CheckpointRef) else []
    candidates += model.info.get("merge", {}).get("inputs", [])[:1]
    for candidate in candidates:
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    return None


def _write_weights(model: Model | CheckpointRef, out: Path, shard_bytes: int,
                   metadata: dict[str, str] | None = None) -> tuple[dict[str, Any], set[torch.dtype]]:
    """Write the weights; returns the source config (if any) and the dtypes written."""
    if isinstance(model, CheckpointRef):
        with Checkpoint.open(model.path) as ck:
            plan = [PlannedTensor(n, ck.info(n).shape, ck.info(n).dtype) for n in ck.names]
            with ShardedWriter(out, plan, shard_bytes=shard_bytes, metadata=metadata) as writer:
                for name in ck.names:
                    writer.write(name, ck.tensor(name))
            return ck.config, {p.dtype for p in plan}
    plan = [PlannedTensor(n, tuple(t.shape), t.dtype) for n, t in model.state.items()]
    with ShardedWriter(out, plan, shard_bytes=shard_bytes, metadata=metadata) as writer:
        for name, tensor in model.state.items():
            writer.write(name, tensor)
    return {}, {p.dtype for p in plan}


def export_hf(
    model: Model | CheckpointRef,
    out_path: Path,
    base_dir: Path | None = None,
    *,
    spec: str | None = None,
    title: str | None = None,
    shard_size: str | int = "5GB",
) -> Path:
    """Write ``model`` as a Hugging Face directory at ``out_path`` (replacing one that exists)."""
    base_dir = base_dir or config_source(model)
    if base_dir is None:
        raise StepError(
            "export as hf needs a config.json: the model is neither a Hugging Face checkpoint nor merged "
            "from one (pass the base model's directory)"
        )
    try:
        base_layout = locate(base_dir)
    except CheckpointError as exc:
        raise StepError(f"export as hf: {exc}") from None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        config, dtypes = _write_weights(model, staging, parse_size(shard_size))
        names = {str(d).removeprefix("torch.") for d in dtypes if d.is_floating_point}
        untied = bool(model.info.get("merge", {}).get("notes", {}).get("untied"))
        hfdir.write_config(
            staging,
            config or base_layout.config,
            dtype=names.pop() if len(names) == 1 else None,
            untied=untied,
        )
        hfdir.copy_companions(base_layout.directory, staging)
        merge = model.info.get("merge")
        own = model.path if isinstance(model, CheckpointRef) else ""
        sources = list(merge.get("inputs", [])) if merge else [own]
        hfdir.write_card(
            staging, title=title or out_path.name, merge=merge, sources=[s for s in sources if s], spec=spec
        )
        if out_path.exists():
            shutil.rmtree(out_path)
        staging.rename(out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_path


def export_safetensors_file(model: Model | CheckpointRef, target: Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model`` (a checkpoint reference or weights in memory) as one .safetensors file,
    tensor by tensor, renamed into place only when complete. The same model always gives the same
    bytes (tensors in the model's order, metadata sorted)."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_weights(model, staging, shard_bytes=2**62, metadata=metadata)
        (staging / SINGLE_NAME).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*"):  # of exports killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
