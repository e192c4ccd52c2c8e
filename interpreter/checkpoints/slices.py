"""Layer stacking — mergekit's ``slices`` (frankenmerges): which source tensors make each output
tensor (torch-free; the engines read the plan and merge or copy).

A stack is a list of slices; a slice lists its sources, each a model and a ``layer_range``
[start, end) of that model's transformer blocks, all of the same length. The output's blocks are
the slices' blocks in order: a slice with one source copies its blocks (``passthrough``); a slice
with several merges them block by block with the config's method. As in mergekit:

- a parameter is looked up on the source (per-model), then on the slice, then in the config's
  global ``parameters``; a level whose rule list matches nothing (no ``filter`` matches the tensor
  and there is no fallback rule) passes the question on to the next level;
- a gradient (a list of numbers) runs over the blocks of *its slice*: ``t = i / (n − 1)`` for the
  i-th of the slice's n blocks (``t = 1`` when n = 1); tensors outside the blocks read ``t = 0``;
- tensors outside the blocks come from the sources of the *first* slice when they are on the input
  side (names containing ``embed``, ``wte`` or ``wpe``: mergekit's ``pre_weights``) and from the
  sources of the *last* slice otherwise (final norm, output head: ``post_weights``), merged with
  the method when that slice has several sources;
- the output's ``num_hidden_layers`` is the sum of the slices' lengths, and its config starts from
  the base model's (else the first slice's first source's; mergekit picks an arbitrary model then).

Blocks are recognised by name: ``….layers.{i}.…`` (also ``h``, ``blocks``, ``block``, ``layer``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import settings as st
from .layout import CheckpointError

__all__ = ["LAYER", "LayerSource", "OutputLayer", "PlannedTensor", "Source", "StackPlan", "layer_index", "plan_slices"]

#: The block index inside a tensor name (group 1).
LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")
_INPUT_SIDE = re.compile(r"embed(?!_out)|(?:^|\.)wte\.|(?:^|\.)wpe\.")  # gpt-neox's embed_out is its head


def layer_index(name: str) -> int | None:
    """The index of the block holding tensor ``name``, or None for embeddings, final norms, heads."""
    match = LAYER.search(name)
    return int(match.group(1)) if match else None


def _renumber(name: str, index: int) -> str:
    match = LAYER.search(name)
    assert match is not None
    return f"{name[: match.start(1)]}{index}{name[match.end(1) :]}"


def _fail(message: str) -> CheckpointError:
    return CheckpointError(f"cannot stack layers: {message}")


@dataclass(frozen=True)
class Source:
    """One input of an output tensor: ``tensor`` of ``model``, with the source's own parameters."""

    model: str
    tensor: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedTensor:
    """An output tensor: copied from its one source, or merged from several with the method."""

    name: str
    sources: tuple[Source, ...]
    slice: int
    layer: int | None  # the output block, None outside the blocks
    t: float  # depth for gradients, within the slice
    slice_parameters: Mapping[str, Any]
    global_parameters: Mapping[str, Any]
    base: str | None  # the slice's base_model, else the config's

    @property
    def copied(self) -> bool:
        return len(self.sources) == 1

    def parameter(self, name: str, source: int | None = None, default: Any = None) -> Any:
        """Parameter ``name`` for this tensor: for ``source`` i (a per-model parameter, its filters
        matched against that source's tensor name) looked up on the source, the slice, the config;
        without ``source`` (a global parameter, filters matched against the output name) on the
        slice and the config. ``default`` when no level gives a value."""
        levels = [self.slice_parameters, self.global_parameters]
        target = self.name
        if source is not None:
            levels.insert(0, self.sources[source].parameters)
            target = self.sources[source].tensor
        for level in levels:
            if name not in level:
                continue
            value = level[name]
            if isinstance(value, bool | str):
                return value
            try:
                return st.resolve(st.normalise(value), target, self.t)
            except LookupError:
                continue
            except ValueError as exc:
                raise _fail(f"parameter {name!r}: {exc}") from None
        return default


@dataclass(frozen=True)
class LayerSource:
    model: str
    layer: int


@dataclass(frozen=True)
class OutputLayer:
    """Output block ``index`` is made from these source blocks (one: copied; several: merged)."""

    index: int
    slice: int
    sources: tuple[LayerSource, ...]
    t: float


@dataclass(frozen=True)
class StackPlan:
    method: str
    layers: tuple[OutputLayer, ...]
    tensors: tuple[PlannedTensor, ...]
    num_hidden_layers: int
    config_from: str  # the model whose config.json the output's starts from


@dataclass(frozen=True)
class _Range:
    model: str
    start: int
    end: int
    parameters: Mapping[str, Any]


def _blocks(model: str, names: Sequence[str]) -> dict[int, dict[str, str]]:
    """block index -> {name with the index blanked: full name}; one stack of blocks per model."""
    prefixes = {name[: m.start(1)] for name in names if (m := LAYER.search(name))}
    if len(prefixes) > 1:
        raise _fail(f"{model!r} has several stacks of blocks ({', '.join(sorted(prefixes))}); slices need one")
    blocks: dict[int, dict[str, str]] = {}
    for name in names:
        index = layer_index(name)
        if index is not None:
            blocks.setdefault(index, {})[_renumber(name, 0)] = name
    if not blocks:
        raise _fail(f"{model!r} has no transformer blocks (no tensor named like 'model.layers.0.…')")
    return blocks


def _ranges(
    slices: Sequence[Mapping[str, Any]], tensor_names: Mapping[str, Sequence[str]]
) -> tuple[list[list[_Range]], dict[str, dict[int, dict[str, str]]]]:
    """Each slice's validated sources, and the blocks of every model they use."""
    out = []
    blocks: dict[str, dict[int, dict[str, str]]] = {}
    for i, sl in enumerate(slices):
        sources = sl.get("sources") if isinstance(sl, Mapping) else None
        if not isinstance(sources, list) or not sources:
            raise _fail(f"slice {i} has no sources (write sources: [{{model: ..., layer_range: [start, end]}}])")
        ranges = []
        for src in sources:
            model, span = src.get("model"), src.get("layer_range")
            if model not in tensor_names:
                raise _fail(f"slice {i}: unknown model {model!r} (known: {', '.join(map(repr, tensor_names))})")
            if model not in blocks:
                blocks[model] = _blocks(model, tensor_names[model])
            if (
                not isinstance(span, list | tuple)
                or len(span) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)
            ):
                raise _fail(f"slice {i}: {model!r}: layer_range must be [start, end] (not {span!r})")
            start, end = span
            count = max(blocks[model]) + 1
            if not 0 <= start < end <= count:
                raise _fail(
                    f"slice {i}: {model!r}: layer_range [{start}, {end}] must satisfy 0 ≤ start < end ≤ {count} "
                    f"(the model has {count} blocks; end is exclusive)"
                )
            ranges.append(_Range(str(model), start, end, dict(src.get("parameters") or {})))
        lengths = {r.end - r.start for r in ranges}
        if len(lengths) > 1:
            raise _fail(f"slice {i}: every source must span the same number of blocks (not {sorted(lengths)})")
        out.append(ranges)
    return out, blocks


def _layer_tensors(
    layer: OutputLayer, ranges: list[_Range], blocks: Mapping[str, dict[int, dict[str, str]]]
) -> list[tuple[str, tuple[Source, ...]]]:
    """The output block's tensors (named as the first source's, renumbered) and their sources."""
    first = blocks[ranges[0].model][layer.sources[0].layer]
    result = []
    for key, name in first.items():
        sources = []
        for r, ls in zip(ranges, layer.sources):
            theirs = blocks[r.model].get(ls.layer, {})
            if key not in theirs:
                raise _fail(f"{r.model!r} block {ls.layer} has no tensor like {name!r}; the slice's sources do not fit")
            sources.append(Source(r.model, theirs[key], r.parameters))
        result.append((_renumber(name, layer.index), tuple(sources)))
    return result


def plan_slices(
    slices: Sequence[Mapping[str, Any]],
    tensor_names: Mapping[str, Sequence[str]],
    *,
    method: str = "passthrough",
    base_model: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> StackPlan:
    """Plan a stack from mergekit-style ``slices`` and each model's tensor names. Raises
    :class:`~mlspec.errors.CheckpointError` for what mergekit rejects (unequal source lengths, a
    layer range outside the model) and what it would fail on later (passthrough of several sources)."""
    if not slices:
        raise _fail("no slices")
    ranges, blocks = _ranges(slices, tensor_names)
    if method == "passthrough":
        for i, rs in enumerate(ranges):
            if len(rs) != 1:
                raise _fail(f"passthrough copies one source per slice; slice {i} has {len(rs)} (merge them with another method)")
    glob = dict(parameters or {})
    layers: list[OutputLayer] = []
    tensors: list[PlannedTensor] = []

    def planned(name: str, sources: tuple[Source, ...], i: int, layer: int | None, t: float) -> PlannedTensor:
        sl = slices[i]
        base = sl.get("base_model") or base_model
        return PlannedTensor(name, sources, i, layer, t, dict(sl.get("parameters") or {}), glob, base)

    def outside(i: int, input_side: bool) -> None:
        first = ranges[i][0].model
        for name in tensor_names[first]:
            if layer_index(name) is not None or bool(_INPUT_SIDE.search(name)) != input_side:
                continue
            for r in ranges[i]:
                if name not in tensor_names[r.model]:
                    raise _fail(f"{r.model!r} has no tensor {name!r}, which {first!r} has (slice {i})")
            tensors.append(planned(name, tuple(Source(r.model, name, r.parameters) for r in ranges[i]), i, None, 0.0))

    outside(0, input_side=True)
    for i, rs in enumerate(ranges):
        n = rs[0].end - rs[0].start
        for k in range(n):
            t = k / (n - 1) if n > 1 else 1.0
            layer = OutputLayer(len(layers), i, tuple(LayerSource(r.model, r.start + k) for r in rs), t)
            for name, sources in _layer_tensors(layer, rs, blocks):
                tensors.append(planned(name, sources, i, layer.index, t))
            layers.append(layer)
    outside(len(ranges) - 1, input_side=False)
    config_from = base_model or ranges[0][0].model
    return StackPlan(method, tuple(layers), tuple(tensors), len(layers), config_from)
