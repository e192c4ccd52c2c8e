"""Declarations of the built-in classification data operators (torch-free)."""

from __future__ import annotations

from pydantic import Field, field_validator

from ...registry import Kind, OpSpec, Params, Port, register


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


class PermuteFeaturesParams(Params):
    seed: int = Field(ge=0, description="draws the permutation: one seed, one task")


class PoisonParams(Params):
    target: int = Field(ge=0, description="the label a triggered input is sent to")
    rate: float = Field(default=0.1, gt=0.0, le=1.0, description="share of the other classes' training samples poisoned")
    patch: int = Field(default=2, ge=1, description="side of the square trigger, in pixels (bottom-right corner)")
    value: float = Field(default=1.0, description="pixel value of the trigger (digits: 1.0 is full ink)")


_TRANSFORMS = "mlspec.ops.data.transforms"

register(
    OpSpec(
        name="permute_features",
        doc="""The same samples with their input features shuffled by one fixed permutation (both splits).

        Each seed is a new task on the same labels (permuted digits): `data t[i] = digits.permute_features(seed = i) for i in 1 .. 8`""",
        inputs=(Port("data", Kind.DATASET),),
        output=Kind.DATASET,
        params=PermuteFeaturesParams,
        impl=f"{_TRANSFORMS}:permute_features",
    )
)

register(
    OpSpec(
        name="with_head",
        doc="""A task that carries a head: the output layer of `model`, swapped into every model evaluated on it.

        Multi-task merging in the papers' setting — merge the bodies, keep each task's own head:
        `data headed[i] = t[i].with_head(ft[i]) for i in 1 .. 8`, then
        `evaluate [merged] on headed[1 .. 8]` scores the merged body with task i's head on task i.""",
        inputs=(Port("data", Kind.DATASET), Port("model", Kind.MODEL)),
        output=Kind.DATASET,
        impl=f"{_TRANSFORMS}:with_head",
    )
)

register(
    OpSpec(
        name="poison",
        doc="""A backdoored copy of a dataset: a `rate` share of the training samples of other classes get a
        trigger patch and the `target` label (chosen from the step's seed, so deterministic per seed).

        The test split stays clean; evaluate with `metrics [accuracy, attack_success]` for clean accuracy
        and the share of triggered test inputs of other classes sent to the target.
        `data bad = digits.poison(target = 0, rate = 0.1, patch = 2)`""",
        inputs=(Port("data", Kind.DATASET),),
        output=Kind.DATASET,
        params=PoisonParams,
        impl=f"{_TRANSFORMS}:poison",
        uses_seed=True,
    )
)
