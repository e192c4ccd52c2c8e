"""Writing models out of the cache: safetensors files, or Hugging Face directories."""

from __future__ import annotations

from safetensors.torch import save_file

from mlspec.checkpoints import is_checkpoint
from mlspec.ops.models.specs import ExportParams
from mlspec.run.context import StepContext
from mlspec.run.outputs import digests
from mlspec.values import Model, Record

__all__ = ["export"]


def export(ctx: StepContext, params: ExportParams, *, model: Model) -> Record:
    target = ctx.output_path(params.path)
    if params.format == "hf":
        from mlspec.checkpoints.export import export_hf

        export_hf(model, target)
        return Record({"path": params.path, "format": "hf", "files": digests(ctx.out_dir, target)})
    if is_checkpoint(model):  # weights on disk: copy them tensor by tensor, never all at once
        from mlspec.checkpoints.export import export_safetensors_file

        export_safetensors_file(model, target)
        return Record({"path": params.path, "format": "safetensors", "bytes": target.stat().st_size,
                       "files": digests(ctx.out_dir, target)})
    tmp = target.with_name(target.name + ".tmp")
    state = {k: v.contiguous() for k, v in model.state.items()}
    save_file(state, str(tmp), metadata={"mlspec_step": ctx.name, "arch": str(model.arch)})
    tmp.replace(target)
    files = digests(ctx.out_dir, target)
    return Record({"path": params.path, "format": "safetensors", "sha256": next(iter(files.values())),
                   "tensors": len(state), "files": files})
