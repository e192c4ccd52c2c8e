"""One declaration per merge method, which both merge engines drive (torch-free).

A :class:`MergeMethod` says everything an engine needs to know about a weight-space merge:

- its **inputs**: a list of models (``models = [a, b]``) or a pair (``slerp(a, b)``); whether a base
  model is ``required``, ``optional`` or ``forbidden``; how many models it takes;
- its **parameters**: a pydantic model of scalar parameters (types, ranges, defaults, docs), and which
  of them are **per model** (one value per model; a scalar is broadcast) and which may **vary by
  tensor** (a gradient over layer depth, or ``by_name(...)`` rules; see
  :mod:`mlspec.checkpoints.settings`);
- its **kernel** over one parameter's group of tensors:
  ``kernel(tensors, base, *, <every parameter by its spec name>) -> Tensor``, where per-model
  parameters arrive as lists and varying ones already resolved for that tensor. A method that draws
  random numbers (``random = True``) also receives ``generator=``, seeded from the step's seed and
  the tensor's name, so its stream never depends on the order or the threads tensors are merged in;
- optional passes over the whole model (``prepare``: statistics such as TIES' whole-model trim
  threshold, passed to every kernel call) and over one whole tensor before it is merged in row chunks
  (``tensor_prepare``, for ``elementwise`` kernels whose rows can be merged independently once
  such per-tensor statistics are known). ``tensor_prepare(params, base, tensors, [generator,]
  **whole-model extras)`` returns keyword arguments for the kernel: scalars (a trim threshold per
  model), or per-entry tensors of the tensor's shape (DARE's keep-masks), of which each row chunk
  is passed its own rows. A random method's ``tensor_prepare`` gets the tensor's generator, so it
  draws what a whole-tensor call would.

The in-memory merge (:mod:`mlspec.ops.merge.apply`) and the streaming checkpoint engine
(:mod:`mlspec.checkpoints.engine`) both run a declaration through the same
:class:`~mlspec.ops.merge.apply.BoundMethod`; nothing about a method lives anywhere else.
:func:`declare` registers the method and its operator (``ties(...)`` in a spec).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from ...checkpoints import settings as st
from ...errors import did_you_mean
from ...registry import Kind, OpSpec, Params, Port, register

__all__ = ["MODELS", "WEIGHT", "MergeMethod", "BasePolicy", "declare", "get", "methods", "kernel_of"]

BasePolicy = Literal["required", "optional", "forbidden"]

#: The inputs of a merge of a list of models, and the per-model weight most methods take.
MODELS = Port("models", Kind.MODEL, many=True, doc="the models to merge")
WEIGHT = Field(default=1.0, description="the model's weight (one per model, or one for all)")
_PAIR = (Port("a", Kind.MODEL, doc="the first model"), Port("b", Kind.MODEL, doc="the second model"))


def _base_port(policy: BasePolicy) -> Port:
    return Port("base", Kind.MODEL, required=policy == "required",
                doc="the shared pre-trained anchor the task vectors start from")


@dataclass(frozen=True, eq=False)
class MergeMethod:
    name: str
    doc: str
    params: type[Params]
    kernel: str | Callable[..., Any]  # "package.module:function" (imported lazily) or the function
    base: BasePolicy = "forbidden"
    min_models: int = 1
    max_models: int | None = None
    pair: bool = False  # the inputs are two ports `a`, `b` instead of a `models` list
    per_model: frozenset[str] = frozenset()
    varying: frozenset[str] = frozenset()
    elementwise: bool = False
    random: bool = False
    prepare: str | Callable[..., Any] | None = None
    tensor_prepare: str | Callable[..., Any] | None = None
    version: str = "1"
    uses_data: bool = False
    #: Extra sentences for `mlspec ops NAME` (user methods: the function's docstring).
    source: str = ""
    dialects: frozenset[str] = frozenset({"merge"})
    #: Where it was declared: "mlspec" for built-ins, else the file or package (replacing a method
    #: is allowed only from the same origin, e.g. a user file loaded again).
    origin: str = "mlspec"
    _spec_params: list[type[Params]] = field(default_factory=list, repr=False)
    _one_field: dict[str, type[Params]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = (self.per_model | self.varying) - set(self.params.model_fields)
        if unknown:
            raise ValueError(f"merge method {self.name!r}: no parameter(s) {sorted(unknown)} to declare")

    # --- inputs ------------------------------------------------------------------------------
    def inputs_error(self, n_models: int, has_base: bool) -> str | None:
        """Why these inputs cannot be merged by this method, or None."""
        if self.base == "required" and not has_base:
            return f"{self.name} needs a base model (add `base = ...`)"
        if self.base == "forbidden" and has_base:
            return f"{self.name} takes no base model (remove `base = ...`)"
        if n_models < self.min_models or (self.max_models is not None and n_models > self.max_models):
            if self.max_models == self.min_models:
                wanted = f"exactly {self.min_models}"
            elif self.max_models is None:
                wanted = f"at least {self.min_models}"
            else:
                wanted = f"{self.min_models} to {self.max_models}"
            noun = "model" if self.min_models == 1 and self.max_models == 1 else "models"
            return f"{self.name} merges {wanted} {noun} (not {n_models})"
        return None

    def count_error(self, n_models: int, params: Mapping[str, Any]) -> str | None:
        """A per-model list whose length is not the number of models."""
        for key in sorted(self.per_model):
            value = params.get(key)
            if isinstance(value, list) and not st.is_rules(value) and len(value) != n_models:
                return f"{self.name}: {key} needs one value per model ({n_models}), not {len(value)} ({value!r})"
        return None

    # --- parameters --------------------------------------------------------------------------
    def normalise(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``given`` (settings allowed where declared) and return every parameter with
        defaults filled and settings in their normal form. Raises ValueError."""
        fields = self.params.model_fields
        aliases = {info.alias: name for name, info in fields.items() if info.alias}
        unknown = sorted(k for k in given if k not in fields and k not in aliases)
        if unknown:
            hint = did_you_mean(unknown[0], list(fields)) or f"it takes: {', '.join(fields) or 'nothing'}"
            raise ValueError(f"{self.name} has no parameter {unknown[0]!r} ({hint})")
        plain: dict[str, Any] = {}
        normal: dict[str, Any] = {}
        for key, value in given.items():
            key = aliases.get(key, key)
            if value is None:
                plain[key] = None
            elif key in self.per_model and isinstance(value, list | tuple) and not st.is_rules(value):
                each = [self._setting(key, v) for v in value]
                if not each:
                    raise ValueError(f"{key}: a list needs one value per model (not [])")
                normal[key] = each
            elif key in self.varying or key in self.per_model:
                normal[key] = self._setting(key, value)
            else:
                plain[key] = value
        # The whole model validates the fixed parameters, with one number of each setting standing
        # in for it (a required per-model or varying parameter is then present, as it is here).
        samples = {k: _first_leaf(v) for k, v in normal.items()}
        scalar = self.params.model_validate({**samples, **plain}).model_dump()
        return {**{k: v for k, v in scalar.items() if k not in normal}, **normal}

    def _setting(self, key: str, value: Any) -> Any:
        """One setting of ``key``: a number (or, where it may vary by tensor, a gradient or rules),
        each number checked against the parameter's declared type and range, alone (other
        parameters, required ones included, are not its business)."""
        alone = self._field_model(key)
        if key not in self.varying:
            return alone.model_validate({key: value}).model_dump()[key]
        normal = st.normalise(value)
        for leaf in st.leaves(normal):
            alone.model_validate({key: leaf})
        return normal

    def _field_model(self, key: str) -> type[Params]:
        if key not in self._one_field:
            info = self.params.model_fields[key]
            self._one_field[key] = create_model(self.params.__name__, __base__=Params, **{key: (info.annotation, info)})
        return self._one_field[key]

    def resolve(self, params: Mapping[str, Any], name: str, depth: float, n_models: int) -> dict[str, Any]:
        """The parameters for the tensor ``name`` at ``depth``: settings resolved to numbers,
        per-model ones as one value per model. Raises LookupError (rules that match nothing)."""
        out: dict[str, Any] = {}
        for key, value in params.items():
            if key in self.per_model:
                each = value if isinstance(value, list) and not st.is_rules(value) else [value] * n_models
                out[key] = [st.resolve(v, name, depth) if key in self.varying else v for v in each]
            elif key in self.varying and value is not None:
                out[key] = st.resolve(value, name, depth)
            else:
                out[key] = value
        return out

    def is_uniform(self, params: Mapping[str, Any], key: str) -> bool:
        value = params.get(key)
        if value is None or key not in self.varying:
            return True
        each = value if key in self.per_model and isinstance(value, list) and not st.is_rules(value) else [value]
        return all(st.is_uniform(v) for v in each)

    def spec_params(self) -> type[Params]:
        """The operator's parameter model: the declared one, with settings accepted where a
        parameter is per model or varies by tensor (validated and normalised by :meth:`normalise`)."""
        if self._spec_params:
            return self._spec_params[0]
        flexible = self.per_model | self.varying
        fields: dict[str, Any] = {}
        for name, info in self.params.model_fields.items():
            if name not in flexible:
                continue
            extra = {"per_model": name in self.per_model, "varies": name in self.varying, "scalar_field": info}
            fields[name] = (Any, Field(default=info.get_default(call_default_factory=True),
                                       description=info.description, json_schema_extra=extra))
        method = self

        def _normalise(model: Params) -> Params:
            given = {k: v for k, v in model.__dict__.items() if k in model.model_fields_set}
            for key, value in method.normalise(given).items():
                object.__setattr__(model, key, value)
            return model

        model = create_model(
            f"{_camel(self.name)}Params",
            __base__=self.params,
            __validators__={"_settings": model_validator(mode="after")(_normalise)},
            **fields,
        )
        self._spec_params.append(model)
        return model

    # --- the operator ------------------------------------------------------------------------
    def opspec(self) -> OpSpec:
        ports: tuple[Port, ...] = _PAIR if self.pair else (MODELS,)
        if self.base != "forbidden":
            ports = (*ports, _base_port(self.base)) if self.pair else (_base_port(self.base), *ports)
        doc = self.doc if not self.source else f"{self.doc}\n\n{self.source}"
        return OpSpec(
            name=self.name,
            doc=doc,
            inputs=ports,
            output=Kind.MODEL,
            impl=self.run,
            params=self.spec_params(),
            version=self.version,
            uses_seed=self.random,
            dialects=self.dialects,
            check_inputs=self.check_call,
        )

    def check_call(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
        """The checker's test of a call (``inputs``: each port's step name or names): the inputs'
        contract and per-model list lengths."""
        n = 2 if self.pair else len(inputs.get("models") or [])
        return self.inputs_error(n, "base" in inputs) or self.count_error(n, params)

    def run(self, ctx: Any, params: Params, **inputs: Any) -> Any:
        from .apply import run_method

        return run_method(self, ctx, params, **inputs)


def _first_leaf(setting: Any) -> Any:
    """One number of a normalised setting (a per-model list's first), for validating beside others."""
    first = setting[0] if isinstance(setting, list) and not st.is_rules(setting) else setting
    return next(iter(st.leaves(first)), first)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def kernel_of(ref: str | Callable[..., Any] | None) -> Callable[..., Any] | None:
    if ref is None or callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


_METHODS: dict[str, MergeMethod] = {}


def declare(method: MergeMethod) -> MergeMethod:
    """Register a merge method and its operator. A user's method may replace another user's (the
    same file loaded again, or another spec's file in a long-lived process); a built-in one is never
    replaced."""
    from ... import registry

    earlier = _METHODS.get(method.name)
    if earlier is not None and "mlspec" in (earlier.origin, method.origin):
        raise ValueError(f"merge method {method.name!r} is already declared by {earlier.origin}")
    if earlier is None and registry.registered(method.name) is not None:
        raise ValueError(f"{method.name!r} is already an operator; choose another name")
    register(method.opspec(), replace=earlier is not None)
    _METHODS[method.name] = method
    return method


def get(name: str) -> MergeMethod | None:
    from ... import registry

    registry.get(name)  # loads the catalogues (and installed plug-ins) on first use
    return _METHODS.get(name)


def methods() -> dict[str, MergeMethod]:
    from ... import registry

    registry.all_ops()
    return dict(_METHODS)
