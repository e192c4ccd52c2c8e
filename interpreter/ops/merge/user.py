"""Merge methods that researchers write themselves: one decorated function (torch-free module).

>>> import torch
>>> from mlspec import merge_method
>>> @merge_method("scaled_max")
... def scaled_max(tensors: list[torch.Tensor], *, scale: float = 1.0) -> torch.Tensor:
...     "Element-wise maximum of the models, scaled."
...     return torch.stack(tensors).amax(0) * scale

The function's signature is the method's declaration (:class:`~mlspec.ops.merge.method.MergeMethod`):

- the first parameter receives the models' tensors for one weight, in the spec's order;
- a parameter named ``base`` receives the base model's tensor: annotated ``torch.Tensor`` it makes
  ``base =`` required in the spec, ``torch.Tensor | None`` optional; without it a base is refused;
- a parameter named ``generator`` (``torch.Generator``) makes the method random: it receives a
  generator seeded from the step's seed and the tensor's name;
- every other parameter must be keyword-only, with an annotation — ``float``, ``int``, ``bool``,
  ``str``, ``Literal[...]``, lists of these, or ``Annotated[float, Field(ge = 0, le = 1)]`` for a
  range — and becomes a checked parameter of the operator (with its default, if it has one).
  ``float`` parameters may vary by tensor (``by_name(...)``, depth gradients); ``PerModel[float]``
  takes one value per model (a list, or one number for all), which the function receives as a list.

The docstring documents the operator in ``mlspec ops NAME``. A method declared in a spec's
``use python "file.py"`` runs only with ``--allow-python``; installed packages register theirs
through the ``mlspec.operators`` entry-point group.
"""

from __future__ import annotations

import hashlib
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from ...registry import Params
from .method import MergeMethod, declare

__all__ = ["merge_method", "PerModel", "MethodDefinitionError"]

_SCALARS = (float, int, bool, str)


class MethodDefinitionError(TypeError):
    """A decorated function that cannot be a merge method (says which parameter and why)."""


class _PerModelMarker:
    def __repr__(self) -> str:
        return "PerModel"


_PER_MODEL = _PerModelMarker()


class PerModel:
    """``weight: PerModel[float] = 1.0``: one value per model; the function receives a list."""

    def __class_getitem__(cls, item: Any) -> Any:
        return Annotated[item, _PER_MODEL]


def _is_tensor(annotation: Any) -> bool:
    return getattr(annotation, "__name__", None) == "Tensor" and "torch" in getattr(annotation, "__module__", "")


def _is_generator(annotation: Any) -> bool:
    return getattr(annotation, "__name__", None) == "Generator" and "torch" in getattr(annotation, "__module__", "")


def _optional(annotation: Any) -> Any | None:
    """``X`` of ``X | None`` / ``Optional[X]``, else None."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def _allowed(annotation: Any) -> bool:
    """float, int, bool, str, Literal[...], lists of these, Annotated versions of these."""
    origin = typing.get_origin(annotation)
    if annotation in _SCALARS:
        return True
    if origin is Literal:
        return all(isinstance(a, _SCALARS) for a in typing.get_args(annotation))
    if origin is Annotated:
        return _allowed(typing.get_args(annotation)[0])
    if origin is list:
        (item,) = typing.get_args(annotation) or (None,)
        return item is not None and _allowed(item)
    inner = _optional(annotation)
    return inner is not None and _allowed(inner)


def _base_type(annotation: Any) -> Any:
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def merge_method(
    name: str, *, min_models: int = 1, max_models: int | None = None, elementwise: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare ``fn`` as the merge method ``name`` (see the module docstring); returns ``fn`` unchanged.

    ``elementwise = True`` promises that merging row chunks of a tensor gives the rows of the whole
    merge, which lets the streaming engine bound its memory on large tensors."""
    if not name.isidentifier():
        raise MethodDefinitionError(f"a merge method's name is an identifier (not {name!r})")

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        declare(_declaration(fn, name, min_models=min_models, max_models=max_models, elementwise=elementwise))
        return fn

    return deco


def _declaration(fn: Callable[..., Any], name: str, *, min_models: int, max_models: int | None,
                 elementwise: bool) -> MergeMethod:
    where = f"merge method {name!r} ({fn.__module__}.{fn.__qualname__})"
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an annotation that does not evaluate
        raise MethodDefinitionError(f"{where}: cannot read its annotations ({exc})") from None
    params = list(inspect.signature(fn).parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise MethodDefinitionError(f"{where}: its first parameter must take the models' tensors (a list)")
    base_policy = "forbidden"
    random = False
    fields: dict[str, Any] = {}
    per_model: set[str] = set()
    varying: set[str] = set()
    for p in params[1:]:
        annotation = hints.get(p.name, inspect.Parameter.empty)
        if p.name == "base":
            if _is_tensor(annotation):
                base_policy = "required"
            elif _is_tensor(_optional(annotation)):
                base_policy = "optional"
            else:
                raise MethodDefinitionError(f"{where}: 'base' must be annotated torch.Tensor or torch.Tensor | None")
            continue
        if p.name == "generator":
            if not _is_generator(annotation):
                raise MethodDefinitionError(f"{where}: 'generator' must be annotated torch.Generator")
            random = True
            continue
        if p.kind is not p.KEYWORD_ONLY:
            raise MethodDefinitionError(
                f"{where}: parameter {p.name!r} must be keyword-only (put it after `*`)")
        if annotation is inspect.Parameter.empty:
            raise MethodDefinitionError(f"{where}: parameter {p.name!r} needs a type annotation")
        metadata = typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ()
        if _PER_MODEL in metadata:
            per_model.add(p.name)
            annotation = typing.get_args(annotation)[0]
        if not _allowed(annotation):
            raise MethodDefinitionError(
                f"{where}: parameter {p.name!r} has type {annotation!r}; use float, int, bool, str, "
                "Literal[...], a list of these, or Annotated[float, Field(ge=..., le=...)]")
        if _base_type(annotation) is float:
            varying.add(p.name)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, Field(default=default, description=_describe(annotation)))
    model = create_model(f"{name}_params", __base__=Params, **fields)
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\n\n")
    return MergeMethod(
        name=name,
        doc=(summary or f"A user-defined merge method from {Path(inspect.getfile(fn)).name}.") + "\n\n" + rest,
        params=model,
        kernel=fn,
        base=base_policy,  # type: ignore[arg-type]
        min_models=min_models,
        max_models=max_models,
        per_model=frozenset(per_model),
        varying=frozenset(varying),
        elementwise=elementwise,
        random=random,
        version="user-" + _source_digest(fn),
        origin=inspect.getfile(fn),
    )


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    return ""


def _source_digest(fn: Callable[..., Any]) -> str:
    """Edits to the file that defines the method re-run its steps (the digest enters the cache key)."""
    try:
        text = Path(inspect.getfile(fn)).read_bytes()
    except (OSError, TypeError):
        text = inspect.getsource(fn).encode()
    return hashlib.sha256(text).hexdigest()[:16]
