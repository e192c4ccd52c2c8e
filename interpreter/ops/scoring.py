"""Declarations of the scoring operators (torch-free): ``evaluate`` and ``interpolate``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..registry import Kind, OpSpec, Params, Port, register

Metric = Literal["accuracy", "loss", "error", "attack_success"]


class EvaluateParams(Params):
    metrics: list[Metric] = Field(default=["accuracy", "loss"], description="what to report")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


class InterpolateParams(Params):
    steps: int = Field(default=25, ge=2, le=1001, description="points on the segment, ends included")
    split: Literal["train", "test"] = Field(default="test", description="which split to score")


register(
    OpSpec(
        name="evaluate",
        doc="""Accuracy and mean cross-entropy loss of a classifier on a dataset's split.

        Written as a statement: `evaluate [a, b] on [low, high] metrics [accuracy, loss]`
        scores every model on every dataset (one cached step per pair). When the data has a
        validation split, the record also holds the scores on it (`validation`). On a task that
        carries a head (`with_head`) the model is scored with that head; on a `poison`ed dataset the
        metric `attack_success` is the share of triggered test inputs of other classes sent to the target.""",
        inputs=(Port("model", Kind.MODEL), Port("on", Kind.DATASET)),
        output=Kind.METRICS,
        params=EvaluateParams,
        impl="mlspec.ops.evaluation:evaluate",
        version="2",
    )
)

register(
    OpSpec(
        name="interpolate",
        doc="""Loss and accuracy along the straight line (1-α)·a + α·b between two models.

        Reports both published barrier definitions, for loss and for error: the maximum over α
        minus the mean of the endpoints, and the maximum of the gap to the linear interpolation
        of the endpoint values. `curve raw = interpolate(a, b, steps = 25) on digits`.""",
        inputs=(Port("a", Kind.MODEL), Port("b", Kind.MODEL), Port("on", Kind.DATASET)),
        output=Kind.CURVE,
        params=InterpolateParams,
        impl="mlspec.ops.landscape.interpolate:interpolate",
    )
)
