"""Neuron alignment: permute one model's hidden units onto another's (Git Re-Basin's weight and
activation matching), and REPAIR the activation statistics of an interpolated model.

Both matchings solve linear assignment problems with SciPy's ``linear_sum_assignment``; which
tensors a permutation touches comes from the architecture's :class:`PermSpec`.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset, Model
from ..models.builders import build_module
from ..models.hooks import run_with_hooks
from .informed import sample_inputs
from .merging import check_compatible
from .permspec import PermSpec, identity_perms, permute_state, spec_for
from .specs import PermuteParams, RepairParams

__all__ = ["activation_matching", "channel_stats", "collect_features", "permute", "repair", "weight_matching"]


def _lap(score: Tensor) -> Tensor:
    _, cols = linear_sum_assignment(score.double().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def weight_matching(
    spec: PermSpec, a: dict[str, Tensor], b: dict[str, Tensor], *, max_iter: int = 100, generator: torch.Generator
) -> dict[str, Tensor]:
    """Coordinate descent on Σ ⟨W_a, P W_b Pᵀ⟩: each group's permutation in random order solves one
    LAP with the others held fixed, until no group improves (Ainsworth et al. 2023)."""
    perms = identity_perms(spec, b)
    a = {k: v.double() for k, v in a.items()}
    b = {k: v.double() for k, v in b.items()}
    groups = list(spec.groups)
    for _ in range(max_iter):
        improved = False
        for gi in torch.randperm(len(groups), generator=generator).tolist():
            group = groups[gi]
            others = permute_state(spec, b, perms, skip=group)
            n = len(perms[group])
            score = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in spec.groups[group]:
                wa = a[name].movedim(axis, 0).reshape(n, -1)
                wb = others[name].movedim(axis, 0).reshape(n, -1)
                score += wa @ wb.T
            new = _lap(score)
            rows = torch.arange(n)
            if score[rows, new].sum() > score[rows, perms[group]].sum() + 1e-12:
                improved = True
            perms[group] = new
        if not improved:
            break
    return perms


@torch.no_grad()
def collect_features(net: nn.Module, x: Tensor, modules: list[str]) -> dict[str, Tensor]:
    """Outputs of the named modules on ``x``, channels last: ``{module: (samples·positions, C)}``."""
    found: dict[str, Tensor] = {}
    lookup = dict(net.named_modules())
    hooks = []
    for name in modules:
        if name not in lookup:
            raise StepError(f"the network has no module {name!r} to read features from")

        def hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor, key: str = name) -> None:
            found[key] = out.movedim(1, -1).reshape(-1, out.shape[1]).double()

        hooks.append((lookup[name], hook))
    run_with_hooks(net, x, hooks)
    return found


def correlation(fa: Tensor, fb: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation between every column of ``fa`` and every column of ``fb``."""
    za = (fa - fa.mean(0)) / (fa.std(0, unbiased=False) + eps)
    zb = (fb - fb.mean(0)) / (fb.std(0, unbiased=False) + eps)
    return za.T @ zb / len(fa)


def activation_matching(spec: PermSpec, a: Model, b: Model, x: Tensor) -> dict[str, Tensor]:
    """Per group, the permutation maximising the summed correlation of matched units on data."""
    modules = [m for ms in spec.features.values() for m in ms]
    fa = collect_features(build_module(a), x, modules)
    fb = collect_features(build_module(b), x, modules)
    perms = {}
    for group, mods in spec.features.items():
        perms[group] = _lap(correlation(torch.cat([fa[m] for m in mods]), torch.cat([fb[m] for m in mods])))
    return perms


def _distance(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return float(sum((a[k].double() - b[k].double()).pow(2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


def permute(ctx: StepContext, params: PermuteParams, *, model: Model, to: Model, on: Dataset | None = None) -> Model:
    check_compatible([to, model], [str(ctx.input_names.get("to") or "to"), str(ctx.input_names.get("model") or "model")])
    spec = spec_for(model.arch, model.state)
    if params.by == "weight_matching":
        perms = weight_matching(spec, to.state, model.state, max_iter=params.max_iter, generator=ctx.generator())
    else:
        if on is None:
            raise StepError("activation matching needs data: permute(b, to = a, by = activation_matching) on data")
        perms = activation_matching(spec, to, model, sample_inputs(on, params.samples, ctx.generator()))
    state = {k: v.contiguous() for k, v in permute_state(spec, model.state, perms).items()}
    moved = {g: float((p != torch.arange(len(p))).double().mean()) for g, p in perms.items()}
    info = {
        "alignment": {
            "by": params.by,
            "non_identity": moved,
            "distance_before": _distance(to.state, model.state),
            "distance_after": _distance(to.state, state),
        }
    }
    return Model(arch=dict(model.arch), state=state, info=info)


def channel_stats(net: nn.Module, x: Tensor, modules: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-channel (mean, std) of each module's output on ``x``."""
    feats = collect_features(net, x, modules)
    return {m: (f.mean(0), f.std(0, unbiased=False)) for m, f in feats.items()}


@torch.no_grad()
def repair(ctx: StepContext, params: RepairParams, *, model: Model, a: Model, b: Model, on: Dataset) -> Model:
    """REPAIR (Jordan et al. 2023): give every channel of the merged model the interpolated mean and
    std of the endpoints' channels, σ_α = (1−α)σ_a + ασ_b and likewise μ, folding the correction
    into the per-channel affine that produces it; sites are corrected in forward order."""
    check_compatible([a, b, model], ["a", "b", "model"])
    spec = spec_for(model.arch, model.state)
    sites = list(spec.affines)
    x = sample_inputs(on, params.samples, ctx.generator())
    ends = [channel_stats(build_module(m), x, sites) for m in (a, b)]
    state = {k: v.clone() for k, v in model.state.items()}
    ratios = {}
    for site in sites:
        mu, sd = channel_stats(build_module(model.with_state(state)), x, [site])[site]
        target_mu = (1 - params.alpha) * ends[0][site][0] + params.alpha * ends[1][site][0]
        target_sd = (1 - params.alpha) * ends[0][site][1] + params.alpha * ends[1][site][1]
        ratio = target_sd / sd.clamp_min(1e-8)
        weight, bias = spec.affines[site]
        shape = (-1, *([1] * (state[weight].dim() - 1)))
        state[weight] = (state[weight].double() * ratio.reshape(shape)).to(state[weight].dtype)
        state[bias] = ((state[bias].double() - mu) * ratio + target_mu).to(state[bias].dtype)
        ratios[site] = float((sd / ((ends[0][site][1] + ends[1][site][1]) / 2).clamp_min(1e-8)).mean())
    info = {"repair": {"alpha": params.alpha, "std_ratio_before": ratios}}
    return Model(arch=dict(model.arch), state=state, info=info)
