"""Llama-architecture checkpoints made on the spot: a random base and perturbed "fine-tunes".

Tests and the benchmark need real Hugging Face checkpoints without downloading any; these have the
exact tensor names, shapes and ``config.json`` of ``LlamaForCausalLM`` (``transformers`` loads
them), written tensor by tensor so even large ones never sit in memory whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .writer import PlannedTensor, ShardedWriter

__all__ = ["llama_config", "llama_shapes", "write_llama"]


def llama_config(
    *,
    hidden: int,
    layers: int,
    intermediate: int,
    vocab: int,
    heads: int,
    kv_heads: int | None = None,
    tie_embeddings: bool = False,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": tie_embeddings,
        "torch_dtype": dtype,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def llama_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of ``LlamaForCausalLM`` for ``config``, in module order."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * (h // config["num_attention_heads"])
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def _tensor(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) * shape[-1] ** -0.5


def write_llama(
    directory: Path,
    config: dict[str, Any],
    *,
    seed: int,
    base_seed: int | None = None,
    delta: float = 0.01,
    shard_size: int = 5 * 10**9,
) -> Path:
    """Write a checkpoint: random weights (``base_seed=None``), or the base of ``base_seed`` plus
    Gaussian noise of relative size ``delta`` drawn from ``seed`` (a stand-in for fine-tuning)."""
    dtype = getattr(torch, config.get("torch_dtype", "float32"))
    shapes = llama_shapes(config)
    plan = [PlannedTensor(name, shape, dtype) for name, shape in shapes.items()]
    base_gen = torch.Generator().manual_seed(seed if base_seed is None else base_seed)
    noise_gen = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with ShardedWriter(directory, plan, shard_bytes=shard_size) as writer:
        for name, shape in shapes.items():
            weight = _tensor(name, shape, base_gen)
            if base_seed is not None:
                weight += delta * weight.abs().mean() * torch.randn(shape, generator=noise_gen)
            writer.write(name, weight)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory
