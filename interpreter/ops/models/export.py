"""Writing models out of the cache: safetensors files, or Hugging Face directories."""

from __future__ import annotations

import hashlib

from safetensors.torch import save_file

from mlspec.ops.models.specs import ExportParams
from mlspec.run.context import StepContext
from mlspec.values import CheckpointRef, Model, Record

__all__ = ["export"]


def export(ctx: StepContext, params: ExportParams, *, model: Model | CheckpointRef) -> Record:
    target = ctx.output_path(params.path)
    if params.format == "hf":
        from mlspec.checkpoints.export import export_hf

        export_hf(model, target)
        return Record({"path": params.path, "format": "hf"})
    if isinstance(model, CheckpointRef):  # weights on disk: copy them tensor by tensor, never all at once
        from mlspec.checkpoints.export import export_safetensors_file

        export_safetensors_file(model, target)
        return Record({"path": params.path, "format": "safetensors", "bytes": target.stat().st_size})
    tmp = target.with_name(target.name + ".tmp")
    state = {k: v.contiguous() for k, v in model.state.items()}
    save_file(state, str(tmp), metadata={"mlspec_step": ctx.name, "arch": str(model.arch)})
    tmp.replace(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return Record({"path": params.path, "format": "safetensors", "sha256": digest, "tensors": len(state)})
