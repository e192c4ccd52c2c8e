"""Declarations of the built-in classification data operators (torch-free)."""

from __future__ import annotations

from pydantic import Field, field_validator

from mlspec.registry import Kind, OpSpec, Params, Port, register


class DigitsParams(Params):
    test_fraction: float = Field(default=0.25, gt=0.0, lt=1.0, description="share of samples held out")
    split_seed: int = Field(
        default=0, ge=0, description="seed of the stratified split (fixed, so every study shares it)"
    )
    validation_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="share of the training samples held out as a validation split (never trained on); "
        "sweeps are then summarised by their best point on it",
    )


class ClassesParams(Params):
    classes: list[int] = Field(min_length=1, description="labels to keep, e.g. 0 .. 4")
    relabel: bool = Field(default=False, description="renumber kept labels 0..k-1 (off: heads stay shared)")

    @field_validator("classes", mode="before")
    @classmethod
    def _one_class(cls, v: object) -> object:
        return [v] if isinstance(v, int) else v


register(
    OpSpec(
        name="digits",
        doc="""scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes; no download).

        Pixels are scaled to [0, 1] and flattened to 64 features; the train/test split is
        stratified and deterministic (`split_seed`), so every study sees the same split. With
        `validation_fraction` a stratified share of the training samples becomes a validation
        split: training never sees it, `evaluate` scores it beside the test split, and the report
        picks a sweep's best point on it, never on the test split it reports.""",
        inputs=(),
        output=Kind.DATASET,
        params=DigitsParams,
        impl="mlspec.ops.data.digits:digits",
    )
)

register(
    OpSpec(
        name="classes",
        doc="""The samples of a classification dataset whose label is in `classes`, in every split.

        Usually written as a method: `data low = digits.classes(0 .. 4)`.""",
        inputs=(Port("data", Kind.DATASET),),
        output=Kind.DATASET,
        params=ClassesParams,
        impl="mlspec.ops.data.digits:classes",
    )
)
