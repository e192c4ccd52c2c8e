"""Tiny generated Llama checkpoints (hidden 32, 2 layers) for the streaming tests, and the two ways
the tests read a merge back: a checkpoint as a model in memory, a streamed result's tensors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file

from mlspec.checkpoints.source import Checkpoint
from mlspec.checkpoints.synthetic import llama_config, write_llama
from mlspec.values import CheckpointRef, Model

TINY = llama_config(hidden=32, layers=2, intermediate=48, vocab=64, heads=4, dtype="float32")


def tiny_family(root: Path, fine_tunes: Sequence[str] = "abc", sharded: str = "b") -> dict[str, Path]:
    """A base and fine-tunes of it (seeds 1, 2, …; the one named ``sharded`` is written in shards)."""
    out = {"base": write_llama(root / "base", TINY, seed=0)}
    for seed, name in enumerate(fine_tunes, 1):
        shard = {"shard_size": 7000} if name == sharded else {}
        out[name] = write_llama(root / name, TINY, seed=seed, base_seed=0, delta=0.2, **shard)
    return out


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint (a directory or a file)."""
    with Checkpoint.open(path) as ck:
        return {n: ck.tensor(n) for n in ck.names}


def in_memory(path: Path) -> Model:
    return Model(arch={"type": "llama"}, state=tensors(path))


def written(model: Model | CheckpointRef) -> dict[str, torch.Tensor]:
    assert isinstance(model, CheckpointRef)
    out: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model.path).glob("*.safetensors")):
        out.update(load_file(file))
    return out
