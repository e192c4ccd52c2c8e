"""Paths between models: trained low-loss curves (``connect``) and the instability analysis."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ...errors import StepError
from ...run.context import StepContext
from ...values import Dataset, Model, Record
from ..merge.merging import check_compatible
from ..models.builders import build_module
from ..models.specs import TrainParams
from ..models.train import make_optimizer
from .interpolate import lerp_state, path_barriers, profile
from .specs import ConnectParams, InstabilityParams

__all__ = ["Curve", "connect", "instability", "profile"]


class Curve(nn.Module):
    """φ(t) between fixed ends w₁, w₂ with one trainable bend θ (Garipov et al. 2018):
    Bézier (1−t)²w₁ + 2t(1−t)θ + t²w₂, or the chain w₁ → θ → w₂ (θ reached at t = ½)."""

    def __init__(self, a: Model, b: Model, kind: str):
        super().__init__()
        net = build_module(a).eval()  # BatchNorm, if any, keeps a's running statistics
        self.__dict__["net"] = net  # not a submodule: its own parameters are never trained
        self.kind = kind
        self.names = [n for n, _ in net.named_parameters()]
        self.start = {n: a.state[n].detach().float() for n in self.names}
        self.end = {n: b.state[n].detach().float() for n in self.names}
        self.buffers_ = {n: v for n, v in net.named_buffers()}
        self.bend = nn.ParameterList(nn.Parameter((self.start[n] + self.end[n]) / 2) for n in self.names)

    def point(self, t: float) -> dict[str, Tensor]:
        out = {}
        for name, theta in zip(self.names, self.bend):
            w1, w2 = self.start[name], self.end[name]
            if self.kind == "bezier":
                out[name] = (1 - t) ** 2 * w1 + 2 * t * (1 - t) * theta + t**2 * w2
            elif t <= 0.5:
                out[name] = 2 * (t * theta + (0.5 - t) * w1)
            else:
                out[name] = 2 * ((t - 0.5) * w2 + (1 - t) * theta)
        return out

    def forward(self, x: Tensor, t: float) -> Tensor:
        return functional_call(self.net, {**self.point(t), **self.buffers_}, (x,))  # type: ignore[no-any-return]


def connect(ctx: StepContext, params: ConnectParams, *, a: Model, b: Model, on: Dataset) -> Record:
    check_compatible([a, b], ["a", "b"])
    curve = Curve(a, b, params.curve)
    opt = make_optimizer(curve, TrainParams(epochs=params.epochs, lr=params.lr, batch=params.batch))
    x, y = on.split("train")
    g = ctx.generator()
    history = []
    with ctx.progress(params.epochs, f"connect ({params.curve})") as advance:
        for _ in range(params.epochs):
            order = torch.randperm(len(x), generator=g)
            total = 0.0
            for start in range(0, len(x), params.batch):
                idx = order[start : start + params.batch]
                t = float(torch.rand(1, generator=g))
                loss = F.cross_entropy(curve(x[idx], t), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            history.append(total / len(x))
            advance(loss=history[-1])
    ts = torch.linspace(0, 1, params.steps, dtype=torch.float64).tolist()
    with torch.no_grad():
        on_curve = profile(ctx, a, [{**a.state, **{k: v.detach() for k, v in curve.point(t).items()}} for t in ts],
                           on, params.split)
    line = profile(ctx, a, [lerp_state(a.state, b.state, t) for t in ts], on, params.split)
    out: dict[str, Any] = {
        "a": ctx.input_names.get("a"), "b": ctx.input_names.get("b"), "dataset": ctx.input_names.get("on"),
        "split": params.split, "curve": params.curve, "ts": ts, **on_curve, "line": line,
        "barriers": path_barriers(ts, on_curve), "line_barriers": path_barriers(ts, line), "train_loss": history,
    }
    return Record(out)


def _train_steps(net: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, steps: int, batch: int,
                 generator: torch.Generator) -> None:
    """``steps`` SGD iterations; batches are drawn epoch by epoch from ``generator``'s order."""
    net.train()
    order = torch.randperm(len(x), generator=generator)
    cursor = 0
    for _ in range(steps):
        if cursor + batch > len(x):
            order, cursor = torch.randperm(len(x), generator=generator), 0
        idx = order[cursor : cursor + batch]
        cursor += batch
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def instability(ctx: StepContext, params: InstabilityParams, *, model: Model, on: Dataset) -> Record:
    """One parent run; at each k its weights *and* optimizer state are copied into two children
    trained with different data orders (seeds derived from the step's), then interpolated."""
    ks = sorted(set(params.spawn_at))
    if ks and (ks[0] < 0 or ks[-1] > params.steps):
        raise StepError(f"spawn_at must lie in 0 .. steps = {params.steps} (not {params.spawn_at!r})")
    x, y = on.split("train")
    train = TrainParams(lr=params.lr, batch=params.batch, optimizer=params.optimizer, momentum=params.momentum)
    parent = build_module(model)
    opt = make_optimizer(parent, train)
    g = ctx.generator()
    alphas = torch.linspace(0, 1, params.points, dtype=torch.float64).tolist()
    rows: list[dict[str, Any]] = []
    done = 0
    with ctx.progress(len(ks), "instability") as advance:
        for k in ks:
            _train_steps(parent, opt, x, y, k - done, params.batch, g)
            done = k
            children = []
            for child_seed in (1, 2):
                net = copy.deepcopy(parent)
                child_opt = make_optimizer(net, train)
                child_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
                order = torch.Generator().manual_seed(ctx.seed * 1000 + 7919 * child_seed + k)
                _train_steps(net, child_opt, x, y, params.steps - k, params.batch, order)
                children.append({n: v.detach().clone() for n, v in net.state_dict().items()})
            prof = profile(ctx, model, [lerp_state(children[0], children[1], a) for a in alphas], on, params.split)
            rows.append({"k": k, "alphas": alphas, **prof, "barriers": path_barriers(alphas, prof)})
            advance()
    out: dict[str, Any] = {
        "model": ctx.input_names.get("model"), "dataset": ctx.input_names.get("on"), "split": params.split,
        "spawn_at": ks,
        "error_barrier": [r["barriers"]["error_max_minus_mean"] for r in rows],
        "loss_barrier": [r["barriers"]["loss_max_minus_mean"] for r in rows],
        "runs": rows,
    }
    return Record(out)
