"""Perplexity of a causal language model checkpoint on a local text file.

``transformers`` is an optional extra (``pip install 'mlspec[lm]'``), imported only when a spec
asks for perplexity. Long texts are scored with a sliding window: each window of ``context``
tokens advances by ``stride`` (but never past the last scored token, which the next window needs as
history) and only the tokens not scored by an earlier window count, so every token after the first
is predicted exactly once, with at least ``context - stride`` tokens of history after the first window.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from ...checkpoints.layout import CheckpointError, locate
from ...errors import StepError
from ...run.context import StepContext
from ...values import CheckpointRef, Model, Record
from .specs import PerplexityParams

__all__ = ["sliding_window_nll", "perplexity", "require_transformers"]


@torch.no_grad()
def sliding_window_nll(
    logits_of: Callable[[Tensor], Tensor], ids: Tensor, *, context: int, stride: int
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and the number of tokens scored.

    ``logits_of`` maps token ids ``(1, L)`` to logits ``(1, L, vocab)``; ``ids`` is 1-D."""
    n = ids.numel()
    total, count, scored_to = 0.0, 0, 1  # token 0 has no prediction
    begin = 0
    while scored_to < n:
        end = min(begin + context, n)
        window = ids[begin:end].unsqueeze(0)
        logits = logits_of(window)[0].float()  # (L, vocab): row j predicts token begin + j + 1
        first = max(scored_to, begin + 1)  # first token this window scores
        rows = logits[first - begin - 1 : end - begin - 1]
        total += float(F.cross_entropy(rows, ids[first:end], reduction="sum"))
        count += end - first
        scored_to = end
        begin = min(begin + stride, end - 1)  # keep one token of history: every token gets scored
    return total, count


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise StepError(
            "perplexity needs the optional 'transformers' package: pip install 'mlspec[lm]'"
        ) from None
    return transformers


def _model_dir(model: Model | CheckpointRef) -> Path:
    if not isinstance(model, CheckpointRef):
        raise StepError('perplexity scores a checkpoint on disk (make it with load("path") or merge loaded '
                        "checkpoints); export a model trained in the study as hf first")
    path = model.existing("the model")
    try:
        layout = locate(path)
    except CheckpointError as exc:
        raise StepError(str(exc)) from None
    if layout.kind != "hf":
        raise StepError(
            f"perplexity needs a Hugging Face model directory with a config.json (not {str(path)!r})"
        )
    return path


def perplexity(ctx: StepContext, params: PerplexityParams, *, model: Model | CheckpointRef) -> Record:
    directory = _model_dir(model)
    text_file = Path(params.text)
    if not text_file.is_file():
        raise StepError(f"perplexity: text file not found: {params.text!r}")
    transformers = require_transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise StepError(f"perplexity: {str(directory)!r} has no usable tokenizer files ({exc})") from None
    # The text first: a file that is not text, or too short, is found before the model loads.
    try:
        text = text_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StepError(f"perplexity: {params.text!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if params.max_tokens is not None:
        ids = ids[: params.max_tokens]
    if ids.numel() < 2:
        raise StepError(f"perplexity: {params.text!r} holds fewer than two tokens")
    dtype = getattr(torch, params.dtype)
    try:
        net = transformers.AutoModelForCausalLM.from_pretrained(
            str(directory), local_files_only=True, dtype=dtype
        )
    except (OSError, ValueError, KeyError) as exc:
        raise StepError(f"perplexity: cannot load {str(directory)!r} as a causal language model ({exc})") from None
    net.to(ctx.device).eval()
    ids = ids.to(ctx.device)
    total, count = sliding_window_nll(
        lambda x: net(input_ids=x).logits, ids, context=params.context, stride=params.stride
    )
    return Record(
        {
            "model": ctx.input_names.get("model"),
            "text": params.text,
            "tokens": count,
            "nll": total / count,
            "perplexity": math.exp(total / count),
            "context": params.context,
            "stride": params.stride,
        }
    )
