"""Step implementations of the ``.extrap`` operators declared in :mod:`mlspec.extrap.specs`.

Each adapts values to the pure functions of the task, training, evaluation and dynamics modules and
turns their ``ValueError``s into ``StepError``s that name the step's problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from ..errors import StepError
from ..ops.models.builders import build, build_module
from ..run.context import StepContext
from ..values import Dataset, Model, Record
from . import dynamics as dyn
from . import evaluation, mazes
from . import prefix_sums as bits
from .models import IterativeNet
from .specs import (
    DTNetParams,
    DynamicsParams,
    EvaluateExtrapParams,
    FeedForwardParams,
    ImplicitNetParams,
    MazeParams,
    PrefixSumParams,
    TrainRecurrentParams,
)
from .training import TrainConfig, train

T = TypeVar("T")


def _clearly(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ValueError as exc:
        raise StepError(str(exc)) from exc


def maze(ctx: StepContext, params: MazeParams) -> Dataset:
    settings = params.model_dump(exclude={"seed"})
    seed = ctx.seed if params.seed is None else params.seed
    compact = _clearly(lambda: mazes.generate_compact(seed=seed, **settings))
    tensors = {"grid": torch.from_numpy(compact.grid), "path": torch.from_numpy(compact.path)}
    return Dataset(tensors, meta={"task": "maze", **settings, "seed": seed})


def prefix_sums(ctx: StepContext, params: PrefixSumParams) -> Dataset:
    seed = ctx.seed if params.seed is None else params.seed
    data = _clearly(lambda: bits.generate(length=params.length, count=params.count, seed=seed))
    return Dataset({"inputs": data.inputs, "targets": data.targets},
                   meta={"task": "prefix_sums", "length": params.length, "count": params.count, "seed": seed})


def _init(ctx: StepContext, arch: dict[str, Any]) -> Model:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        net = build(arch)
    n = sum(p.numel() for p in net.parameters())
    return Model(arch=arch, state={k: v.contiguous() for k, v in net.state_dict().items()}, info={"parameters": n})


def _channels(dims: int) -> int:
    return 3 if dims == 2 else 1


def dt_net(ctx: StepContext, params: DTNetParams) -> Model:
    return _init(ctx, {"type": "dt_net", **params.model_dump(), "in_channels": _channels(params.dims)})


def implicit_net(ctx: StepContext, params: ImplicitNetParams) -> Model:
    arch = params.model_dump(exclude={"budget"})
    return _init(ctx, {"type": "implicit_net", **arch, "iterations": params.budget,
                       "in_channels": _channels(params.dims)})


def feedforward(ctx: StepContext, params: FeedForwardParams) -> Model:
    return _init(ctx, {"type": "feedforward", **params.model_dump(), "in_channels": _channels(params.dims)})


def _net(model: Model, data: Dataset) -> IterativeNet:
    net = build_module(model)
    if not isinstance(net, IterativeNet):
        raise StepError(f"the .extrap statements need dt_net, implicit_net or feedforward models (not {model.arch['type']!r})")
    wants = 3 if data.meta.get("task") == "maze" else 1
    if model.arch.get("in_channels") != wants:
        raise StepError(f"a {model.arch['type']} with dims = {model.arch.get('dims')} cannot read "
                        f"{data.meta.get('task', 'this')} data (use dims = {2 if wants == 3 else 1})")
    return net


def train_recurrent(ctx: StepContext, params: TrainRecurrentParams, model: Model, on: Dataset) -> Model:
    net = _net(model, on)
    config = TrainConfig(
        epochs=params.epochs, lr=params.lr, batch_size=params.batch_size,
        alpha=(params.loss or {}).get("alpha", 0.0), iterations=params.iterations or net.iterations,
        warmup=params.warmup, throttle=params.throttle, weight_decay=params.weight_decay,
        val_fraction=params.val_fraction, clip=params.clip, milestones=list(params.milestones), gamma=params.gamma,
    )
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    with ctx.progress(config.epochs, "train") as advance:
        state, info = _clearly(lambda: train(net, on.tensors, config=config, seed=ctx.seed, device=ctx.device,
                                             work_dir=ctx.work_dir, progress=advance))
    return model.with_state(state, **info, trained_on=on.meta, iterations=config.iterations)


def evaluate_extrap(ctx: StepContext, params: EvaluateExtrapParams, model: Model, on: Dataset) -> Record:
    net = _net(model, on)
    result = _clearly(lambda: evaluation.evaluate(net, on.tensors, budgets=params.iterations,
                                                  correctness=params.correctness, batch_size=params.batch_size,
                                                  device=ctx.device, examples=params.examples))
    return Record({**result, "model": ctx.input_names.get("model", model.arch["type"]), "arch": model.arch["type"],
                   "task": on.meta})


def dynamics(ctx: StepContext, params: DynamicsParams, model: Model, on: Dataset) -> Record:
    net = _net(model, on)
    result = _clearly(lambda: dyn.analyse(
        net, on.tensors, iterations=params.iterations, window=params.window, detect=tuple(params.detect),
        max_period=params.max_period, tol=params.tol, sketch=params.sketch, batch_size=params.batch_size,
        seed=ctx.seed, device=ctx.device))
    return Record({**result, "model": ctx.input_names.get("model", model.arch["type"]), "arch": model.arch["type"],
                   "task": on.meta})
