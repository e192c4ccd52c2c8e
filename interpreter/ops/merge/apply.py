"""Running a declared merge method (:mod:`mlspec.ops.merge.method`) on models in memory or on
checkpoints on disk.

:class:`BoundMethod` is a method with its parameters for one merge: it resolves the parameters of
each tensor (per model, by name, by depth), seeds each tensor's random stream from the step's seed
and the tensor's name, runs the whole-model pass, and calls the kernel. The in-memory loop
(:func:`~mlspec.ops.merge.merging.merge_models`) and the streaming engine
(:func:`~mlspec.checkpoints.engine.stream_merge`) both drive it, so a method — built in or a
user's — behaves the same in both, to the bit.

The operator of every declared method is :func:`run_method`: it merges in memory when its inputs are
models held in memory and streams tensor by tensor when they are checkpoints on disk.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...checkpoints import settings as st
from ...checkpoints.layout import CheckpointError, reference
from ...checkpoints.source import layer_index
from ...errors import StepError
from ...registry import Params
from ...run.context import StepContext
from ...values import CheckpointRef, Model
from .merging import labels, merge_models
from .method import MergeMethod, kernel_of

__all__ = ["BoundMethod", "merge", "run_method", "stream", "streamed_checkpoint", "tensor_generator", "Groups"]

#: Called once per pass: yields ``(base tensor or None, the models' tensors)`` for every merged tensor.
Groups = Callable[[], Iterable[tuple[Tensor | None, list[Tensor]]]]


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A generator for the tensor ``name``, seeded from the step's seed and the name alone."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    generator = torch.Generator()
    generator.manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return generator


class BoundMethod:
    """A merge method with the parameters of one merge of ``n_models`` models."""

    def __init__(self, method: MergeMethod, params: Mapping[str, Any], n_models: int, *, seed: int = 0,
                 num_layers: int = 1):
        self.method = method
        self.params = dict(params)
        self.n_models = n_models
        self.seed = seed
        self.num_layers = num_layers
        self.extras: dict[str, Any] = {}
        self._kernel = kernel_of(method.kernel)
        assert self._kernel is not None

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def elementwise(self) -> bool:
        return self.method.elementwise

    @property
    def random(self) -> bool:
        return self.method.random

    def depth(self, name: str) -> float:
        return st.depth(layer_index(name), self.num_layers)

    def resolved(self, name: str) -> dict[str, Any]:
        try:
            return self.method.resolve(self.params, name, self.depth(name), self.n_models)
        except LookupError as exc:
            raise ValueError(str(exc)) from None

    def prepare(self, groups: Groups) -> None:
        """The whole-model pass (if the method has one); its results go to every kernel call."""
        prepare = kernel_of(self.method.prepare)
        if prepare is not None:
            self.extras = dict(prepare(self.method, self.params, groups) or {})

    def tensor_extras(self, name: str, base: Tensor | None, tensors: Sequence[Tensor],
                      **overrides: Any) -> dict[str, Any]:
        """Statistics of one whole tensor that an element-wise kernel needs before row chunks
        (``overrides`` replace resolved parameters, as in a call)."""
        prepare = kernel_of(self.method.tensor_prepare)
        if prepare is None:
            return {}
        extra = dict(self.extras)
        if self.method.random:  # the whole tensor's draws (DARE's masks), as a whole-tensor call makes them
            extra["generator"] = tensor_generator(self.seed, name)
        return dict(prepare({**self.resolved(name), **overrides}, base, list(tensors), **extra) or {})

    def __call__(self, name: str, base: Tensor | None, tensors: Sequence[Tensor], **extra: Any) -> Tensor:
        """The merged tensor ``name``. Raises ValueError (the kernel's parameter checks)."""
        kwargs = {**self.resolved(name), **self.extras, **extra}
        if self.method.random:
            kwargs["generator"] = tensor_generator(self.seed, name)
        if self.method.base != "forbidden":
            kwargs["base"] = base
        merged = self._kernel(list(tensors), **kwargs)
        if not isinstance(merged, Tensor) or merged.shape != tensors[0].shape:
            got = tuple(merged.shape) if isinstance(merged, Tensor) else type(merged).__name__
            raise ValueError(f"the kernel returned {got} for a tensor of shape {tuple(tensors[0].shape)}")
        return merged


def _float_groups(base: Model | None, models: Sequence[Model]) -> Groups:
    ref = base if base is not None else models[0]

    def groups() -> Iterable[tuple[Tensor | None, list[Tensor]]]:
        for name, tensor in ref.state.items():
            if tensor.is_floating_point():
                yield (base.state[name] if base is not None else None), [m.state[name] for m in models]

    return groups


def _num_layers(names: Iterable[str]) -> int:
    layers = [i for i in map(layer_index, names) if i is not None]
    return max(layers) + 1 if layers else 1


def run_method(method: MergeMethod, ctx: StepContext, params: Params, **inputs: Any) -> Model | CheckpointRef:
    """The operator of a declared merge method: in memory for models, streamed for checkpoints."""
    models = [inputs["a"], inputs["b"]] if method.pair else list(inputs.get("models") or [])
    base = inputs.get("base")
    values = params.model_dump()
    problem = method.inputs_error(len(models), base is not None) or method.count_error(len(models), values)
    if problem:
        raise StepError(problem)
    everyone = [base, *models] if base is not None else models
    on_disk = [isinstance(v, CheckpointRef) for v in everyone]
    if all(on_disk):
        return stream(ctx, method, values, base, models)
    if any(on_disk):
        raise StepError(f"{method.name}: cannot merge checkpoints on disk with models held in memory; "
                        "load them all with load(...)")
    bound = BoundMethod(method, values, len(models), seed=ctx.seed, num_layers=_num_layers(everyone[0].state))
    bound.prepare(_float_groups(base, models))
    return merge_models(ctx, models, bound, method=method.name, params=values, base=base)


_PORTS = ("models", "base", "a", "b")


def merge(method: str | MergeMethod, ctx: StepContext, /, **arguments: Any) -> Model | CheckpointRef:
    """Run a merge method from Python as a spec would: ``merge("ties", ctx, base = b, models = [x, y],
    density = 0.5)``; the parameters are validated like a spec's."""
    from . import method as methods

    found = methods.get(method) if isinstance(method, str) else method
    if found is None:
        raise KeyError(f"no merge method {method!r}")
    inputs = {k: v for k, v in arguments.items() if k in _PORTS}
    params = found.spec_params().model_validate({k: v for k, v in arguments.items() if k not in _PORTS})
    return run_method(found, ctx, params, **inputs)


def _labels(ctx: StepContext, method: MergeMethod, n: int) -> list[str]:
    if method.pair:
        return [str(ctx.input_names.get(p) or p) for p in ("a", "b")]
    return labels(ctx, [None] * n)  # type: ignore[list-item]


def stream(ctx: StepContext, method: MergeMethod, values: Mapping[str, Any], base: CheckpointRef | None,
           models: Sequence[CheckpointRef], options: Any = None) -> CheckpointRef:
    """Merge checkpoints on disk tensor by tensor into the step's work directory."""
    from ...checkpoints.engine import StreamOptions, stream_merge

    names = _labels(ctx, method, len(models))
    paths = [m.existing(label) for m, label in zip(models, names)]
    base_path = base.existing("base") if base is not None else None
    bound = BoundMethod(method, values, len(models), seed=ctx.seed)
    return streamed_checkpoint(ctx, "", lambda out_dir: stream_merge(
        bound, base_path, paths, out_dir, options=options or StreamOptions(), labels=names, progress=ctx.progress))


def streamed_checkpoint(ctx: StepContext, what: str, write: Callable[[Path], dict[str, Any]]) -> CheckpointRef:
    """The checkpoint ``write`` streams into the step's work directory (its result is the merge's
    info). A directory left by a run that did not finish is cleared first; a CheckpointError
    removes the partial output and becomes a StepError (``what``: the message's prefix)."""
    out_dir = ctx.work_dir / "checkpoint"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    try:
        info = write(out_dir)
    except CheckpointError as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise StepError(f"{what}{exc}") from None
    return reference(out_dir, merge=info)
