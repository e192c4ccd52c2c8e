"""Check that checkpoints line up, and plan every output tensor, before any tensor is merged.

All problems are collected and reported together (a user fixing a merge of three 7B models should
not discover them one run at a time): a tensor missing from a checkpoint, a shape that differs
(both shapes and both checkpoints named), an output head absent because embeddings are tied.

Two situations are settled by named options, never silently:

- ``extra``: tensors that not every checkpoint has — ``error`` (default), ``base`` (copy them from
  the base, or the first model when there is none; drop them when it lacks them too), ``drop``.
- ``tied``: a checkpoint whose config says ``tie_word_embeddings`` stores no output head while
  another stores one — ``error`` (default) or ``untie`` (read its input embedding as its head; the
  output then has an untied head, and its config says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .layout import CheckpointError
from .source import Checkpoint, layer_index
from .writer import PlannedTensor

__all__ = ["Job", "TensorPlan", "plan_tensors", "merged_dtype", "TIED_PAIRS"]

#: (output head, input embedding) names of the tied-embedding layouts of common architectures.
TIED_PAIRS = (
    ("lm_head.weight", "model.embed_tokens.weight"),
    ("lm_head.weight", "transformer.wte.weight"),
    ("lm_head.weight", "model.decoder.embed_tokens.weight"),
    ("embed_out.weight", "gpt_neox.embed_in.weight"),
)
_SHOWN = 12  # problems listed before "... and N more"


@dataclass(frozen=True)
class Job:
    """One output tensor: merged from every input, or copied from one of them."""

    name: str
    shape: tuple[int, ...]
    out_dtype: torch.dtype
    layer: int | None
    sources: tuple[str, ...]  # the tensor to read from each input (an untied head reads the embedding)
    copy_from: int | None = None  # index of the input to copy from; None: merge
    #: The input each of ``sources`` is read from (empty: every input, in order).
    reads: tuple[int, ...] = ()
    #: Whether the first of ``sources`` is the base (None: the merge's inputs decide).
    has_base: bool | None = None
    #: Parameters that replace the merge's per-tensor ones, and the merge itself, for this tensor.
    overrides: Any = None
    merge: Any = None

    @property
    def planned(self) -> PlannedTensor:
        return PlannedTensor(self.name, self.shape, self.out_dtype)


@dataclass
class TensorPlan:
    jobs: list[Job]
    num_layers: int
    notes: dict[str, list[str]] = field(default_factory=dict)  # copied / dropped / untied / not merged

    @property
    def merged(self) -> list[Job]:
        return [j for j in self.jobs if j.copy_from is None]


def _aliases(inputs: list[tuple[str, Checkpoint]], tied: str, problems: list[str]) -> list[dict[str, str]]:
    """Per input, names it answers through its tied embedding (head -> embedding)."""
    aliases: list[dict[str, str]] = [{} for _ in inputs]
    for head, embed in TIED_PAIRS:
        if not any(head in ck for _, ck in inputs):
            continue
        for i, (label, ck) in enumerate(inputs):
            if head in ck or embed not in ck:
                continue
            if tied == "untie":
                aliases[i][head] = embed
            else:
                why = " (its config says tie_word_embeddings)" if ck.tied_embeddings else ""
                problems.append(
                    f"tensor {head!r} is missing from {label}{why}: its output head is tied to {embed!r}; "
                    f"pass tied = untie to merge that embedding as its head"
                )
    return aliases


def merged_dtype(dtypes: list[torch.dtype], out_dtype: torch.dtype | None) -> tuple[torch.dtype, bool]:
    """The dtype a tensor is written in, and whether it is merged at all. Integer and boolean tensors
    (masks, position ids) are never merged nor converted: they are copied from the first source in
    its own dtype. Floating ones are merged and written in ``out_dtype`` (the first source's when None)."""
    floating = all(d.is_floating_point for d in dtypes)
    return (out_dtype if out_dtype is not None and floating else dtypes[0]), floating


def plan_tensors(
    inputs: list[tuple[str, Checkpoint]],
    *,
    extra: Literal["error", "base", "drop"] = "error",
    tied: Literal["error", "untie"] = "error",
    out_dtype: torch.dtype | None = None,
) -> TensorPlan:
    """Plan the output of merging ``inputs`` (``(label, checkpoint)``, the base or reference first).

    Raises :class:`CheckpointError` listing every problem found."""
    problems: list[str] = []
    aliases = _aliases(inputs, tied, problems)
    has = [set(ck.names) | set(alias) for (_, ck), alias in zip(inputs, aliases)]
    ref_label, ref = inputs[0]
    order = list(dict.fromkeys(n for (_, ck) in inputs for n in ck.names))
    notes: dict[str, list[str]] = {
        "copied": [],
        "dropped": [],
        "untied": sorted({h for a in aliases for h in a}),
    }
    jobs: list[Job] = []
    for name in order:
        holders = [i for i, names in enumerate(has) if name in names]
        if len(holders) < len(inputs):
            if extra == "error":
                lacking = ", ".join(inputs[i][0] for i in range(len(inputs)) if i not in holders)
                present = ", ".join(inputs[i][0] for i in holders)
                problems.append(f"tensor {name!r} is missing from {lacking} (present in {present})")
            elif extra == "base" and 0 in holders:
                info = ref.info(aliases[0].get(name, name))
                sources = (aliases[0].get(name, name),)
                jobs.append(Job(name, info.shape, info.dtype, layer_index(name), sources, copy_from=0))
                notes["copied"].append(name)
            else:
                notes["dropped"].append(name)
            continue
        sources = tuple(alias.get(name, name) for alias in aliases)
        ref_info = ref.info(sources[0])
        for (label, ck), source in zip(inputs[1:], sources[1:]):
            shape = ck.info(source).shape
            if shape != ref_info.shape:
                problems.append(
                    f"tensor {name!r} has shape {list(shape)} in {label} "
                    f"but {list(ref_info.shape)} in {ref_label}"
                )
        dtype, floating = merged_dtype([ck.info(s).dtype for (_, ck), s in zip(inputs, sources)], out_dtype)
        jobs.append(Job(name, ref_info.shape, dtype, layer_index(name), sources, None if floating else 0))
        if not floating:
            notes.setdefault("not merged (not floating point)", []).append(name)
    if problems:
        shown = "\n  ".join(problems[:_SHOWN])
        more = f"\n  ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise CheckpointError(f"cannot merge: the checkpoints do not line up:\n  {shown}{more}")
    if not any(j.copy_from is None for j in jobs):
        raise CheckpointError("cannot merge: the checkpoints share no floating-point tensor")
    counts = {ck.num_layers for _, ck in inputs}
    if len(counts) > 1:
        raise CheckpointError(
            f"cannot merge: the checkpoints have different numbers of layers ({sorted(counts)})"
        )
    return TensorPlan(jobs, counts.pop(), {k: v for k, v in notes.items() if v})
