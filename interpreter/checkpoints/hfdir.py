"""The files of a Hugging Face model directory besides the weights: config, tokenizer, model card.

A merged or exported checkpoint is a directory ``transformers`` can load: the weights (written by
:class:`~mlspec.checkpoints.writer.ShardedWriter`), the base model's ``config.json`` with the
written dtype (and an untied head when the merge untied one), the base's tokenizer and generation
files copied unchanged, and a ``README.md`` card recording how it was made.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["COMPANION_FILES", "write_config", "copy_companions", "write_card"]

#: Non-weight files copied from the base model's directory when they exist.
COMPANION_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_DTYPE_NAMES = {"float32", "float64", "float16", "bfloat16"}


def write_config(out_dir: Path, config: dict[str, Any], *, dtype: str | None, untied: bool) -> None:
    """The base's config, saying which dtype the weights were written in and whether the head is tied."""
    if not config:
        return
    config = dict(config)
    if dtype in _DTYPE_NAMES:
        config["torch_dtype"] = dtype
        if "dtype" in config:  # transformers >= 4.56 writes "dtype"
            config["dtype"] = dtype
    if untied:
        config["tie_word_embeddings"] = False
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_companions(src_dir: Path | None, out_dir: Path) -> list[str]:
    """Copy the base's tokenizer and generation files; returns the names copied."""
    if src_dir is None:
        return []
    copied = []
    for name in COMPANION_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, out_dir / name)
            copied.append(name)
    return copied


def _fence(text: str) -> str:
    return "~~~~\n" + text.rstrip("\n") + "\n~~~~"


def write_card(
    out_dir: Path, *, title: str, merge: dict[str, Any] | None, sources: list[str], spec: str | None
) -> None:
    """README.md with a model-card header, the merge method and parameters, the inputs and the spec."""
    lines = ["---", "library_name: transformers", "tags:", "- merge", "- mlspec", "---", "", f"# {title}", ""]
    lines += ["Made with mlspec, a declarative language for model-merging studies.", ""]
    if merge:
        lines += [
            f"Method: `{merge.get('method')}`",
            "",
            "Parameters:",
            "",
            _fence(json.dumps(merge.get("params"), indent=2)),
        ]
        lines.append("")
    if sources:
        lines += ["Inputs:", ""] + [f"- `{s}`" for s in sources] + [""]
    if spec:
        lines += ["The spec that produced it:", "", _fence(spec), ""]
    (out_dir / "README.md").write_text("\n".join(lines))
