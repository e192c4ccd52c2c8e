"""Writing models out of the cache: safetensors files, or Hugging Face directories."""

from __future__ import annotations

from ...checkpoints.export import export_hf, export_safetensors_file
from ...run.context import StepContext, written_files
from ...values import CheckpointRef, Model, Record
from .specs import ExportParams

__all__ = ["export"]


def export(ctx: StepContext, params: ExportParams, *, model: Model | CheckpointRef) -> Record:
    """The record names the file and its sha256, so a later run can tell whether the file on disk is
    still the one exported (and re-export it if not)."""
    target = ctx.output_path(params.path)
    if params.format == "hf":
        export_hf(model, target)
        return Record({"path": params.path, "format": "hf", "files": written_files(ctx.out_dir, target)})
    # Weights on disk are copied tensor by tensor, never all at once; the bytes are deterministic.
    arch = "checkpoint" if isinstance(model, CheckpointRef) else str(model.arch)
    export_safetensors_file(model, target, metadata={"mlspec_step": ctx.name, "arch": arch})
    files = written_files(ctx.out_dir, target)
    record = {"path": params.path, "format": "safetensors", "sha256": next(iter(files.values())),
              "bytes": target.stat().st_size, "files": files}
    if isinstance(model, Model):
        record["tensors"] = len(model.state)
    return Record(record)
