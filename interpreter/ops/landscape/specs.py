"""Declarations of the loss-landscape analyses (torch-free). ``interpolate`` is declared with
``evaluate`` in :mod:`mlspec.ops.scoring`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ...registry import Kind, OpSpec, Params, Port, register

_ON = Port("on", Kind.DATASET, doc="the data the loss and accuracy are measured on")


class PlaneParams(Params):
    steps: int = Field(default=21, ge=2, le=201, description="grid points per axis")
    margin: float = Field(default=0.2, ge=0.0, description="extra border around the three models, as a fraction")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


class SurfaceParams(Params):
    steps: int = Field(default=21, ge=2, le=201, description="grid points per axis")
    extent: float = Field(default=1.0, gt=0.0, description="the grid spans −extent .. extent along each direction")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


class ConnectParams(Params):
    curve: Literal["bezier", "polychain"] = Field(default="bezier", description="quadratic Bézier or one-bend chain")
    epochs: int = Field(default=20, ge=1, description="training passes over the training split")
    lr: float = Field(default=1e-3, gt=0.0, description="learning rate of the bend")
    batch: int = Field(default=64, ge=1, description="mini-batch size (one t ~ U[0, 1] per batch)")
    steps: int = Field(default=25, ge=2, le=1001, description="points at which the trained curve is scored")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


class InstabilityParams(Params):
    spawn_at: list[int] = Field(default=[0], description="training iterations after which two copies are spawned")
    steps: int = Field(default=1000, ge=1, description="total training iterations of each copy")
    lr: float = Field(default=1e-2, gt=0.0, description="learning rate")
    batch: int = Field(default=64, ge=1, description="mini-batch size")
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="SGD with momentum or Adam")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="SGD momentum")
    points: int = Field(default=11, ge=2, le=1001, description="points on each interpolation")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


class TaskVectorParams(Params):
    density: float = Field(default=1.0, ge=0.0, le=1.0, description="trim each task vector to its top-k first")


_GEO = "mlspec.ops.landscape.geometry"
_PATHS = "mlspec.ops.landscape.paths"

register(
    OpSpec(
        name="plane",
        doc="""Loss and accuracy over the plane through three models (Garipov et al. 2018): a is the
        origin, b lies on the x axis, c above it. `surface p = plane(a, b, c) on digits`""",
        inputs=(Port("a", Kind.MODEL), Port("b", Kind.MODEL), Port("c", Kind.MODEL), _ON),
        output=Kind.SURFACE,
        params=PlaneParams,
        impl=f"{_GEO}:plane",
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="surface",
        doc="""Loss and accuracy around one model along two random filter-normalised directions
        (Li et al. 2018; biases and normalisation directions zeroed). Seeded from the step.""",
        inputs=(Port("model", Kind.MODEL), _ON),
        output=Kind.SURFACE,
        params=SurfaceParams,
        impl=f"{_GEO}:surface",
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="connect",
        doc="""Train a low-loss curve between two models (Garipov et al. 2018) — quadratic Bézier or a
        one-bend polygonal chain, a random t per batch — and score it against the straight line.
        `curve bz = connect(a, b, curve = bezier, epochs = 20) on digits`""",
        inputs=(Port("a", Kind.MODEL), Port("b", Kind.MODEL), _ON),
        output=Kind.CURVE,
        params=ConnectParams,
        impl=f"{_PATHS}:connect",
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="instability",
        doc="""Instability analysis (Frankle et al. 2020): train from `model` for k iterations, spawn
        two copies that see different data orders, train both to `steps`, report the barrier
        between them for each k in `spawn_at`. `curve s = instability(init, spawn_at = [0, 50]) on digits`""",
        inputs=(Port("model", Kind.MODEL), _ON),
        output=Kind.CURVE,
        params=InstabilityParams,
        impl=f"{_PATHS}:instability",
        uses_seed=True,
        dialects=frozenset({"merge"}),
    )
)

register(
    OpSpec(
        name="task_vectors",
        doc="""Task-vector geometry: pairwise cosine similarity and sign-conflict rate of θᵢ − θ_base,
        their norms, and per-tensor norms. `table tv = task_vectors(base = init, models = [a, b])`""",
        inputs=(Port("base", Kind.MODEL), Port("models", Kind.MODEL, many=True)),
        output=Kind.TABLE,
        params=TaskVectorParams,
        impl="mlspec.ops.landscape.vectors:task_vectors",
        dialects=frozenset({"merge"}),
    )
)
