"""A classifier's *head* (its output layer) as a value that can travel with a task: read it from
one model, put it on another. Multi-task merging keeps one head per task and merges the bodies."""

from __future__ import annotations

from torch import Tensor

from ...errors import StepError
from ...values import Model

__all__ = ["head_prefix", "head_of", "put_head"]


def head_prefix(model: Model) -> str:
    """The state-dict prefix of the output layer of the architectures that have one."""
    kind = model.arch.get("type")
    if kind == "mlp":
        return f"layers.{len(model.arch['hidden'])}."
    if kind == "resnet":
        return "head."
    raise StepError(f"a {kind!r} model has no separate head; heads travel between mlp and resnet classifiers")


def head_of(model: Model) -> tuple[str, dict[str, Tensor]]:
    """``(prefix, {name without the prefix: tensor})`` of the model's output layer."""
    prefix = head_prefix(model)
    return prefix, {k[len(prefix):]: v for k, v in model.state.items() if k.startswith(prefix)}


def put_head(model: Model, head: dict[str, Tensor], *, source: str = "the task's head") -> Model:
    """``model`` with its output layer replaced by ``head``; the shapes must match."""
    prefix = head_prefix(model)
    state = dict(model.state)
    for name, tensor in head.items():
        key = prefix + name
        if key not in state or state[key].shape != tensor.shape:
            got = tuple(state[key].shape) if key in state else "missing"
            raise StepError(f"{source} does not fit this model: {key} is {tuple(tensor.shape)} there "
                            f"but {got} here")
        state[key] = tensor
    return Model(arch=dict(model.arch), state=state, info=dict(model.info))
