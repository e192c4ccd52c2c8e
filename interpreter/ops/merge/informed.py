"""Merges that look at data: greedy soups (held-out accuracy), Fisher merging (diagonal Fisher
information) and RegMean (Gram matrices of each linear layer's inputs).

The statistics are computed per model on that model's own data (``on`` gives one dataset per
model, or one for all); the merge itself is the per-tensor kernel in :mod:`kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset, Model
from ..evaluation import evaluate_module
from ..models.builders import build_module
from ..models.hooks import run_with_hooks
from . import kernels
from .merging import labels, merge_models, per_model
from .specs import FisherParams, RegMeanParams, SoupParams

__all__ = ["diagonal_fisher", "fisher", "input_grams", "regmean", "sample_inputs", "soup"]


def sample_inputs(data: Dataset, n: int, generator: torch.Generator) -> Tensor:
    """``n`` training inputs drawn without replacement (all of them when there are fewer)."""
    x, _ = data.split("train")
    order = torch.randperm(len(x), generator=generator)[:n]
    return x[order]


def _datasets(on: Dataset | list[Dataset], n: int, method: str) -> list[Dataset]:
    data = on if isinstance(on, list) else [on]
    if len(data) == 1:
        return data * n
    if len(data) != n:
        raise StepError(f"{method} needs one dataset per model ({n}) or one for all, not {len(data)}")
    return data


def soup(ctx: StepContext, params: SoupParams, *, models: list[Model], on: Dataset | None = None) -> Model:
    """Uniform soup, or the greedy soup of Wortsman et al. (2022): rank the ingredients by held-out
    accuracy, then add each one only if the soup's held-out accuracy does not drop."""
    def uniform(ingredients: list[Model]) -> Model:
        def kernel(_n, _b, ts):
            return kernels.linear(None, ts)
        return merge_models(ctx, ingredients, kernel, method="soup", params=params.model_dump())

    if not params.greedy:
        return uniform(models)
    if on is None:
        raise StepError("a greedy soup needs a held-out dataset: soup(models = [...], greedy = true) on heldout")
    x, y = on.split(params.split)
    def score(m):
        return evaluate_module(build_module(m), x, y, device=ctx.device)["accuracy"]
    names = labels(ctx, models)
    ranked = sorted(zip((score(m) for m in models), range(len(models))), key=lambda p: -p[0])
    chosen = [ranked[0][1]]
    best = ranked[0][0]
    history = [{"ingredient": names[chosen[0]], "accuracy": best, "kept": True}]
    for _, i in ranked[1:]:
        acc = score(uniform([models[j] for j in chosen + [i]]))
        kept = acc >= best
        history.append({"ingredient": names[i], "accuracy": acc, "kept": kept})
        if kept:
            chosen.append(i)
            best = acc
    out = uniform([models[j] for j in chosen])
    out.info["soup"] = {"ingredients": [names[j] for j in chosen], "held_out_accuracy": best, "steps": history}
    return out


def diagonal_fisher(net: nn.Module, x: Tensor, *, batch_size: int = 128) -> dict[str, Tensor]:
    """F = E_x Σ_c p(c|x)·(∇ log p(c|x))², the expectation over the model's own predictive
    distribution taken exactly (per-example gradients with ``torch.func``)."""
    net.eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def log_prob(p: dict[str, Tensor], xi: Tensor, onehot: Tensor) -> Tensor:
        out = functional_call(net, (p, buffers), (xi[None],))
        return (F.log_softmax(out, dim=-1)[0] * onehot).sum()

    per_example = vmap(grad(log_prob), in_dims=(None, 0, None))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        with torch.no_grad():
            probs = F.softmax(functional_call(net, (params, buffers), (xb,)), dim=-1)  # (B, C)
        for c in range(probs.shape[1]):
            grads = per_example(params, xb, F.one_hot(torch.tensor(c), probs.shape[1]).to(probs.dtype))
            for k, g in grads.items():
                w = probs[:, c].reshape(-1, *([1] * (g.dim() - 1)))
                total[k] += (w * g.pow(2)).sum(0)
    return {k: v / max(1, len(x)) for k, v in total.items()}


def fisher(ctx: StepContext, params: FisherParams, *, models: list[Model], on: Dataset | list[Dataset]) -> Model:
    data = _datasets(on, len(models), "fisher")
    weights = per_model(params.weights, len(models), "weights")
    fishers = [diagonal_fisher(build_module(m), sample_inputs(d, params.samples, ctx.generator()))
               for m, d in zip(models, data)]

    def kernel(name: str, _base: Tensor | None, tensors: list[Tensor]) -> Tensor:
        if name not in fishers[0]:  # buffers (BatchNorm statistics) carry no Fisher: average them
            return kernels.linear(None, tensors, weights=weights)
        return kernels.fisher(None, tensors, fishers=[f[name] for f in fishers], weights=weights, eps=params.eps)

    return merge_models(ctx, models, kernel, method="fisher", params=params.model_dump())


@torch.no_grad()
def input_grams(net: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Mean Gram matrix XᵀX / n of the inputs of every ``nn.Linear``, keyed by its weight's name."""
    grams: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _o: Tensor, key: str = f"{name}.weight") -> None:
                feats = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                grams[key] = grams.get(key, 0) + feats.T @ feats  # type: ignore[operator]
                counts[key] = counts.get(key, 0) + len(feats)
            hooks.append((module, hook))
    run_with_hooks(net, x, hooks)
    return {k: g / counts[k] for k, g in grams.items()}


def regmean(ctx: StepContext, params: RegMeanParams, *, models: list[Model], on: Dataset | list[Dataset]) -> Model:
    data = _datasets(on, len(models), "regmean")
    grams = [input_grams(build_module(m), sample_inputs(d, params.samples, ctx.generator())) for m, d in zip(models, data)]

    def kernel(name: str, _base: Tensor | None, tensors: list[Tensor]) -> Tensor:
        gs: Sequence[Tensor] | None = [g[name] for g in grams] if name in grams[0] else None
        return kernels.regmean(None, tensors, grams=gs, alpha=params.alpha)

    return merge_models(ctx, models, kernel, method="regmean", params=params.model_dump())
