"""Training iterative nets the DeepThinking way, resumable after an interruption.

- *Progressive loss* (weight-tied nets): ``(1-α)·CE(after T iterations) + α·CE(after n+k)``, where
  the first n ~ U{0..T-1} iterations run without gradients from the input and only the last
  k ~ U{1..T-n} carry gradients — the net learns to improve *any* state, not to count iterations.
  Nets that are not weight-tied (feedforward) or solve for a fixed point (implicit) train on the
  plain loss at their budget (the implicit net through its ``jfb``/``unrolled`` backward).
- The cross-entropy counts only the pixels in the batch mask (non-wall pixels for mazes).
- *LR throttle*: weight-tied (recurrent) parameters learn at ``lr / T``.
- Linear warm-up over ``warmup`` epochs, then step decay by ``gamma`` at each ``milestones`` epoch.
- The validation split (``val_fraction``) picks the best epoch by exact accuracy at T iterations.
- After every epoch the state is checkpointed to ``work_dir`` (safetensors + JSON, never pickles);
  each epoch's randomness comes from ``(seed, epoch)``, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..ops.models.train import ensure_finite, optimizer_step
from .batches import autocast, batch, batches, count, prepare_model
from .models import DTNet, IterativeNet

__all__ = ["TrainConfig", "train", "masked_cross_entropy", "progressive_loss", "solved"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    lr: float = 1e-3
    batch_size: int = 50
    alpha: float = 0.01
    iterations: int = 30
    warmup: int = 10
    throttle: bool = True
    weight_decay: float = 2e-4
    val_fraction: float = 0.2
    clip: float | None = None
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel cross-entropy over the masked pixels. logits (B, 2, ...), y and mask (B, ...)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()  # bf16 logits are upcast
    per_pixel = nn.functional.cross_entropy(logits, y, reduction="none")
    return (per_pixel * mask).sum() / mask.sum().clamp_min(1)


def progressive_loss(
    model: IterativeNet, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
    *, alpha: float, iterations: int, generator: torch.Generator,
) -> torch.Tensor:
    """DeepThinking's incremental-progress loss for a weight-tied net (see the module docstring)."""
    loss = x.new_zeros(())
    if alpha < 1:
        loss = loss + (1 - alpha) * masked_cross_entropy(model(x, iterations), y, mask)
    if alpha > 0:
        n = int(torch.randint(0, iterations, (1,), generator=generator))
        k = int(torch.randint(1, iterations - n + 1, (1,), generator=generator))
        h = model.initial_state(x)
        if n > 0:
            with torch.no_grad():
                h = model.run(x, h, 0, n)
            h = h.detach()
        loss = loss + alpha * masked_cross_entropy(model.readout(model.run(x, h, n, n + k)), y, mask)
    return loss


def predictions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, ...) int64 0/1: the argmax, with masked-out (wall) pixels forced to 0."""
    return logits.argmax(1) * mask


def solved(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) bool: the masked argmax :func:`predictions` equals the target at every pixel
    (DeepThinking's accuracy)."""
    return (pred == y).flatten(1).all(1)


def _param_groups(model: IterativeNet, config: TrainConfig) -> list[dict[str, Any]]:
    tied = [p for n, p in model.named_parameters() if n.startswith(model.recurrent_prefixes)]
    rest = [p for n, p in model.named_parameters() if not n.startswith(model.recurrent_prefixes)]
    scale = 1 / config.iterations if config.throttle else 1.0
    groups = [{"params": rest, "base_lr": config.lr}, {"params": tied, "base_lr": config.lr * scale}]
    return [g for g in groups if g["params"]]


def _lr_factor(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    warm = min(1.0, (epoch * steps_per_epoch + step + 1) / max(1, config.warmup * steps_per_epoch))
    return warm * config.gamma ** sum(epoch >= m for m in config.milestones)


def _validate(model: IterativeNet, tensors: dict[str, torch.Tensor], config: TrainConfig, device: str) -> float:
    model.eval()
    hits = total = 0
    with torch.no_grad(), autocast(device):
        for b in batches(tensors, max(config.batch_size, 256), device):
            hits += int(solved(predictions(model(b.x, config.iterations), b.mask), b.y).sum())
            total += len(b.x)
    return hits / max(total, 1)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _save(work_dir: Path, model: nn.Module, best: dict[str, torch.Tensor], opt: torch.optim.Optimizer,
          meta: dict[str, Any]) -> None:
    """Checkpoint atomically: tensors to safetensors, the rest to JSON (written last, read first)."""
    state = opt.state_dict()
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best.items()}
    for idx, slots in state["state"].items():
        tensors |= {f"opt.{idx}.{name}": t.reshape(-1) if t.dim() == 0 else t for name, t in slots.items()}
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, work_dir / "checkpoint.tmp")
    (work_dir / "checkpoint.tmp").replace(work_dir / "checkpoint.safetensors")
    (work_dir / "checkpoint.json.tmp").write_text(json.dumps({**meta, "param_groups": groups}))
    (work_dir / "checkpoint.json.tmp").replace(work_dir / "checkpoint.json")


def _load(work_dir: Path, model: nn.Module, opt: torch.optim.Optimizer, fingerprint: dict[str, Any]
          ) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    meta_path = work_dir / "checkpoint.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fingerprint:
        return None  # a checkpoint of a different run
    tensors = load_file(work_dir / "checkpoint.safetensors")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            slots.setdefault(int(idx), {})[name] = value.reshape(()) if name == "step" else value
    opt.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    return meta, {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}


def train(
    model: IterativeNet, tensors: dict[str, torch.Tensor], *, config: TrainConfig, seed: int,
    device: str = "cpu", work_dir: Path | None = None, progress: Callable[..., None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``model`` on a task's tensors; returns the best validated state and a history."""
    n = count(tensors)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = int(round(n * config.val_fraction)) if n > 1 else 0
    val = {k: v[order[:n_val]] for k, v in tensors.items()} if n_val else {}
    train_idx = order[n_val:]
    steps = math.ceil(len(train_idx) / config.batch_size)
    model = prepare_model(model, device)
    opt = torch.optim.Adam(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    fingerprint = {"config": asdict(config), "seed": seed, "n": n}
    progressive = isinstance(model, DTNet)
    meta: dict[str, Any] = {"fingerprint": fingerprint, "epoch": 0, "best_accuracy": -1.0, "best_epoch": 0, "history": []}
    best = _snapshot(model)
    if work_dir is not None and (resumed := _load(work_dir, model, opt, fingerprint)) is not None:
        meta, best = resumed
        meta.pop("param_groups", None)
    for epoch in range(meta["epoch"], config.epochs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        torch.manual_seed(seed * 1_000_003 + epoch)  # the model's own draws (random initial states) replay on resume
        perm = train_idx[torch.randperm(len(train_idx), generator=g)]
        model.train()
        total = 0.0
        for step in range(steps):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * _lr_factor(config, epoch, step, steps)
            b = batch(tensors, perm[step * config.batch_size:(step + 1) * config.batch_size], device)
            with autocast(device):
                if progressive:
                    loss = progressive_loss(model, b.x, b.y, b.mask, alpha=config.alpha,
                                            iterations=config.iterations, generator=g)
                else:
                    loss = masked_cross_entropy(model(b.x, config.iterations), b.y, b.mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip)
            optimizer_step(opt, epoch=epoch + 1, lr=config.lr)
            value = float(loss.detach())
            meta.setdefault("start_loss", value)  # saved with a resume checkpoint
            total += value
        ensure_finite(total / steps, epoch=epoch + 1, lr=config.lr, start=meta.get("start_loss"))
        accuracy = _validate(model, val, config, device) if val else None
        meta["history"].append({"epoch": epoch + 1, "loss": total / steps, "val_accuracy": accuracy})
        if accuracy is None or accuracy > meta["best_accuracy"]:
            best = _snapshot(model)
            meta["best_accuracy"], meta["best_epoch"] = accuracy, epoch + 1
        meta["epoch"] = epoch + 1
        if work_dir is not None:
            _save(work_dir, model, best, opt, meta)
        if progress is not None:
            progress(loss=round(total / steps, 4), val=accuracy)
    info = {k: meta[k] for k in ("history", "best_epoch", "best_accuracy")}
    info["loss"] = "progressive" if progressive else "plain"
    return best, info
