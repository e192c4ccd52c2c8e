"""Checkpoints from elsewhere: load Hugging Face directories, safetensors files and PyTorch state
dicts lazily, merge them tensor by tensor (streaming), export loadable Hugging Face directories,
import mergekit configs, and score causal language models by perplexity.

A loaded or streamed-merged checkpoint travels between steps as a *reference*: a
:class:`~mlspec.values.Model` whose ``arch`` is ``{"type": "checkpoint", "path": ..., ...}`` and
whose ``state`` is empty, so the cache stores a few hundred bytes instead of the weights.

This package's ``__init__`` stays torch-free (``mlspec check`` imports ``specs``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_checkpoint", "CHECKPOINT"]

#: ``Model.arch["type"]`` of a checkpoint reference.
CHECKPOINT = "checkpoint"


def is_checkpoint(model: Any) -> bool:
    """Whether a value is a reference to a checkpoint on disk (not weights in memory)."""
    arch = getattr(model, "arch", None)
    return isinstance(arch, dict) and arch.get("type") == CHECKPOINT
